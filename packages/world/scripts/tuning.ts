/**
 * Prints the world's tuning table: for canonical responses, the exact mean and left-tail
 * quantiles of the reward and the exponential utility, and statistics of the behaviour / SFT
 * distributions. Run: node --conditions=source --import=tsx packages/world/scripts/tuning.ts
 */
import { Rng } from '@qrlhf/core';
import { createWorld, mixtureQuantile, mixtureMean, type MoveId } from '../src/index.js';

const world = createWorld(1);
const rng = new Rng(7);
const prompt = '\n\nHuman: How do I cook the rice?\n\nAssistant:';
const taus = Array.from({ length: 19 }, (_, k) => (k + 1) / 20);
const lambdas = [2, 3, 5, 8];

const canon: MoveId[][] = [
  ['answer'], ['answer', 'caution'], ['answer', 'joke'],
  ['answer', 'detail'], ['answer', 'detail', 'caution'], ['answer', 'detail', 'joke'],
  ['answer', 'detail', 'caution', 'joke'], ['joke'], ['refuse'], ['ramble'], ['answer', 'ramble'], [],
];
const rows: string[] = [];
rows.push(['moves', 'mean', 'q0.05', 'q0.10', 'q0.25', ...lambdas.map((l) => `U(l=${l})`)].join(' | '));
for (const moves of canon) {
  const resp = world.renderResponse(prompt, moves, rng);
  const d = world.trueDistribution(prompt, resp);
  const q = taus.map((t) => mixtureQuantile(d.reward, t));
  const us = lambdas.map((l) => q.reduce((a, x) => a - Math.exp(-l * x), 0) / q.length);
  rows.push([moves.join('+') || '(empty)', mixtureMean(d.reward), q[0]!, q[1]!, q[4]!, ...us].map((x) => (typeof x === 'number' ? x.toFixed(4) : x)).join(' | '));
}
console.log(rows.join('\n'));

// the best response (up to 5 moves) under each utility: where the two RL runs would end if they converged
const all: MoveId[] = ['answer', 'detail', 'caution', 'joke', 'refuse', 'ramble'];
const seqs: MoveId[][] = [[]];
for (let len = 1; len <= 5; len++) for (const s of seqs.filter((x) => x.length === len - 1)) for (const m of all) seqs.push([...s, m]);
const utilities: [string, (q: number[]) => number][] = [
  ['expectation', (q) => q.reduce((a, b) => a + b, 0) / q.length],
  ...lambdas.map((l): [string, (q: number[]) => number] => [`exponential l=${l}`, (q) => q.reduce((a, x) => a - Math.exp(-l * x), 0) / q.length]),
];
const bestRows: string[] = ['utility | best response | mean | q0.05 | q0.10'];
for (const [name, u] of utilities) {
  let best: { s: MoveId[]; v: number; mean: number; q: number[] } | null = null;
  for (const s of seqs) {
    const resp = world.renderResponse(prompt, s, new Rng(1));
    const d = world.trueDistribution(prompt, resp);
    const q = taus.map((t) => mixtureQuantile(d.reward, t));
    const v = u(q);
    if (!best || v > best.v) best = { s, v, mean: mixtureMean(d.reward), q };
  }
  bestRows.push(`${name} | ${best!.s.join('+')} | ${best!.mean.toFixed(4)} | ${best!.q[0]!.toFixed(4)} | ${best!.q[1]!.toFixed(4)}`);
}
console.log('\n' + bestRows.join('\n'));

// behaviour and SFT (chosen of two) statistics
const n = 4000;
let joke = 0, jokeChosen = 0, caution = 0, cautionChosen = 0, meanB = 0, meanC = 0;
const has = (r: string, id: string) => world.parseResponse(r).some((m) => m.id === id);
const vh: number[] = [], vv: number[] = [], vs: number[] = [];
for (let i = 0; i < n; i++) {
  const p = world.samplePrompt(rng);
  const a = world.sampleResponse(p, rng);
  const b = world.sampleResponse(p, rng);
  const rater = world.sampleRater(rng);
  const ra = world.raterReward(p, a, rater), rb = world.raterReward(p, b, world.sampleRater(rng));
  void rb;
  const rb2 = world.raterReward(p, b, { type: rater.type, e: 2 * rng.next() - 1 });
  const chosen = ra >= rb2 ? a : b;
  if (has(a, 'joke')) joke++;
  if (has(chosen, 'joke')) jokeChosen++;
  if (has(a, 'caution')) caution++;
  if (has(chosen, 'caution')) cautionChosen++;
  meanB += world.trueExpectation(p, a);
  meanC += world.trueExpectation(p, chosen);
  const d = world.trueDistribution(p, a);
  vh.push(mixtureMean(d.attributes.helpfulness)); vs.push(mixtureMean(d.attributes.harmlessness)); vv.push(mixtureMean(d.attributes.verbosity));
}
const rank = (x: number[]) => { const idx = x.map((v, i) => [v, i] as const).sort((a, b) => a[0] - b[0]); const r = new Array<number>(x.length); let i = 0; while (i < idx.length) { let j = i; while (j + 1 < idx.length && idx[j + 1]![0] === idx[i]![0]) j++; for (let k = i; k <= j; k++) r[idx[k]![1]] = (i + j) / 2; i = j + 1; } return r; };
const pearson = (a: number[], b: number[]) => { const ma = a.reduce((s, x) => s + x, 0) / a.length, mb = b.reduce((s, x) => s + x, 0) / b.length; let c = 0, va = 0, vb = 0; for (let i = 0; i < a.length; i++) { c += (a[i]! - ma) * (b[i]! - mb); va += (a[i]! - ma) ** 2; vb += (b[i]! - mb) ** 2; } return c / Math.sqrt(va * vb); };
console.log(`\nbehaviour: P(joke)=${(joke / n).toFixed(3)} P(caution)=${(caution / n).toFixed(3)} E[reward]=${(meanB / n).toFixed(4)}`);
console.log(`chosen:    P(joke)=${(jokeChosen / n).toFixed(3)} P(caution)=${(cautionChosen / n).toFixed(3)} E[reward]=${(meanC / n).toFixed(4)}`);
console.log(`spearman(help, verb)=${pearson(rank(vh), rank(vv)).toFixed(3)} spearman(harm, verb)=${pearson(rank(vs), rank(vv)).toFixed(3)}`);
