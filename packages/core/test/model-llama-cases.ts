/**
 * The forward-pass tests, run once per backend by model-llama.test.ts (cpu) and
 * model-llama-wasm.test.ts (wasm).
 */
import type { TestFn } from 'ava';
import * as tf from '@tensorflow/tfjs';
import { LlamaModel, Rng, configFromHf, configToHf, QrlhfError, referenceForward } from '@qrlhf/core';
import { loraFactors, mergedWeights, modelFrom, randomWeights, referenceLogits, relErr, smallConfig } from './model-reference.js';

const flat = (x: number[][][]) => x.flat(2);

/** Shapes that cover GQA or not, tied or not, another theta, odd sizes. */
export const CONFIGS = [
  smallConfig(),
  smallConfig({ numKvHeads: 4, tieWordEmbeddings: true }),
  smallConfig({ numKvHeads: 1, numHeads: 2, hiddenSize: 12, ropeTheta: 500, numLayers: 3, vocabSize: 11 }),
  smallConfig({ numKvHeads: 2, numHeads: 2, tieWordEmbeddings: true, rmsNormEps: 1e-6, intermediateSize: 7 }),
];

function randomIds(n: number, V: number, seed: number): number[] {
  let s = seed;
  return Array.from({ length: n }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % V;
  });
}

export function defineForwardTests(test: TestFn, label: string): void {
  CONFIGS.forEach((c, ci) => {
    test(`${label}: forward equals the float64 reference (config ${ci}: H ${c.numHeads}, KV ${c.numKvHeads}, tied ${c.tieWordEmbeddings})`, (t) => {
      const w = randomWeights(c, 100 + ci);
      const model = modelFrom(c, w);
      const ids = [randomIds(9, c.vocabSize, 1 + ci), randomIds(9, c.vocabSize, 50 + ci)];
      const idsT = tf.tensor2d(ids, undefined, 'int32');
      const out = model.forward(idsT);
      t.deepEqual(out.shape, [2, 9, c.vocabSize]);
      const got = out.dataSync();
      tf.dispose([out, idsT]);
      const ref = flat(referenceLogits(c, w, ids));
      const err = relErr(got, ref);
      t.true(err < 1e-4, `relative error ${err}`);
      // The logits are not degenerate (the check above could not pass by accident).
      t.true(Math.max(...ref) - Math.min(...ref) > 1);
      model.dispose();
    });
  });

  CONFIGS.forEach((c, ci) => {
    test(`${label}: the plain reference forward (reference.ts) equals the float64 reference and the fast forward, values and LoRA gradients, with pads and an adapter (config ${ci})`, (t) => {
      const w = randomWeights(c, 300 + ci);
      const model = modelFrom(c, w);
      const a = model.addLora({ r: 2, alpha: 3, dropout: 0, targetModules: 'all-linear' }, new Rng(ci));
      const rng = new Rng(310 + ci);
      for (const v of Object.values(a.variables)) {
        tf.tidy(() => v.assign(tf.tensor(Float32Array.from({ length: v.size }, () => 0.3 * rng.normal()), v.shape)));
      }
      const ids = [[0, 0, ...randomIds(6, c.vocabSize, 7 + ci)], randomIds(8, c.vocabSize, 70 + ci)];
      const mask = [[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]];
      const [idsT, maskT] = [tf.tensor2d(ids, undefined, 'int32'), tf.tensor2d(mask)];
      const plain = tf.tidy(() => referenceForward(model, idsT, { mask: maskT }).arraySync());
      const fast = tf.tidy(() => model.forward(idsT, { mask: maskT }).arraySync());
      const ref = referenceLogits(c, w, ids, mask, mergedWeights(w, loraFactors(a.variables), a.scale));
      const keep = (i: number) => mask[Math.floor(i / (8 * c.vocabSize))]![Math.floor(i / c.vocabSize) % 8] === 1;
      t.true(relErr(plain.flat(2), flat(ref), keep) < 1e-4, `reference.ts vs float64: ${relErr(plain.flat(2), flat(ref), keep)}`);
      t.true(relErr(fast.flat(2), plain.flat(2), keep) < 1e-5, `fast vs reference.ts: ${relErr(fast.flat(2), plain.flat(2), keep)}`);
      // The adapter matters here.
      t.true(relErr(plain.flat(2), flat(referenceLogits(c, w, ids, mask)), keep) > 1e-2);
      // Gradients of one scalar of the logits with respect to every adapter factor agree.
      const probe = tf.randomNormal([2, 8, c.vocabSize], 0, 1, 'float32', 5);
      const weight = tf.mul(probe, maskT.reshape([2, 8, 1]));
      const grads = (f: () => tf.Tensor) => {
        const { grads: g } = tf.variableGrads(() => tf.sum(tf.mul(f(), weight)) as tf.Scalar, Object.values(a.variables));
        const out = Object.keys(a.variables).map((k) => Array.from(g[a.variables[k]!.name]!.dataSync()));
        tf.dispose(Object.values(g));
        return out.flat();
      };
      const gPlain = grads(() => referenceForward(model, idsT, { mask: maskT }));
      const gFast = grads(() => model.forward(idsT, { mask: maskT }));
      t.true(relErr(gFast, gPlain) < 1e-4, `LoRA gradients fast vs reference.ts: ${relErr(gFast, gPlain)}`);
      t.true(Math.max(...gPlain.map(Math.abs)) > 1e-3);
      tf.dispose([idsT, maskT, probe, weight]);
      model.dispose();
    });
  });

  test(`${label}: forward leaves no tensors behind, hidden() then head() equals forward()`, (t) => {
    const c = CONFIGS[0]!;
    const model = modelFrom(c, randomWeights(c, 7));
    const ids = tf.tensor2d([randomIds(6, c.vocabSize, 3)], undefined, 'int32');
    model.forward(ids).dispose(); // first call builds the rope tables and the transposed head
    const before = tf.memory().numTensors;
    const a = model.forward(ids);
    const h = model.hidden(ids);
    const b = model.head(h);
    t.deepEqual(h.shape, [1, 6, c.hiddenSize]);
    t.deepEqual(Array.from(a.dataSync()), Array.from(b.dataSync()));
    tf.dispose([a, h, b]);
    t.is(tf.memory().numTensors, before);
    ids.dispose();
    model.dispose();
  });

  test(`${label}: a left-padded and a right-padded batch give each sequence's own logits`, (t) => {
    const c = CONFIGS[0]!;
    const w = randomWeights(c, 11);
    const model = modelFrom(c, w);
    const seqs = [randomIds(3, c.vocabSize, 5), randomIds(7, c.vocabSize, 6), randomIds(5, c.vocabSize, 7)];
    const L = 7;
    for (const side of ['left', 'right'] as const) {
      const ids = seqs.map((s) => (side === 'left' ? [...Array(L - s.length).fill(0), ...s] : [...s, ...Array(L - s.length).fill(0)]));
      const mask = seqs.map((s) => {
        const ones = Array(s.length).fill(1);
        const zeros = Array(L - s.length).fill(0);
        return side === 'left' ? [...zeros, ...ones] : [...ones, ...zeros];
      });
      const out = model.forward(tf.tensor2d(ids, undefined, 'int32'), { mask: tf.tensor2d(mask) });
      const got = out.arraySync();
      out.dispose();
      seqs.forEach((s, b) => {
        const alone = model.forward(tf.tensor2d([s], undefined, 'int32'));
        const a = alone.arraySync()[0]!;
        alone.dispose();
        const off = side === 'left' ? L - s.length : 0;
        const rows = got[b]!.slice(off, off + s.length);
        const err = relErr(rows.flat(), a.flat());
        t.true(err < 1e-5, `${side} padding, sequence ${b}: relative error ${err}`);
        const ref = referenceLogits(c, w, [s])[0]!;
        t.true(relErr(rows.flat(), ref.flat()) < 1e-4);
      });
      // The float64 reference with the same padding agrees on every real token.
      const ref = referenceLogits(c, w, ids, mask);
      const keep = (i: number) => mask[Math.floor(i / (L * c.vocabSize))]![Math.floor(i / c.vocabSize) % L] === 1;
      t.true(relErr(got.flat(2), flat(ref), keep) < 1e-4);
    }
    model.dispose();
  });

  test(`${label}: KV-cache decoding (prompt, then one token at a time) equals the full forward`, (t) => {
    for (const c of [CONFIGS[0]!, CONFIGS[1]!]) {
      const model = modelFrom(c, randomWeights(c, 21));
      // Two rows, the first left-padded by 2.
      const L = 10;
      const ids = [[0, 0, ...randomIds(L - 2, c.vocabSize, 8)], randomIds(L, c.vocabSize, 9)];
      const mask = [[0, 0, ...Array(L - 2).fill(1)], Array(L).fill(1)];
      const fullT = model.forward(tf.tensor2d(ids, undefined, 'int32'), { mask: tf.tensor2d(mask) });
      const full = fullT.arraySync();
      fullT.dispose();
      const cache = model.createCache(2, L);
      const P = 4;
      const stepped: number[][][] = [[], []];
      const feed = (from: number, to: number) => {
        const out = model.step(
          tf.tensor2d(ids.map((r) => r.slice(from, to)), undefined, 'int32'),
          cache,
          tf.tensor2d(mask.map((r) => r.slice(0, to))),
        );
        out.arraySync().forEach((rows, b) => stepped[b]!.push(...rows));
        out.dispose();
      };
      feed(0, P);
      const before = tf.memory().numTensors;
      for (let p = P; p < L; p++) feed(p, p + 1);
      t.is(cache.length, L);
      // Every step replaces the cache tensors: none pile up (the inputs made here are 2 per step).
      t.true(tf.memory().numTensors - before <= 2 * (L - P));
      const keep = (i: number) => mask[Math.floor(i / (L * c.vocabSize))]![Math.floor(i / c.vocabSize) % L] === 1;
      const err = relErr(stepped.flat(2), full.flat(2), keep);
      t.true(err < 1e-5, `relative error ${err}`);
      t.throws(() => model.step(tf.tensor2d([[1], [1]], undefined, 'int32'), cache, tf.ones([2, L + 1])), {
        instanceOf: QrlhfError,
        message: /maxLen/,
      });
      cache.dispose();
      model.dispose();
    }
  });
}

export function defineConfigTests(test: TestFn): void {
  const hf = {
    model_type: 'llama',
    hidden_size: 64,
    intermediate_size: 172,
    num_hidden_layers: 5,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 512,
    rms_norm_eps: 1e-5,
    tie_word_embeddings: true,
    max_position_embeddings: 512,
    bos_token_id: 1,
    eos_token_id: 2,
  };

  test('configFromHf reads a Hugging Face config.json and configToHf writes it back', (t) => {
    const c = configFromHf(hf);
    t.deepEqual(c, {
      vocabSize: 512,
      hiddenSize: 64,
      intermediateSize: 172,
      numLayers: 5,
      numHeads: 8,
      numKvHeads: 4,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      tieWordEmbeddings: true,
      maxPositionEmbeddings: 512,
      bosTokenId: 1,
      eosTokenId: 2,
    });
    t.deepEqual(configFromHf(configToHf(c)), c);
    const noKv = configFromHf({ ...hf, num_key_value_heads: undefined, pad_token_id: 0, rope_theta: 500000 });
    t.is(noKv.numKvHeads, 8);
    t.is(noKv.padTokenId, 0);
    t.is(noKv.ropeTheta, 500000);
    t.is(configFromHf({ ...hf, eos_token_id: [7, 2] }).eosTokenId, 7);
  });

  test('configFromHf names the file and the key of a bad value', (t) => {
    const bad = (over: Record<string, unknown>, re: RegExp) =>
      t.throws(() => configFromHf({ ...hf, ...over }, 'm/config.json'), { instanceOf: QrlhfError, message: re });
    bad({ hidden_size: '64' }, /m\/config\.json: "hidden_size": expected a positive integer/);
    bad({ vocab_size: undefined }, /"vocab_size" is missing/);
    bad({ num_attention_heads: 6 }, /divisible by "num_attention_heads"/);
    bad({ num_key_value_heads: 3 }, /multiple of "num_key_value_heads"/);
    bad({ rms_norm_eps: -1 }, /"rms_norm_eps": expected a positive number/);
    bad({ tie_word_embeddings: 'yes' }, /"tie_word_embeddings"/);
    bad({ eos_token_id: 600 }, /"eos_token_id" \(600\) must be below "vocab_size"/);
    bad({ rope_scaling: { type: 'dynamic', factor: 2 } }, /m\/config\.json: "rope_scaling\.type" is "dynamic": rotary scaling of this type is not supported/);
    bad({ rope_scaling: { rope_type: 'yarn', factor: 4 } }, /"rope_scaling\.rope_type" is "yarn"/);
    bad({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4 } }, /"rope_scaling\.original_max_position_embeddings" is missing/);
    bad({ rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1, original_max_position_embeddings: 8192 } }, /"rope_scaling\.high_freq_factor" is 1 \(expected a number above low_freq_factor/);
    bad({ rope_scaling: { rope_type: 'linear', factor: 'two' } }, /"rope_scaling\.factor" is "two"/);
    bad({ attention_bias: true }, /m\/config\.json: "attention_bias".*not supported/);
    bad({ mlp_bias: true }, /"mlp_bias".*not supported/);
    bad({ head_dim: 7 }, /"head_dim" = 7\) must be even/);
    bad({ eos_token_id: [] }, /"eos_token_id": expected a non-negative integer token id or a non-empty list/);
    bad({ eos_token_id: [2, 700] }, /"eos_token_id" \(700\) must be below "vocab_size"/);
    bad({ model_type: 'gpt2' }, /"model_type"/);
    t.throws(() => configFromHf([1]), { instanceOf: QrlhfError });
  });

  test('fromTensors rejects a missing, misshapen or unknown weight by name', (t) => {
    const c = smallConfig();
    const w = randomWeights(c, 1);
    const tensors = () => Object.fromEntries(Object.entries(w).map(([k, v]) => [k, tf.tensor(v.data, v.shape)]));
    const before = tf.memory().numTensors;
    const a = tensors();
    const removed = a['model.layers.1.mlp.up_proj.weight']!;
    delete a['model.layers.1.mlp.up_proj.weight'];
    t.throws(() => LlamaModel.fromTensors(c, a), { instanceOf: QrlhfError, message: /"model\.layers\.1\.mlp\.up_proj\.weight" is missing/ });
    const b = tensors();
    b['model.norm.weight']!.dispose();
    b['model.norm.weight'] = tf.zeros([3]);
    t.throws(() => LlamaModel.fromTensors(c, b), { instanceOf: QrlhfError, message: /"model\.norm\.weight" has shape \[3\], expected \[16\]/ });
    const d = tensors();
    d['model.layers.0.self_attn.q_proj.bias'] = tf.zeros([16]);
    t.throws(() => LlamaModel.fromTensors(c, d), { instanceOf: QrlhfError, message: /unexpected tensor "model\.layers\.0\.self_attn\.q_proj\.bias"/ });
    // Ownership: rejected tensors are disposed too.
    t.is(tf.memory().numTensors, before + 1);
    removed.dispose();
  });
}

export function defineRandomModelTests(test: TestFn): void {
  test('LlamaModel.random: every weight of the HF layout, seeded, std about 0.02, norms at 1', (t) => {
    const c = smallConfig({ tieWordEmbeddings: true });
    const a = LlamaModel.random(c, 5);
    const b = LlamaModel.random(c, 5);
    const d = LlamaModel.random(c, 6);
    t.false('lm_head.weight' in a.weights);
    t.is(Object.keys(a.weights).length, 2 + 9 * c.numLayers);
    const q = 'model.layers.1.self_attn.q_proj.weight';
    t.deepEqual(a.weights[q]!.shape, [16, 16]);
    t.deepEqual(Array.from(a.weights[q]!.dataSync()), Array.from(b.weights[q]!.dataSync()));
    t.notDeepEqual(Array.from(a.weights[q]!.dataSync()), Array.from(d.weights[q]!.dataSync()));
    const e = a.weights['model.embed_tokens.weight']!.dataSync();
    const sd = Math.sqrt(e.reduce((s, x) => s + x * x, 0) / e.length);
    t.true(sd > 0.015 && sd < 0.025, `sd ${sd}`);
    t.true(a.weights['model.norm.weight']!.dataSync().every((x) => x === 1));
    t.false(a.weights[q]!.trainable);
    [a, b, d].forEach((m) => m.dispose());
  });
}
