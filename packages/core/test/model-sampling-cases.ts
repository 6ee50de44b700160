/**
 * generate() and sequenceLogProbs() tests, run once per backend by model-sampling.test.ts (cpu)
 * and model-sampling-wasm.test.ts (wasm).
 */
import type { TestFn } from 'ava';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError, Rng, generate, sequenceLogProbs, tokenLogProbsAndEntropy, type LlamaModel } from '@qrlhf/core';
import {
  loraFactors,
  mergedWeights,
  modelFrom,
  randomWeights,
  referenceLogProbs,
  referenceLogits,
  logSoftmax,
  relErr,
  smallConfig,
  type LoraFactors,
} from './model-reference.js';

const c = smallConfig({ vocabSize: 23 });
const prompts = [[1, 7, 3], [1, 4, 9, 12, 5, 20], [1]];

/** Greedy continuation of one prompt by repeated full forwards (no cache, no batch). */
function argmaxContinuation(model: LlamaModel, prompt: number[], n: number): number[] {
  const seq = prompt.slice();
  for (let i = 0; i < n; i++) {
    const x = tf.tensor2d([seq], undefined, 'int32');
    const out = model.forward(x);
    const last = out.slice([0, seq.length - 1, 0], [1, 1, c.vocabSize]);
    const row = last.dataSync();
    tf.dispose([x, out, last]);
    let best = 0;
    for (let v = 1; v < row.length; v++) if (row[v]! > row[best]!) best = v;
    seq.push(best);
  }
  return seq.slice(prompt.length);
}

/** Two sequences, the first padded at the end; targets mark the response positions (shifted by one). */
const PADDED_BATCH = {
  ids: [
    [1, 7, 3, 8, 2, 0, 0],
    [1, 4, 9, 12, 5, 20, 6],
  ],
  mask: [
    [1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1],
  ],
  targets: [
    [0, 0, 1, 1, 0, 0],
    [0, 1, 1, 1, 1, 1],
  ],
};

export function defineSamplingTests(test: TestFn, label: string): void {
  test.serial(`${label}: greedy generation of a padded batch equals argmax of the full forward, token by token`, async (t) => {
    const model = modelFrom(c, randomWeights(c, 31));
    const n = 8;
    const out = await generate(model, prompts, { maxNewTokens: n, temperature: 0, eosTokenId: [], rng: new Rng(0) });
    prompts.forEach((p, b) => t.deepEqual(out.tokens[b], argmaxContinuation(model, p, n), `row ${b}`));
    t.deepEqual(out.finishedWithEos, [false, false, false]);
    // The tokens are not all one value (a degenerate model would pass trivially).
    t.true(new Set(out.tokens.flat()).size > 2);
    model.dispose();
  });

  test.serial(`${label}: EOS and the stop predicate end each row on its own; finished rows do not disturb the others`, async (t) => {
    const model = modelFrom(c, randomWeights(c, 32));
    const free = await generate(model, prompts, { maxNewTokens: 10, temperature: 0, eosTokenId: [], rng: new Rng(0) });
    // An EOS id that row 0 writes at some step j > 0 and not before.
    const j = free.tokens[0]!.findIndex((x, i) => i > 0 && free.tokens[0]!.indexOf(x) === i);
    t.true(j > 0);
    const eos = free.tokens[0]![j]!;
    const out = await generate(model, prompts, { maxNewTokens: 10, temperature: 0, eosTokenId: eos, rng: new Rng(0) });
    free.tokens.forEach((row, b) => {
      const at = row.indexOf(eos);
      t.deepEqual(out.tokens[b], at >= 0 ? row.slice(0, at + 1) : row, `row ${b}`);
      t.is(out.finishedWithEos[b], at >= 0);
    });
    const stopped = await generate(model, prompts, { maxNewTokens: 10, temperature: 0, eosTokenId: [], stop: (g) => g.length >= 1 + (g[0]! % 4), rng: new Rng(0) });
    free.tokens.forEach((row, b) => t.deepEqual(stopped.tokens[b], row.slice(0, 1 + (row[0]! % 4))));
    t.deepEqual(stopped.finishedWithEos, [false, false, false]);
    // The model's own eos is the default.
    const dflt = await generate(model, [[1]], { maxNewTokens: 30, temperature: 1, rng: new Rng(4) });
    const e = dflt.tokens[0]!.indexOf(c.eosTokenId);
    t.is(dflt.finishedWithEos[0], e >= 0);
    if (e >= 0) t.is(e, dflt.tokens[0]!.length - 1);
    model.dispose();
  });

  test.serial(`${label}: sampling is reproducible from the seed; top-k 1 is greedy; no tensor is left behind`, async (t) => {
    const model = modelFrom(c, randomWeights(c, 33));
    const opts = { maxNewTokens: 12, temperature: 1.3, topP: 0.95, eosTokenId: [] };
    const a = await generate(model, prompts, { ...opts, rng: new Rng(5) });
    const b = await generate(model, prompts, { ...opts, rng: new Rng(5) });
    const d = await generate(model, prompts, { ...opts, rng: new Rng(6) });
    t.deepEqual(a, b);
    t.notDeepEqual(a.tokens, d.tokens);
    const greedy = await generate(model, prompts, { maxNewTokens: 12, temperature: 0, eosTokenId: [], rng: new Rng(0) });
    t.notDeepEqual(a.tokens, greedy.tokens);
    t.deepEqual(await generate(model, prompts, { maxNewTokens: 12, temperature: 2, topK: 1, eosTokenId: [], rng: new Rng(7) }), greedy);

    const count = async (n: number) => {
      const before = tf.memory().numTensors;
      await generate(model, prompts, { maxNewTokens: n, temperature: 1, topK: 5, eosTokenId: [], rng: new Rng(8) });
      return tf.memory().numTensors - before;
    };
    await count(100); // grows the rope tables to the longest length
    t.is(await count(10), 0);
    t.is(await count(100), 0);
    await t.throwsAsync(() => generate(model, [[1, 99]], { ...opts, rng: new Rng(0) }), { instanceOf: QrlhfError, message: /prompt 0, position 1/ });
    await t.throwsAsync(() => generate(model, [[]], { ...opts, rng: new Rng(0) }), { instanceOf: QrlhfError, message: /prompt 0 is empty/ });
    model.dispose();
  });

  test.serial(`${label}: sequenceLogProbs equals the float64 reference, with LoRA, padding and a targets mask`, (t) => {
    const w = randomWeights(c, 34);
    const model = modelFrom(c, w);
    const a = model.addLora({ r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj', 'v_proj', 'up_proj'] }, new Rng(1));
    randomize(a.variables, 'lora_B', 2);
    const { ids, mask, targets } = PADDED_BATCH;
    const ref = referenceLogProbs(c, w, ids, mask, targets, mergedWeights(w, loraFactors(a.variables), 2)).flat();
    const run = (tm: number[][]) => {
      const out = tf.tidy(() => sequenceLogProbs(model, tf.tensor2d(ids, undefined, 'int32'), tf.tensor2d(mask), tf.tensor2d(tm)));
      const data = Array.from(out.dataSync());
      t.deepEqual(out.shape, [2, 6]);
      out.dispose();
      return data;
    };
    const got = run(targets);
    t.true(relErr(got, ref) < 1e-4, `relative error ${relErr(got, ref)}`);
    t.true(got.every((x, i) => (targets.flat()[i] ? x < 0 : x === 0)));
    // A mask aligned with ids (first column dropped) means the same.
    t.deepEqual(run(targets.map((r) => [1, ...r])), got);
    model.dispose();
  });

  test.serial(`${label}: sequenceLogProbs on a sparse targets mask (head only at its rows) gives the full computation's values bit for bit`, (t) => {
    const w = randomWeights(c, 37);
    const model = modelFrom(c, w);
    const a = model.addLora({ r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj', 'v_proj', 'up_proj'] }, new Rng(2));
    randomize(a.variables, 'lora_B', 3);
    const ids = [
      [1, 7, 3, 8, 2, 0, 0, 0],
      [1, 4, 9, 12, 5, 20, 6, 3],
      [0, 0, 1, 5, 5, 9, 2, 7],
    ];
    const mask = [
      [1, 1, 1, 1, 1, 0, 0, 0],
      [1, 1, 1, 1, 1, 1, 1, 1],
      [0, 0, 1, 1, 1, 1, 1, 1],
    ];
    // 6 of 21 positions: targetRows picks them; all ones (21 of 21): the full head runs
    const sparse = [
      [0, 0, 1, 1, 0, 0, 0],
      [0, 0, 0, 0, 1, 1, 0],
      [0, 0, 0, 0, 0, 0, 1],
    ];
    const full = sparse.map((r) => r.map(() => 1));
    for (const temperature of [1, 0.7]) {
      const run = (tm: number[][]) =>
        tf.tidy(() => {
          const [x, m, tt] = [tf.tensor2d(ids, undefined, 'int32'), tf.tensor2d(mask), tf.tensor2d(tm)];
          const r = tokenLogProbsAndEntropy(model, x, m, tt, { temperature });
          return [Array.from(r.logp.dataSync()), Array.from(r.entropy.dataSync())];
        });
      const [lpS, entS] = run(sparse);
      const [lpF, entF] = run(full);
      const keep = sparse.flat();
      t.deepEqual(lpS, lpF!.map((x, i) => (keep[i] ? x : 0)), `log-probs at T ${temperature}`);
      t.deepEqual(entS, entF!.map((x, i) => (keep[i] ? x : 0)), `entropy at T ${temperature}`);
      t.true(lpS!.some((x) => x < 0));
    }
    model.dispose();
  });

  test.serial(`${label}: tokenLogProbsAndEntropy: its log-probs are sequenceLogProbs' bit for bit, its entropy the float64 one, at temperature 0.7`, (t) => {
    const w = randomWeights(c, 36);
    const model = modelFrom(c, w);
    const { ids, mask, targets } = PADDED_BATCH;
    const temperature = 0.7;
    const [lp, both] = tf.tidy(() => {
      const [x, m, tm] = [tf.tensor2d(ids, undefined, 'int32'), tf.tensor2d(mask), tf.tensor2d(targets)];
      return [sequenceLogProbs(model, x, m, tm, { temperature }), tokenLogProbsAndEntropy(model, x, m, tm, { temperature })];
    }) as [tf.Tensor2D, { logp: tf.Tensor2D; entropy: tf.Tensor2D }];
    t.deepEqual(Array.from(both.logp.dataSync()), Array.from(lp.dataSync()));
    const logits = referenceLogits(c, w, ids, mask);
    const ref = ids.flatMap((row, b) =>
      row.slice(1).map((_, i) => {
        if (!targets[b]![i]) return 0;
        const ls = logSoftmax(logits[b]![i]!.map((z) => z / temperature));
        return -ls.reduce((a, l) => a + Math.exp(l) * l, 0);
      }),
    );
    const got = Array.from(both.entropy.dataSync());
    t.deepEqual(both.entropy.shape, [2, 6]);
    t.true(relErr(got, ref) < 1e-4, `relative error ${relErr(got, ref)}`);
    t.true(got.every((x, i) => (targets.flat()[i] ? x > 0 : x === 0)));
    tf.dispose([lp, both.logp, both.entropy]);
    model.dispose();
  });

  test.serial(`${label}: the gradient of sequenceLogProbs w.r.t. LoRA A and B matches finite differences of the float64 reference`, (t) => {
    const cc = smallConfig({ vocabSize: 13, numLayers: 1 });
    const w = randomWeights(cc, 35);
    const model = modelFrom(cc, w);
    const a = model.addLora({ r: 2, alpha: 2, dropout: 0, targetModules: ['q_proj', 'k_proj', 'o_proj', 'down_proj'] }, new Rng(3));
    randomize(a.variables, 'lora_B', 4);
    const ids = [
      [1, 7, 3, 8, 2, 11],
      [0, 0, 1, 4, 9, 12],
    ];
    const mask = [
      [1, 1, 1, 1, 1, 1],
      [0, 0, 1, 1, 1, 1],
    ];
    const targets = [
      [0, 1, 1, 1, 1],
      [0, 0, 1, 1, 1],
    ];
    tf.tidy(() => sequenceLogProbs(model, tf.tensor2d(ids, undefined, 'int32'), tf.tensor2d(mask), tf.tensor2d(targets))); // builds the rope tables
    const before = tf.memory().numTensors;
    const { grads, value } = tf.tidy(() => {
      const idsT = tf.tensor2d(ids, undefined, 'int32');
      const [maskT, tmT] = [tf.tensor2d(mask), tf.tensor2d(targets)];
      const r = tf.variableGrads(() => tf.sum(sequenceLogProbs(model, idsT, maskT, tmT)) as tf.Scalar, Object.values(a.variables));
      const gs: Record<string, Float32Array> = {};
      for (const [k, v] of Object.entries(a.variables)) gs[k] = r.grads[v.name]!.dataSync() as Float32Array;
      return { grads: gs, value: r.value.dataSync()[0]! };
    });
    t.is(tf.memory().numTensors, before, 'no tensor leaks from the gradient computation');

    const factors = loraFactors(a.variables);
    const objective = (f: LoraFactors) =>
      referenceLogProbs(cc, w, ids, mask, targets, mergedWeights(w, f, 1)).flat().reduce((s, x) => s + x, 0);
    t.true(Math.abs(value - objective(factors)) < 1e-4 * Math.abs(value));
    const h = 1e-5;
    let checked = 0;
    for (const key of Object.keys(a.variables)) {
      const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key)!;
      const f = factors[`${m[1]}.weight`]!;
      const arr = m[2] === 'A' ? f.A : f.B;
      for (const i of [0, arr.length - 1, Math.floor(arr.length / 3)]) {
        const keep = arr[i]!;
        arr[i] = keep + h;
        const up = objective(factors);
        arr[i] = keep - h;
        const down = objective(factors);
        arr[i] = keep;
        const fd = (up - down) / (2 * h);
        const g = grads[key]![i]!;
        t.true(Math.abs(g - fd) <= 2e-3 * Math.max(1e-2, Math.abs(fd)), `${key}[${i}]: tfjs ${g}, finite difference ${fd}`);
        checked++;
      }
    }
    t.is(checked, 3 * 2 * 4);
    model.dispose();
  });
}

function randomize(vars: Record<string, tf.Variable>, part: string, seed: number): void {
  const rng = new Rng(seed);
  for (const [k, v] of Object.entries(vars)) {
    if (k.includes(part)) {
      const data = Float32Array.from({ length: v.size }, () => 0.3 * rng.normal());
      tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
    }
  }
}
