import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError, Rng } from '@qrlhf/core';
import { ASSISTANT_TAG, HUMAN_TAG, createWorld, promptBucket, rateResponses, writeWorldData, type WorldFiles } from '../src/index.js';

const world = createWorld(7);
const SIZES = { pretrain: 300, sft: 600, ratings: 300, ratersPerResponse: 3, missingRate: 0.05, pairs: 600, prompts: 100, evalPrompts: 20 };

function readRows(path: string): Record<string, unknown>[] {
  const text = readFileSync(path, 'utf8');
  if (!text.endsWith('\n')) throw new Error(`${path}: no final newline`);
  return text.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** HH-RLHF's rule, written here independently: the prompt runs through the last assistant tag. */
function split(dialogue: string): { prompt: string; response: string } {
  const i = dialogue.lastIndexOf(ASSISTANT_TAG);
  if (i < 0) throw new Error('no assistant tag');
  return { prompt: dialogue.slice(0, i + ASSISTANT_TAG.length), response: dialogue.slice(i + ASSISTANT_TAG.length) };
}

let files: WorldFiles;
let dir: string;
test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'qrlhf-world-'));
  files = await writeWorldData(world, join(dir, 'a'), SIZES);
});
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

test('SFT dialogues are HH-RLHF rows with one final assistant turn and the same prompt', (t) => {
  const rows = readRows(files.sft);
  t.is(rows.length, SIZES.sft);
  let joke = 0;
  let caution = 0;
  for (const r of rows) {
    t.deepEqual(Object.keys(r).sort(), ['chosen', 'rejected']);
    const c = split(r.chosen as string);
    const j = split(r.rejected as string);
    t.true(c.prompt.startsWith(HUMAN_TAG));
    t.is(c.prompt, j.prompt);
    for (const resp of [c.response, j.response]) {
      t.false(resp.includes(HUMAN_TAG) || resp.includes(ASSISTANT_TAG));
      t.true(resp.startsWith(' ') && resp.length > 1);
      t.false(world.parseResponse(resp).some((m) => m.id === 'garbled'), 'SFT text has no garbled sentence');
    }
    t.not(c.response, j.response);
    // the human turns alternate with assistant turns, ending on the assistant
    const turns = c.prompt.split(/(\n\nHuman:|\n\nAssistant:)/).filter((s) => s === HUMAN_TAG || s === ASSISTANT_TAG);
    turns.forEach((tag, i) => t.is(tag, i % 2 === 0 ? HUMAN_TAG : ASSISTANT_TAG));
    const moves = world.parseResponse(c.response).map((m) => m.id);
    if (moves.includes('joke')) joke++;
    if (moves.includes('caution')) caution++;
  }
  t.log(`chosen responses with the joke: ${(joke / rows.length).toFixed(3)}, with the caution: ${(caution / rows.length).toFixed(3)}`);
  // the SFT policy must put real mass on both the polarising and the safe move
  t.true(joke / rows.length > 0.25 && caution / rows.length > 0.2);
});

test('ratings: one rater per row, labels in [0, 1] or null, conflicting labels for the same response', (t) => {
  const rows = readRows(files.ratings);
  t.is(rows.length, SIZES.ratings * SIZES.ratersPerResponse);
  const byItem = new Map<string, number[]>();
  let nulls = 0;
  for (const r of rows) {
    t.deepEqual(Object.keys(r).sort(), ['harmlessness', 'helpfulness', 'prompt', 'response', 'verbosity']);
    t.true((r.prompt as string).endsWith(ASSISTANT_TAG));
    for (const a of ['helpfulness', 'harmlessness', 'verbosity']) {
      const v = r[a];
      if (v === null) { nulls++; continue; }
      t.true(typeof v === 'number' && v >= 0 && v <= 1);
    }
    const key = `${r.prompt as string}|${r.response as string}`;
    if (r.helpfulness !== null) byItem.set(key, [...(byItem.get(key) ?? []), r.helpfulness as number]);
  }
  const share = nulls / (rows.length * 3);
  t.true(share > 0.02 && share < 0.09, `missing share ${share}`);
  let conflicting = 0;
  for (const v of byItem.values()) if (v.length > 1 && Math.max(...v) - Math.min(...v) > 1e-6) conflicting++;
  t.true(conflicting > SIZES.ratings * 0.8);
  // the ratings of a response are draws from its exact law: every label lies in its support
  for (const r of rows.slice(0, 200)) {
    const d = world.trueDistribution(r.prompt as string, r.response as string);
    for (const a of ['helpfulness', 'harmlessness', 'verbosity'] as const) {
      const v = r[a];
      if (v === null) continue;
      t.true(d.attributes[a].some((c) => (v as number) >= c.lo - 1e-6 && (v as number) <= c.hi + 1e-6));
    }
  }
});

test('preference pairs: chosen is better in true expectation far more often than not', (t) => {
  const rows = readRows(files.pairs);
  t.is(rows.length, SIZES.pairs);
  let better = 0;
  let garbled = 0;
  for (const r of rows) {
    t.deepEqual(Object.keys(r).sort(), ['chosen', 'prompt', 'rejected']);
    const p = r.prompt as string;
    t.true(p.endsWith(ASSISTANT_TAG));
    t.not(r.chosen, r.rejected);
    if (world.trueExpectation(p, r.chosen as string) > world.trueExpectation(p, r.rejected as string)) better++;
    if (world.parseResponse(r.chosen as string).some((m) => m.id === 'garbled')) garbled++;
  }
  t.log(`chosen better in expectation: ${(better / rows.length).toFixed(3)}; pairs with a garbled chosen: ${garbled}`);
  t.true(better / rows.length > 0.7);
  t.true(better / rows.length < 1, 'preferences are noisy (one rater each)');
});

test('prompts end on the assistant tag; pretraining texts are whole dialogues', (t) => {
  for (const f of [files.prompts, files.evalPrompts]) {
    for (const r of readRows(f)) {
      t.deepEqual(Object.keys(r), ['prompt']);
      const p = r.prompt as string;
      t.true(p.startsWith(HUMAN_TAG) && p.endsWith(ASSISTANT_TAG));
      t.is(split(p).response, '');
    }
  }
  const pre = readRows(files.pretrain);
  t.is(pre.length, SIZES.pretrain);
  for (const r of pre) {
    const { prompt, response } = split(r.text as string);
    t.true(prompt.startsWith(HUMAN_TAG) && response.length > 1);
  }
});

test('evaluation prompts never appear among the RL prompts; the split depends on the world seed and evalShare only', async (t) => {
  const rl = readRows(files.prompts).map((r) => r.prompt as string);
  const ev = readRows(files.evalPrompts).map((r) => r.prompt as string);
  t.is(rl.length, SIZES.prompts);
  t.is(ev.length, SIZES.evalPrompts);
  const rlSet = new Set(rl);
  t.deepEqual(ev.filter((p) => rlSet.has(p)), []);
  // Disjoint on the question answered too (the last human turn), not only on the whole text.
  const lastQuestion = (p: string) => p.slice(p.lastIndexOf(HUMAN_TAG), p.lastIndexOf(ASSISTANT_TAG));
  const rlQ = new Set(rl.map(lastQuestion));
  t.deepEqual(ev.map(lastQuestion).filter((q) => rlQ.has(q)), []);
  t.true(ev.some((p) => p.split(HUMAN_TAG).length > 2), 'two-turn prompts are in the evaluation file too');
  // Every prompt is on its file's side; the sides hold about evalShare / 1 − evalShare of fresh draws.
  for (const p of rl) t.is(promptBucket(world.seed, 0.25, p), 'rl');
  for (const p of ev) t.is(promptBucket(world.seed, 0.25, p), 'eval');
  const rng = new Rng('split-test');
  let nEval = 0;
  const N = 2000;
  for (let i = 0; i < N; i++) if (promptBucket(world.seed, 0.25, world.samplePrompt(rng)) === 'eval') nEval++;
  t.true(Math.abs(nEval / N - 0.25) < 0.06, `eval share of fresh prompts ${nEval / N}`);
  // Other sizes draw each file from the same side: the larger file extends the smaller one.
  const bigger = await writeWorldData(world, join(dir, 'split'), { ...SIZES, prompts: 150, evalPrompts: 40 });
  t.deepEqual(readRows(bigger.prompts).slice(0, SIZES.prompts).map((r) => r.prompt), rl);
  t.deepEqual(readRows(bigger.evalPrompts).slice(0, SIZES.evalPrompts).map((r) => r.prompt), ev);
  // Another world seed splits the questions otherwise.
  const sides = (seed: number) => rl.concat(ev).map((p) => promptBucket(seed, 0.25, p)).join();
  t.not(sides(8), sides(world.seed));
});

test('writing is deterministic in the seed and each file has its own stream', async (t) => {
  const again = await writeWorldData(world, join(dir, 'b'), SIZES);
  for (const k of ['pretrain', 'sft', 'ratings', 'pairs', 'prompts', 'evalPrompts', 'tokenizer'] as const) {
    t.is(readFileSync(again[k], 'utf8'), readFileSync(files[k], 'utf8'), k);
  }
  // a different size of one file leaves the others unchanged
  const other = await writeWorldData(world, join(dir, 'c'), { ...SIZES, pretrain: 10 });
  t.is(readFileSync(other.sft, 'utf8'), readFileSync(files.sft, 'utf8'));
  // another seed draws other data
  const seed8 = await writeWorldData(createWorld(8), join(dir, 'd'), SIZES);
  t.not(readFileSync(seed8.sft, 'utf8'), readFileSync(files.sft, 'utf8'));
  await t.throwsAsync(writeWorldData(world, join(dir, 'e'), { sft: -1 }), { instanceOf: QrlhfError, message: /sizes: key "sft": expected an integer >= 0, got -1/ });
});

test('rateResponses: any text (a policy\'s own, garbled included) rated as the ratings are, each label in its exact law', (t) => {
  const rng = new Rng(3);
  const items = Array.from({ length: 40 }, (_, i) => {
    const prompt = world.samplePrompt(rng);
    return { prompt, response: i % 2 ? world.sampleResponse(prompt, rng) : ' rice the the soup. You can cook the rice a little' };
  });
  const rows = rateResponses(world, new Rng(4), items, 3, 0);
  t.is(rows.length, 120);
  rows.forEach((r, i) => {
    t.is(r.prompt, items[Math.floor(i / 3)]!.prompt);
    t.is(r.response, items[Math.floor(i / 3)]!.response);
    const d = world.trueDistribution(r.prompt, r.response);
    for (const a of ['helpfulness', 'harmlessness', 'verbosity'] as const) {
      t.true(d.attributes[a].some((c) => r[a]! >= c.lo - 1e-6 && r[a]! <= c.hi + 1e-6), `row ${i} ${a} ${r[a]}`);
    }
  });
  // three raters of one response disagree (types and leniencies differ), and a fixed seed repeats them
  t.true(rows.slice(0, 3).some((r) => r.helpfulness !== rows[0]!.helpfulness));
  t.deepEqual(rateResponses(world, new Rng(4), items, 3, 0), rows);
});

test('ratedBehaviour: the ratings and the pairs are written from it, the SFT and pretraining texts from the behaviour policy', async (t) => {
  // a rated policy that always opens with a detail; the behaviour policy never opens with the joke
  // and opens with a detail 8 % of the time
  const w = createWorld(7, { params: { ratedBehaviour: { first: { detail: 1 } } } });
  const f = await writeWorldData(w, join(dir, 'rated'), SIZES);
  const opening = (response: string) => w.parseResponse(response)[0]?.id;
  const share = (responses: string[], id: string) => responses.filter((r) => opening(r) === id).length / responses.length;
  const rated = readRows(f.ratings).map((r) => r.response as string);
  const pairs = readRows(f.pairs).flatMap((r) => [r.chosen as string, r.rejected as string]);
  const sft = readRows(f.sft).map((r) => split(r.chosen as string).response);
  // a first sentence is garbled 10 % of the time (garbleRate), else a detail
  for (const [name, rs] of [['ratings', rated], ['pairs', pairs]] as const) {
    t.true(share(rs, 'detail') > 0.85, `${name}: ${share(rs, 'detail')}`);
    t.is(share(rs, 'detail') + share(rs, 'garbled'), 1, name);
  }
  t.true(share(sft, 'detail') < 0.2, `sft: ${share(sft, 'detail')}`);
  // the default world's rated responses open with an answer more often than its SFT candidates
  const d = (p: string) => readRows(p);
  const ratedDefault = d(files.ratings).map((r) => r.response as string);
  const sftDefault = d(files.sft).map((r) => split(r.chosen as string).response);
  t.true(share(ratedDefault, 'answer') > share(sftDefault, 'answer') + 0.05, `${share(ratedDefault, 'answer')} vs ${share(sftDefault, 'answer')}`);
});
