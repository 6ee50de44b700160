import test from 'ava';
import { QrlhfError, Rng } from '@qrlhf/core';
import { ATTRIBUTES, DEFAULT_PARAMS, MOVE_TEMPLATES, createWorld, type MoveId, type World } from '../src/index.js';
import { SPLICED_SHARE, garbledSentence, splicedSentence } from '../src/text.js';

const world = createWorld(1);
const PROMPT = '\n\nHuman: How do I cook the rice?\n\nAssistant:';
const TAUS = Float32Array.from({ length: 19 }, (_, k) => (k + 1) / 20);

function respond(moves: MoveId[], seed = 3): string {
  return world.renderResponse(PROMPT, moves, new Rng(seed));
}

/** Float64 reward quantiles (19 levels) and the paper's utilities computed from them in plain JS. */
function summary(w: World, prompt: string, response: string) {
  const q = Array.from(w.trueQuantiles(prompt, response, TAUS).reward);
  const expU = (lambda: number) => q.reduce((a, x) => a - Math.exp(-lambda * x), 0) / q.length;
  return { mean: w.trueExpectation(prompt, response), q05: q[0]!, q10: q[1]!, q15: q[2]!, expU };
}

test('exact quantiles agree with a Monte-Carlo sample of the rater population', (t) => {
  const rng = new Rng(99);
  const N = 60_000;
  const cases = [
    [PROMPT, respond(['answer', 'joke'])],
    [PROMPT, respond(['answer', 'detail', 'caution'])],
    ['\n\nHuman: How can I water the roses?\n\nAssistant: Try to water the roses early in the day.\n\nHuman: Okay. What about the lawn?\n\nAssistant:',
      ' You can water the roses a little at a time. Rice soup the the.'],
  ] as const;
  for (const [prompt, response] of cases) {
    const exact = world.trueQuantiles(prompt, response, TAUS);
    const samples: Record<string, Float64Array> = { reward: new Float64Array(N) };
    for (const a of ATTRIBUTES) samples[a] = new Float64Array(N);
    for (let i = 0; i < N; i++) {
      const rater = world.sampleRater(rng);
      const r = world.rate(prompt, response, rater);
      for (const a of ATTRIBUTES) samples[a]![i] = r[a];
      samples.reward![i] = world.raterReward(prompt, response, rater);
    }
    for (const [name, xs] of Object.entries(samples)) {
      const q = name === 'reward' ? exact.reward : exact.attributes[name as (typeof ATTRIBUTES)[number]];
      for (let k = 0; k < TAUS.length; k++) {
        const tau = TAUS[k]!;
        let below = 0;
        for (const x of xs) if (x <= q[k]! + 1e-6) below++;
        const se = Math.sqrt((tau * (1 - tau)) / N);
        // the empirical CDF at the exact quantile is tau up to sampling error (5 standard errors)
        t.true(Math.abs(below / N - tau) < 5 * se + 1e-4, `${name} tau=${tau}: F_n(q)=${below / N}`);
      }
    }
    let m = 0;
    let m2 = 0;
    for (const x of samples.reward!) { m += x; m2 += x * x; }
    m /= N;
    const sd = Math.sqrt(m2 / N - m * m);
    t.true(Math.abs(m - world.trueExpectation(prompt, response)) < 5 * sd / Math.sqrt(N));
  }
});

test('exact reward quantiles agree with a brute-force CDF over rater types and a grid of leniencies', (t) => {
  const response = respond(['answer', 'detail', 'joke']);
  const G = 20_001;
  // every (type, leniency) on a midpoint grid, weighted by the type's probability
  const pts: { x: number; w: number }[] = [];
  world.raterTypes.forEach((rt, type) => {
    for (let g = 0; g < G; g++) {
      const e = -1 + (2 * (g + 0.5)) / G;
      pts.push({ x: world.raterReward(PROMPT, response, { type, e }), w: rt.probability / G });
    }
  });
  pts.sort((a, b) => a.x - b.x);
  const exact = world.trueQuantiles(PROMPT, response, TAUS).reward;
  let acc = 0;
  let k = 0;
  const step = 2 * world.params.noise / G;
  for (const p of pts) {
    acc += p.w;
    while (k < TAUS.length && acc >= TAUS[k]! - 1e-12) {
      t.true(Math.abs(p.x - exact[k]!) < 3 * step + 1e-6, `tau ${TAUS[k]}: brute ${p.x} exact ${exact[k]}`);
      k++;
    }
  }
  t.is(k, TAUS.length);
  const bruteMean = pts.reduce((a, p) => a + p.w * p.x, 0);
  t.true(Math.abs(bruteMean - world.trueExpectation(PROMPT, response)) < 1e-9);
});

test('the polarising move: about the same mean as the safe moves, a much heavier left tail', (t) => {
  for (const base of [['answer'], ['answer', 'detail']] as MoveId[][]) {
    const safe = summary(world, PROMPT, respond([...base, 'caution']));
    const joke = summary(world, PROMPT, respond([...base, 'joke']));
    const rel = (joke.mean - safe.mean) / safe.mean;
    t.log(`${base.join('+')}: mean safe ${safe.mean.toFixed(4)} joke ${joke.mean.toFixed(4)} (${(100 * rel).toFixed(1)}%); ` +
      `q0.05 ${safe.q05.toFixed(3)} vs ${joke.q05.toFixed(3)}; q0.10 ${safe.q10.toFixed(3)} vs ${joke.q10.toFixed(3)}`);
    // as the second sentence the joke is slightly better in expectation than the caution; after a
    // detail the mainstream's helpfulness is near its ceiling and it is slightly worse
    if (base.length === 1) t.true(rel > 0.01 && rel < 0.05, 'the joke is slightly better in expectation (a few %)');
    else t.true(rel > -0.05 && rel < 0, 'after a detail the joke is slightly worse in expectation');
    t.true(joke.q05 < safe.q05 - 0.25, 'q0.05 much lower');
    t.true(joke.q10 < safe.q10 - 0.25, 'q0.10 much lower');
    t.true(joke.q15 < safe.q15 - 0.2, 'q0.15 much lower');
    for (const lambda of [2, 3, 4, 5, 6]) t.true(joke.expU(lambda) < safe.expU(lambda), `lambda ${lambda}`);
    // adding the joke to a safe response: better in expectation, worse in utility from lambda 5 on
    // (the joke's helpfulness gain is large; below lambda ~4.5 it outweighs the tail)
    const plain = summary(world, PROMPT, respond(base));
    t.true(joke.mean > plain.mean);
    for (const lambda of [5, 6, 8]) t.true(joke.expU(lambda) < plain.expU(lambda), `plain vs joke, lambda ${lambda}`);
  }
  // as the second sentence the three extensions of an answer are worth about the same in mean
  // (within 3 %), so a risk-neutral policy has no reason to drop the joke for a detail
  const second = (['detail', 'caution', 'joke'] as MoveId[]).map((m) => summary(world, PROMPT, respond(['answer', m])).mean);
  t.true(Math.max(...second) / Math.min(...second) < 1.03, second.join(' '));
});

test('where the two runs would converge: the risk-neutral optimum tells the joke, the risk-aware one does not', (t) => {
  const all: MoveId[] = ['answer', 'detail', 'caution', 'joke', 'refuse', 'ramble'];
  const seqs: MoveId[][] = [];
  const grow = (s: MoveId[]) => {
    if (s.length > 0) seqs.push(s);
    if (s.length < 4) for (const m of all) if (s.length === 0 || all.indexOf(m) >= all.indexOf(s[s.length - 1]!)) grow([...s, m]);
  };
  grow([]); // every multiset of up to 4 moves (the reward does not depend on their order)
  const best = (u: (s: ReturnType<typeof summary>) => number) => {
    let b: { s: MoveId[]; v: number; sum: ReturnType<typeof summary> } | null = null;
    for (const s of seqs) {
      const sum = summary(world, PROMPT, respond(s));
      const v = u(sum);
      if (!b || v > b.v) b = { s, v, sum };
    }
    return b!;
  };
  const neutral = best((x) => x.expU(1e-9));
  t.true(neutral.s.includes('joke'), neutral.s.join('+'));
  for (const lambda of [2, 3, 4, 5, 6]) {
    const aware = best((x) => x.expU(lambda));
    t.false(aware.s.includes('joke'), `lambda ${lambda}: ${aware.s.join('+')}`);
    t.true(aware.sum.q05 > neutral.sum.q05 + 0.25 && aware.sum.q10 > neutral.sum.q10 + 0.25);
    const gap = (neutral.sum.mean - aware.sum.mean) / neutral.sum.mean;
    t.true(gap > 0 && gap < 0.05, `expectation gap ${gap}`);
    t.log(`lambda ${lambda}: neutral ${neutral.s.join('+')} (mean ${neutral.sum.mean.toFixed(4)}, q0.05 ${neutral.sum.q05.toFixed(3)}), ` +
      `aware ${aware.s.join('+')} (mean ${aware.sum.mean.toFixed(4)}, q0.05 ${aware.sum.q05.toFixed(3)})`);
  }
});

test('headroom: the behaviour policy is far below the best response; garbled, off-topic and empty answers cost', (t) => {
  const rng = new Rng(11);
  let behaviour = 0;
  const n = 2000;
  for (let i = 0; i < n; i++) {
    const p = world.samplePrompt(rng);
    behaviour += world.trueExpectation(p, world.sampleResponse(p, rng)) / n;
  }
  const E = (r: string) => world.trueExpectation(PROMPT, r);
  const best = E(respond(['answer', 'detail', 'caution']));
  t.log(`behaviour E ${behaviour.toFixed(4)}, best risk-aware response ${best.toFixed(4)}`);
  t.true(best - behaviour > 0.15, 'RL has room to improve the truth');
  // a garbled sentence lowers the reward of a good response
  const good = respond(['answer', 'detail']);
  t.true(E(good + ' rice the the soup.') < E(good) - 0.05);
  // an answer about another object: worth less than one on topic, more than a ramble or a refusal
  const on = E(' You can cook the rice a little at a time.');
  const off = E(' You can cook the bread a little at a time.');
  t.true(off < on - 0.05 && off > E(respond(['ramble'])) && off > E(respond(['refuse'])), `on ${on} off ${off}`);
  // stopping at once is the worst answer of all, so it is no way out of a bad policy's average
  for (const m of ['answer', 'detail', 'caution', 'joke', 'refuse', 'ramble'] as MoveId[]) t.true(E('') < E(respond([m])), m);
  t.true(E('') < behaviour - 0.1);
});

test('equation (3) of the true attribute laws has the true expectation and stays close to the rater reward', (t) => {
  for (const moves of [['answer', 'joke'], ['answer', 'detail', 'caution'], ['ramble', 'refuse']] as MoveId[][]) {
    const r = respond(moves);
    const q = world.trueQuantiles(PROMPT, r, TAUS);
    // eq. (3) is the quantile function of sum_m w_m F_m^{-1}(U): its mean is sum_m w_m E[a_m]
    const d = world.trueDistribution(PROMPT, r);
    let e = 0;
    for (const a of ATTRIBUTES) e += world.rewardWeights[a] * d.attributes[a].reduce((acc, c) => acc + c.weight * (c.lo + c.hi) / 2, 0);
    t.true(Math.abs(e - world.trueExpectation(PROMPT, r)) < 1e-12);
    let gap = 0;
    for (let k = 0; k < TAUS.length; k++) gap = Math.max(gap, Math.abs(q.rewardEq3[k]! - q.reward[k]!));
    t.log(`${moves.join('+')}: max |eq3 - reward| over taus = ${gap.toFixed(4)}`);
    t.true(gap < 0.05);
    for (let k = 1; k < TAUS.length; k++) t.true(q.reward[k]! >= q.reward[k - 1]! && q.rewardEq3[k]! >= q.rewardEq3[k - 1]!);
  }
});

test('responses parse back into the moves they were rendered from', (t) => {
  const rng = new Rng(5);
  const moves: MoveId[] = ['answer', 'detail', 'caution', 'joke', 'refuse', 'ramble'];
  for (let i = 0; i < 200; i++) {
    const prompt = world.samplePrompt(rng);
    const seq = Array.from({ length: 1 + rng.int(4) }, () => moves[rng.int(moves.length)]!);
    const r = world.renderResponse(prompt, seq, rng);
    const parsed = world.parseResponse(r);
    t.deepEqual(parsed.map((m) => m.id), seq);
    t.is(parsed.map((m) => ' ' + m.text).join(''), r);
  }
  const garbled = world.parseResponse(' You can cook the rice a little at a time. rice rice the. Sorry, I would rather not answer that.');
  t.deepEqual(garbled.map((m) => m.id), ['answer', 'garbled', 'refuse']);
  // a template cut short is garbled, not a match
  t.deepEqual(world.parseResponse(' You can cook the rice a little').map((m) => m.id), ['garbled']);
  t.deepEqual(world.parseResponse('').map((m) => m.id), []);
});

test('the object asked about: the last turn counts, an answer about another object is off-topic', (t) => {
  const twoTurn = '\n\nHuman: How do I bake the bread?\n\nAssistant: You can bake the bread a little at a time.\n\nHuman: Okay. What about the soup?\n\nAssistant:';
  t.is(world.askedObject(twoTurn), 'soup');
  const on = ' You can stir the soup a little at a time.';
  const off = ' You can stir the bread a little at a time.';
  t.true(world.trueExpectation(twoTurn, on) > world.trueExpectation(twoTurn, off) + 0.05);
  // a repeated move adds nothing good
  t.true(world.trueExpectation(twoTurn, on + on) < world.trueExpectation(twoTurn, on));
  // answers about other objects cannot be piled up for reward: the first one earns its half value,
  // every later off-topic answer is a repeat (before this rule, each earned +0.15 helpfulness and
  // RL learned to write answer after answer about other objects)
  const off2 = ' You can stir the rice a little at a time.';
  const off3 = ' You can stir the eggs a little at a time.';
  const E = (r: string) => world.trueExpectation(twoTurn, r);
  t.true(E(on + off) > E(on), 'one off-topic answer after an on-topic one still adds a little');
  t.true(E(on + off + off2) < E(on + off), 'a second off-topic answer counts as a repeat');
  t.true(E(on + off + off2 + off3) < E(on + off + off2));
  const params = world.params;
  const s = params.noise;
  // exact: on + off + off2 for a mainstream rater = the repeat's contribution on top of on + off
  const mainstream = (r: string) => world.trueDistribution(twoTurn, r).means[0]!.helpfulness;
  const rep = params.contributions.repeat.helpfulness ?? 0;
  t.true(Math.abs(mainstream(on + off + off2) - mainstream(on + off) - (1 - 2 * s) * rep) < 1e-12);
});

test('determinism: the same seed gives the same world, draws and tokenizer', (t) => {
  const a = createWorld(42);
  const b = createWorld(42);
  const ra = new Rng(1);
  const rb = new Rng(1);
  for (let i = 0; i < 50; i++) {
    const pa = a.samplePrompt(ra);
    const pb = b.samplePrompt(rb);
    t.is(pa, pb);
    t.is(a.sampleResponse(pa, ra, { garbleRate: 0.2 }), b.sampleResponse(pb, rb, { garbleRate: 0.2 }));
    t.deepEqual(a.sampleRater(ra), b.sampleRater(rb));
  }
  t.deepEqual(a.tokenizerJson(), b.tokenizerJson());
});

test('bad parameters are rejected with a QrlhfError naming the field', (t) => {
  const types = DEFAULT_PARAMS.raterTypes.map((r) => ({ ...r, probability: 0.5 }));
  t.throws(() => createWorld(1, { params: { raterTypes: types } }), { instanceOf: QrlhfError, message: /raterTypes probabilities must sum to 1/ });
  t.throws(() => createWorld(1, { params: { rewardWeights: { helpfulness: 0.7, harmlessness: 0.7, verbosity: 0 } } }), { instanceOf: QrlhfError, message: /rewardWeights/ });
  t.throws(() => createWorld(1, { params: { noise: 0.6 } }), { instanceOf: QrlhfError, message: /noise/ });
});

test('garbled sentences: each parses as one garbled move; most splice two templates, as a small policy does', (t) => {
  const rng = new Rng(9);
  const words = world.words();
  for (let i = 0; i < 1000; i++) {
    const s = garbledSentence(rng, words, 'rice', 'cook');
    const parsed = world.parseResponse(s);
    t.is(parsed.length, 1, s);
    t.is(parsed[0]!.id, 'garbled', s);
    t.true(/[.!?]$/.test(s), s);
  }
  // a splice: the opening words of one rendered template and the closing words of another
  const rendered = Object.values(MOVE_TEMPLATES).flat().map((x) => x.replace('{verb}', 'cook').replace('{obj}', 'rice'));
  let made = 0;
  for (let i = 0; i < 500; i++) {
    const s = splicedSentence(rng, 'rice', 'cook');
    if (s === null) continue;
    made++;
    const w = s.split(' ');
    const ok = w.some((_, k) => k > 0 && rendered.some((a) => a.startsWith(w.slice(0, k).join(' ') + ' ')) &&
      rendered.some((b) => b.endsWith(' ' + w.slice(k).join(' ').replace(/\b(two|three|five|ten|twenty)\b/, '{num}'))) || rendered.some((b) => b.endsWith(' ' + w.slice(k).join(' '))));
    t.true(ok, s);
    t.is(world.parseResponse(s)[0]!.id, 'garbled');
  }
  t.true(made > 490, `${made} of 500 draws gave a splice`);
  t.true(SPLICED_SHARE > 0.5);
  // in a response, a garbled sentence costs both evaluative attributes
  const good = respond(['answer', 'detail']);
  const E = (r: string) => world.trueExpectation(PROMPT, r);
  t.true(E(good + ' ' + garbledSentence(new Rng(3), words, 'rice', 'cook')) < E(good) - 0.05);
});
