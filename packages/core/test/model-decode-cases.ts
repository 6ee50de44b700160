/**
 * LlamaModel.decode() (the fused, LoRA-merged decoding path generate() uses per token) against the
 * unfused full forward and the float64 reference; its weights following the adapter; the
 * log-sum-exp of sequenceLogProbs at extreme logits. Run once per backend by model-decode.test.ts
 * (cpu) and model-decode-wasm.test.ts (wasm).
 */
import type { TestFn } from 'ava';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError, Rng, sequenceLogProbs, type LlamaConfig, type LlamaModel } from '@qrlhf/core';
import {
  loraFactors,
  logSoftmax,
  mergedWeights,
  modelFrom,
  randomWeights,
  referenceLogits,
  relErr,
  smallConfig,
} from './model-reference.js';

/** GQA with 2 query heads per kv head, plain multi-head (tied), one kv head for all, odd sizes. */
const CONFIGS: LlamaConfig[] = [
  smallConfig(),
  smallConfig({ numKvHeads: 4, tieWordEmbeddings: true }),
  smallConfig({ numKvHeads: 1, numHeads: 2, hiddenSize: 12, ropeTheta: 500, numLayers: 3, vocabSize: 11 }),
  smallConfig({ numKvHeads: 2, numHeads: 6, hiddenSize: 24, intermediateSize: 10, rmsNormEps: 1e-6 }),
];

function randomize(vars: Record<string, tf.Variable>, seed: number, scale: number): void {
  const rng = new Rng(seed);
  for (const v of Object.values(vars)) {
    const data = Float32Array.from({ length: v.size }, () => scale * rng.normal());
    tf.tidy(() => v.assign(tf.tensor(data, v.shape)));
  }
}

function ids(n: number, V: number, rng: Rng): number[] {
  return Array.from({ length: n }, () => Math.floor(rng.next() * V));
}

/**
 * A 3-row batch history: row 0 left-padded by 2, row 1 unpadded, row 2 left-padded by 1 and
 * "finished" after its third new token (pads fed after it, as generate() does).
 */
function history(c: LlamaConfig, prompt: number, steps: number, seed: number): { ids: number[][]; mask: number[][] } {
  const rng = new Rng(seed);
  const rows = [ids(prompt + steps, c.vocabSize, rng), ids(prompt + steps, c.vocabSize, rng), ids(prompt + steps, c.vocabSize, rng)];
  const mask = rows.map((r) => r.map(() => 1));
  mask[0]!.fill(0, 0, 2);
  mask[2]![0] = 0;
  mask[2]!.fill(0, prompt + 3);
  return { ids: rows, mask };
}

/** Logits [B][V] of every decode() after a step() prefill of `prompt` positions. */
function decodeAll(model: LlamaModel, h: { ids: number[][]; mask: number[][] }, prompt: number): number[][][] {
  const B = h.ids.length;
  const T = h.ids[0]!.length;
  const cache = model.createCache(B, T);
  tf.tidy(() => {
    model.step(tf.tensor2d(h.ids.map((r) => r.slice(0, prompt)), undefined, 'int32'), cache, tf.tensor2d(h.mask.map((r) => r.slice(0, prompt))));
  });
  const out: number[][][] = [];
  for (let p = prompt; p < T; p++) {
    const logits = model.decode(h.ids.map((r) => r[p]!), cache, h.mask.map((r) => r.slice(0, p + 1)));
    out.push(logits.arraySync());
    logits.dispose();
  }
  cache.dispose();
  return out;
}

export function defineDecodeTests(test: TestFn, label: string): void {
  test(`${label}: step with lastOnly gives the last position's logits of the full step, bit for bit`, (t) => {
    const c = CONFIGS[0]!;
    const model = modelFrom(c, randomWeights(c, 39));
    model.addLora({ r: 2, alpha: 3, dropout: 0, targetModules: 'all-linear' }, new Rng(9));
    randomize(model.lora!.variables, 49, 0.3);
    const h = history(c, 6, 0, 8);
    const [B, T] = [h.ids.length, h.ids[0]!.length];
    const run = (lastOnly: boolean) =>
      tf.tidy(() => {
        const cache = model.createCache(B, T);
        const out = model.step(tf.tensor2d(h.ids, undefined, 'int32'), cache, tf.tensor2d(h.mask), { lastOnly });
        const r = { shape: out.shape, last: out.slice([0, out.shape[1] - 1, 0], [B, 1, c.vocabSize]).arraySync(), cached: cache.length };
        cache.dispose();
        return r;
      });
    const full = run(false);
    const last = run(true);
    t.deepEqual(last.shape, [B, 1, c.vocabSize]);
    t.deepEqual(full.shape, [B, T, c.vocabSize]);
    t.deepEqual(last.last, full.last);
    t.is(last.cached, T);
    model.dispose();
  });

  CONFIGS.forEach((c, ci) => {
    test(`${label}: decode with a merged adapter equals the unfused full forward and the float64 reference (config ${ci}: H ${c.numHeads}, KV ${c.numKvHeads})`, (t) => {
      const w = randomWeights(c, 40 + ci);
      const model = modelFrom(c, w);
      const a = model.addLora({ r: 2, alpha: 3, dropout: 0, targetModules: 'all-linear' }, new Rng(ci));
      randomize(a.variables, 50 + ci, 0.3);
      const prompt = 4;
      const steps = 6;
      const h = history(c, prompt, steps, 60 + ci);
      const stepped = decodeAll(model, h, prompt);
      // The unfused path: one forward over the whole history, LoRA unmerged.
      const full = tf.tidy(() => model.forward(tf.tensor2d(h.ids, undefined, 'int32'), { mask: tf.tensor2d(h.mask) }).arraySync());
      const ref = referenceLogits(c, w, h.ids, h.mask, mergedWeights(w, loraFactors(a.variables), a.scale));
      let compared = 0;
      for (let s = 0; s < steps; s++) {
        for (let b = 0; b < h.ids.length; b++) {
          if (h.mask[b]![prompt + s] === 0) continue; // a pad's own logits mean nothing
          const got = stepped[s]![b]!;
          t.true(relErr(got, full[b]![prompt + s]!) < 1e-4, `step ${s} row ${b}: vs forward ${relErr(got, full[b]![prompt + s]!)}`);
          t.true(relErr(got, ref[b]![prompt + s]!) < 1e-4, `step ${s} row ${b}: vs float64 ${relErr(got, ref[b]![prompt + s]!)}`);
          compared++;
        }
      }
      t.is(compared, 3 * steps - (steps - 3));
      // The adapter matters here (a test with B = 0 would not see a missing merge).
      const base = referenceLogits(c, w, h.ids, h.mask);
      t.true(relErr(stepped[steps - 1]![1]!, base[1]![prompt + steps - 1]!) > 1e-2);
      model.dispose();
    });
  });

  test(`${label}: step() after decode() continues the same cache (prefill, 3 decoded tokens, then 3 positions at once)`, (t) => {
    const c = CONFIGS[0]!;
    const w = randomWeights(c, 77);
    const model = modelFrom(c, w);
    const prompt = 4;
    const h = history(c, prompt, 6, 78);
    const B = h.ids.length;
    const T = h.ids[0]!.length;
    const cache = model.createCache(B, T);
    tf.tidy(() => {
      model.step(tf.tensor2d(h.ids.map((r) => r.slice(0, prompt)), undefined, 'int32'), cache, tf.tensor2d(h.mask.map((r) => r.slice(0, prompt))));
    });
    for (let p = prompt; p < prompt + 3; p++) model.decode(h.ids.map((r) => r[p]!), cache, h.mask.map((r) => r.slice(0, p + 1))).dispose();
    const tail = tf.tidy(() =>
      model.step(tf.tensor2d(h.ids.map((r) => r.slice(prompt + 3)), undefined, 'int32'), cache, tf.tensor2d(h.mask)).arraySync(),
    );
    t.is(cache.length, T);
    const ref = referenceLogits(c, w, h.ids, h.mask);
    let compared = 0;
    for (let b = 0; b < B; b++) {
      for (let s = 0; s < 3; s++) {
        if (h.mask[b]![prompt + 3 + s] === 0) continue;
        t.true(relErr(tail[b]![s]!, ref[b]![prompt + 3 + s]!) < 1e-4, `row ${b} position ${prompt + 3 + s}`);
        compared++;
      }
    }
    t.true(compared >= 6);
    cache.dispose();
    model.dispose();
  });

  test(`${label}: decode follows the adapter: an optimiser-style assign, disabling it and mergeLora each give the matching forward`, (t) => {
    const c = CONFIGS[0]!;
    const w = randomWeights(c, 70);
    const model = modelFrom(c, w);
    const a = model.addLora({ r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'up_proj'] }, new Rng(3));
    randomize(a.variables, 71, 0.3);
    // No pads: the decode path without a mask tensor.
    const rng = new Rng(72);
    const h = { ids: [ids(8, c.vocabSize, rng), ids(8, c.vocabSize, rng)], mask: [Array<number>(8).fill(1), Array<number>(8).fill(1)] };
    const check = (what: string) => {
      const got = decodeAll(model, h, 5);
      const full = tf.tidy(() => model.forward(tf.tensor2d(h.ids, undefined, 'int32')).arraySync());
      got.forEach((rows, s) => rows.forEach((row, b) => {
        const e = relErr(row, full[b]![5 + s]!);
        t.true(e < 1e-4, `${what}: step ${s} row ${b}: ${e}`);
      }));
      return got;
    };
    const first = check('fresh');
    const tensors = tf.memory().numTensors;
    randomize(a.variables, 73, 0.3); // new values for A and B, as an optimiser step assigns them
    const second = check('after an update');
    t.true(relErr(second.flat(2), first.flat(2)) > 1e-2, 'the update reached the decoding weights');
    t.is(tf.memory().numTensors, tensors, 'the old decoding weights were released when rebuilt');
    a.enabled = false;
    const off = check('adapter disabled');
    const base = tf.tidy(() => modelFrom(c, w).forward(tf.tensor2d(h.ids, undefined, 'int32')).arraySync());
    off.forEach((rows, s) => rows.forEach((row, b) => t.true(relErr(row, base[b]![5 + s]!) < 1e-4)));
    a.enabled = true;
    check('enabled again');
    model.mergeLora();
    check('merged');
    model.dispose();
  });

  test(`${label}: decode refuses a mask, token or cache that does not fit, naming it`, (t) => {
    const c = CONFIGS[0]!;
    const model = modelFrom(c, randomWeights(c, 80));
    const cache = model.createCache(2, 3);
    t.throws(() => model.decode([1, 2], cache, [[1], [1, 1]]), { instanceOf: QrlhfError, message: /mask row 1 has 2 entries, expected 1/ });
    t.throws(() => model.decode([1, c.vocabSize], cache, [[1], [1]]), { instanceOf: QrlhfError, message: /row 1: token 29/ });
    t.throws(() => model.decode([1], cache, [[1]]), { instanceOf: QrlhfError, message: /batch 2/ });
    for (let p = 0; p < 3; p++) tf.dispose(model.decode([1, 2], cache, [Array<number>(p + 1).fill(1), Array<number>(p + 1).fill(1)]));
    t.throws(() => model.decode([1, 2], cache, [[1, 1, 1, 1], [1, 1, 1, 1]]), { instanceOf: QrlhfError, message: /maxLen 3/ });
    t.is(cache.length, 3);
    cache.dispose();
    model.dispose();
  });

  test(`${label}: sequenceLogProbs stays exact at extreme logits (temperature 0.02) and its gradient is finite`, (t) => {
    const c = smallConfig({ vocabSize: 17, numLayers: 1 });
    const w = randomWeights(c, 90);
    const model = modelFrom(c, w);
    const a = model.addLora({ r: 2, alpha: 2, dropout: 0, targetModules: ['q_proj'] }, new Rng(4));
    const rng = new Rng(91);
    const seq = [ids(7, c.vocabSize, rng), ids(7, c.vocabSize, rng)];
    const mask = seq.map((r) => r.map(() => 1));
    const targets = seq.map((r) => r.slice(1).map(() => 1));
    const temp = 0.02;
    const logits = referenceLogits(c, w, seq, mask);
    const ref = seq.map((r, b) => r.slice(1).map((tok, i) => logSoftmax(logits[b]![i]!.map((x) => x / temp))[tok]!)).flat();
    t.true(Math.max(...ref.map(Math.abs)) > 50, 'the logits are extreme enough to overflow a naive exp');
    const { value, lp } = tf.tidy(() => {
      const [idsT, maskT, tmT] = [tf.tensor2d(seq, undefined, 'int32'), tf.tensor2d(mask), tf.tensor2d(targets)];
      const r = tf.variableGrads(() => tf.sum(sequenceLogProbs(model, idsT, maskT, tmT, { temperature: temp })) as tf.Scalar, Object.values(a.variables));
      const finite = Object.values(r.grads).every((g) => g.dataSync().every(Number.isFinite));
      return { value: finite, lp: Array.from(sequenceLogProbs(model, idsT, maskT, tmT, { temperature: temp }).dataSync()) };
    });
    t.true(value, 'every gradient entry is finite');
    // float32 logits of magnitude ~1e3 carry absolute errors ~1e-4 relative to them.
    t.true(relErr(lp, ref) < 1e-4, `relative error ${relErr(lp, ref)}`);
    model.dispose();
  });
}
