/**
 * Llama 3.x shapes against the float64 reference (model-reference.ts): rotary scaling (llama3,
 * linear) and an explicit head_dim, through the forward, step() and decode(). Run once per backend
 * by model-rope.test.ts (cpu) and model-rope-wasm.test.ts (wasm).
 */
import type { TestFn } from 'ava';
import * as tf from '@tensorflow/tfjs';
import { Rng, configFromHf, type LlamaConfig } from '@qrlhf/core';
import { modelFrom, randomWeights, referenceLogits, relErr, smallConfig } from './model-reference.js';

/** Llama-3.2-1B-Instruct's config.json as published (hf-configs MANIFEST), layers and widths scaled down. */
export const LLAMA32_SCALED = {
  architectures: ['LlamaForCausalLM'], attention_bias: false, attention_dropout: 0.0, bos_token_id: 128000,
  eos_token_id: [128001, 128008, 128009], head_dim: 8, hidden_act: 'silu', hidden_size: 32, initializer_range: 0.02,
  intermediate_size: 48, max_position_embeddings: 131072, mlp_bias: false, model_type: 'llama', num_attention_heads: 4,
  num_hidden_layers: 2, num_key_value_heads: 1, pretraining_tp: 1, rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: 'bfloat16', transformers_version: '4.45.0.dev0', use_cache: true,
  vocab_size: 128256,
};

/** Token ids in [0, V), seeded. */
function ids(n: number, V: number, rng: Rng): number[] {
  return Array.from({ length: n }, () => Math.floor(rng.next() * V));
}

/** forward, and step() + decode() over the same rows, against the float64 reference; returns the worst relative errors. */
function compare(c: LlamaConfig, seed: number, T: number, prompt: number, withUnscaled = true): { forward: number; decode: number; unscaled: number } {
  const w = randomWeights(c, seed);
  const model = modelFrom(c, w);
  const rng = new Rng(seed + 1);
  const rows = [ids(T, c.vocabSize, rng), ids(T, c.vocabSize, rng)];
  const mask = rows.map((r) => r.map(() => 1));
  mask[0]!.fill(0, 0, 3); // row 0 left-padded by 3
  const ref = referenceLogits(c, w, rows, mask);
  const keep = (i: number) => mask[Math.floor(i / (T * c.vocabSize))]![Math.floor(i / c.vocabSize) % T] === 1;
  const full = tf.tidy(() => model.forward(tf.tensor2d(rows, undefined, 'int32'), { mask: tf.tensor2d(mask) }).arraySync());
  const forward = relErr(full.flat(2), ref.flat(2), keep);
  // The same positions through the cache: a prefill step(), then one decode() per token.
  const cache = model.createCache(2, T);
  tf.tidy(() => { model.step(tf.tensor2d(rows.map((r) => r.slice(0, prompt)), undefined, 'int32'), cache, tf.tensor2d(mask.map((m) => m.slice(0, prompt)))); });
  let decode = 0;
  for (let p = prompt; p < T; p++) {
    const l = model.decode(rows.map((r) => r[p]!), cache, mask.map((m) => m.slice(0, p + 1)));
    const got = l.arraySync();
    l.dispose();
    for (let b = 0; b < 2; b++) decode = Math.max(decode, relErr(got[b]!, ref[b]![p]!));
  }
  cache.dispose();
  model.dispose();
  // How far the reference moves without the scaling (so the checks above can see it).
  const { ropeScaling: _, ...plain } = c;
  const unscaled = withUnscaled ? relErr(referenceLogits(plain, w, rows, mask).flat(2), ref.flat(2), keep) : NaN;
  return { forward, decode, unscaled };
}

export function defineRopeTests(test: TestFn, label: string): void {
  test(`${label}: a Llama-3.2-shaped model with llama3 rope scaling (as in its config.json) equals the float64 reference, forward and decode`, (t) => {
    const c = configFromHf(LLAMA32_SCALED, 'Llama-3.2 (scaled)');
    const e = compare(c, 1, 12, 5, false);
    t.log(`relative error: forward ${e.forward.toExponential(2)}, decode ${e.decode.toExponential(2)}`);
    t.true(e.forward < 1e-4, `forward ${e.forward}`);
    t.true(e.decode < 1e-4, `decode ${e.decode}`);
  });

  test(`${label}: llama3 scaling with the original context scaled to 16 positions: 40 positions (below and above it) equal the float64 reference, and differ from unscaled rope`, (t) => {
    const c = configFromHf({
      ...LLAMA32_SCALED, vocab_size: 300, bos_token_id: 1, eos_token_id: [2, 3], tie_word_embeddings: false,
      rope_scaling: { ...LLAMA32_SCALED.rope_scaling, original_max_position_embeddings: 16 },
    }, 'Llama-3.2 (scaled, short context)');
    const e = compare(c, 2, 40, 9);
    t.log(`relative error: forward ${e.forward.toExponential(2)}, decode ${e.decode.toExponential(2)}; unscaled rope ${e.unscaled.toExponential(2)}`);
    t.true(e.forward < 1e-4, `forward ${e.forward}`);
    t.true(e.decode < 1e-4, `decode ${e.decode}`);
    t.true(e.unscaled > 1e-2, `unscaled rope is ${e.unscaled} away: the scaling must matter here`);
  });

  test(`${label}: linear rope scaling equals the float64 reference`, (t) => {
    const c = smallConfig({ ropeScaling: { ropeType: 'linear', factor: 4 }, ropeTheta: 100 });
    const e = compare(c, 3, 24, 6);
    t.true(e.forward < 1e-4, `forward ${e.forward}`);
    t.true(e.decode < 1e-4, `decode ${e.decode}`);
    t.true(e.unscaled > 1e-2, `unscaled ${e.unscaled}`);
  });

  test(`${label}: an explicit head_dim that is not hidden_size / heads (16 wide, 4 heads of 6) equals the float64 reference`, (t) => {
    for (const [i, c] of [smallConfig({ headDim: 6 }), smallConfig({ headDim: 10, numKvHeads: 1, tieWordEmbeddings: true })].entries()) {
      const e = compare(c, 4 + i, 10, 4);
      t.true(e.forward < 1e-4, `config ${i}: forward ${e.forward}`);
      t.true(e.decode < 1e-4, `config ${i}: decode ${e.decode}`);
    }
  });
}
