/**
 * The model on the webgpu backend (Dawn in Node; in CI the software GPU that
 * `. scripts/webgpu-env.sh` provides, lavapipe): the float64 reference forward with padding, KV
 * cache = full forward, greedy sampling = the cpu backend's tokens, LoRA unmerged = merged = the
 * float64 W + (alpha/r) B A, and three AdamW steps of LoRA training giving wasm's losses.
 * Few, tiny cases: every new shader compiles in 0.5-3 s on lavapipe. Every read is `await data()`
 * (a GPU tensor has no synchronous read). Without an adapter the file registers one skipped test
 * whose title says why.
 */
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { AdamW, Rng, clipGradNorm, generate, initBackend, sequenceLogProbs, type LlamaModel, type LoraAdapter } from '@qrlhf/core';
import { loraFactors, mergedWeights, modelFrom, randomWeights, referenceLogits, relErr, smallConfig } from './model-reference.js';

// wasm first (the training comparison), then webgpu, which stays the current backend.
await initBackend('wasm', { quiet: true });
let unavailable: string | null = null;
try {
  await initBackend('webgpu', { quiet: true });
} catch (e) {
  unavailable = e instanceof Error ? e.message : String(e);
}

const c = smallConfig();
const ids = [
  [0, 0, 5, 9, 3, 17, 22, 4],
  [1, 11, 2, 27, 6, 6, 13, 7],
];
const mask = [
  [0, 0, 1, 1, 1, 1, 1, 1],
  [1, 1, 1, 1, 1, 1, 1, 1],
];
const real = (i: number) => mask[Math.floor(i / (ids[0]!.length * c.vocabSize))]![Math.floor(i / c.vocabSize) % ids[0]!.length] === 1;

async function logits(model: LlamaModel): Promise<Float32Array> {
  const x = tf.tensor2d(ids, undefined, 'int32');
  const m = tf.tensor2d(mask);
  const out = model.forward(x, { mask: m });
  const data = (await out.data()) as Float32Array;
  tf.dispose([x, m, out]);
  return data;
}

function randomizeB(a: LoraAdapter, seed: number): void {
  const rng = new Rng(seed);
  for (const [k, v] of Object.entries(a.variables)) {
    if (k.endsWith('lora_B.weight')) tf.tidy(() => v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => 0.3 * rng.normal()), v.shape)));
  }
}

/** Three LoRA AdamW steps on the sequence log-likelihood; the loss before each step. */
async function trainLosses(): Promise<number[]> {
  const w = randomWeights(c, 41);
  const model = modelFrom(c, w);
  const adapter = model.addLora({ r: 2, alpha: 4, dropout: 0, targetModules: ['q_proj', 'v_proj', 'up_proj'] }, new Rng(7));
  randomizeB(adapter, 8);
  const keyOf = new Map(Object.entries(adapter.variables).map(([k, v]) => [v.name, k]));
  const opt = new AdamW(adapter.variables, { lr: 0.02, weightDecay: 0.01 });
  const idsT = tf.tensor2d(ids, undefined, 'int32');
  const maskT = tf.tensor2d(mask);
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) {
    const { value, grads } = tf.variableGrads(
      () => tf.neg(tf.sum(sequenceLogProbs(model, idsT, maskT, maskT, { training: true }))) as tf.Scalar,
      Object.values(adapter.variables),
    );
    losses.push((await value.data())[0]!);
    const byKey: Record<string, tf.Tensor> = {};
    for (const [name, g] of Object.entries(grads)) byKey[keyOf.get(name)!] = g;
    opt.step(byKey, 0.02);
    tf.dispose([value, ...Object.values(grads)]);
  }
  tf.dispose([idsT, maskT]);
  opt.dispose();
  model.dispose();
  return losses;
}

if (unavailable !== null) {
  test.skip(`webgpu model cases skipped: ${unavailable}`, () => {});
} else {
  test.serial('webgpu: forward of a left-padded batch equals the float64 reference', async (t) => {
    t.is(tf.getBackend(), 'webgpu');
    const w = randomWeights(c, 100);
    const model = modelFrom(c, w);
    const got = await logits(model);
    const ref = referenceLogits(c, w, ids, mask).flat(2);
    const err = relErr(got, ref, real);
    t.true(err < 1e-4, `relative error ${err}`);
    t.true(Math.max(...ref.filter((_, i) => real(i))) - Math.min(...ref.filter((_, i) => real(i))) > 1, 'the logits are not degenerate');
    model.dispose();
  });

  test.serial('webgpu: KV-cache steps (prompt, then one token at a time) equal the full forward', async (t) => {
    const model = modelFrom(c, randomWeights(c, 21));
    const L = ids[0]!.length;
    const full = await logits(model);
    const cache = model.createCache(2, L);
    const stepped: number[][] = [[], []];
    const V = c.vocabSize;
    for (const [from, to] of [[0, 4], [4, 5], [5, 6], [6, 7], [7, 8]] as const) {
      const x = tf.tensor2d(ids.map((r) => r.slice(from, to)), undefined, 'int32');
      const m = tf.tensor2d(mask.map((r) => r.slice(0, to)));
      const out = model.step(x, cache, m);
      const data = await out.data();
      for (let b = 0; b < 2; b++) stepped[b]!.push(...data.subarray(b * (to - from) * V, (b + 1) * (to - from) * V));
      tf.dispose([x, m, out]);
    }
    t.is(cache.length, L);
    const err = relErr(stepped.flat(), full, real);
    t.true(err < 1e-5, `relative error ${err}`);
    cache.dispose();
    model.dispose();
  });

  test.serial('webgpu: greedy generation of a padded batch gives the cpu backend tokens', async (t) => {
    const w = randomWeights(c, 31);
    const prompts = [[1, 5, 9], [1, 11, 2, 27, 6]];
    const run = async () => {
      const model = modelFrom(c, w);
      const out = await generate(model, prompts, { maxNewTokens: 6, temperature: 0, eosTokenId: [], rng: new Rng(0) });
      model.dispose();
      return out.tokens;
    };
    const gpu = await run();
    await tf.setBackend('cpu');
    let cpu: number[][];
    try {
      cpu = await run();
    } finally {
      await tf.setBackend('webgpu');
    }
    t.deepEqual(gpu, cpu);
    t.true(new Set(gpu.flat()).size > 2, 'the tokens are not all one value');
  });

  test.serial('webgpu: LoRA unmerged, merged and the float64 W + (alpha/r) B A agree', async (t) => {
    const w = randomWeights(c, 4);
    const model = modelFrom(c, w);
    const base = await logits(model);
    const a = model.addLora({ r: 3, alpha: 6, dropout: 0, targetModules: ['q_proj', 'v_proj', 'down_proj'] }, new Rng(2));
    randomizeB(a, 9);
    // loraFactors reads synchronously: hand it host-made copies of the factors.
    const host: Record<string, tf.Tensor> = {};
    for (const [k, v] of Object.entries(a.variables)) host[k] = tf.tensor(await v.data(), v.shape);
    const ref = referenceLogits(c, w, ids, mask, mergedWeights(w, loraFactors(host), 2)).flat(2);
    tf.dispose(Object.values(host));
    const unmerged = await logits(model);
    t.true(relErr(unmerged, ref, real) < 1e-4, `unmerged vs reference ${relErr(unmerged, ref, real)}`);
    t.true(relErr(base, ref, real) > 1e-2, 'the adapter changes the logits');
    model.mergeLora();
    const merged = await logits(model);
    t.true(relErr(merged, unmerged, real) < 1e-4, `merged vs unmerged ${relErr(merged, unmerged, real)}`);
    model.dispose();
  });

  test.serial('webgpu: three LoRA AdamW steps give the losses of wasm within float32 tolerance; clipping over many gradients', async (t) => {
    const gpu = await trainLosses();
    await tf.setBackend('wasm');
    let wasm: number[];
    try {
      wasm = await trainLosses();
    } finally {
      await tf.setBackend('webgpu');
    }
    gpu.forEach((l, i) => t.true(Math.abs(l - wasm[i]!) <= 1e-4 * Math.abs(wasm[i]!), `step ${i}: webgpu ${l} vs wasm ${wasm[i]}`));
    // Gradient clipping over more tensors than a WebGPU shader may bind (AddN failed there).
    const grads: Record<string, tf.Tensor> = {};
    for (let i = 0; i < 12; i++) grads[`g${i}`] = tf.fill([3], i + 1);
    const { grads: clipped, norm } = await clipGradNorm(grads, 1);
    const want = Math.sqrt(3 * Array.from({ length: 12 }, (_, i) => (i + 1) ** 2).reduce((a, b) => a + b, 0));
    t.true(Math.abs(norm - want) <= 1e-5 * want, `norm ${norm} vs ${want}`);
    tf.dispose([...Object.values(grads), ...Object.values(clipped)]);
    t.true(wasm[2]! < wasm[0]! - 1e-3, `the steps train (losses ${wasm.join(', ')})`);
  });
}
