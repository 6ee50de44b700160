import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlamaModel, QrlhfError, Rng, readSafetensors } from '@qrlhf/core';
import { GateNetwork, QuantileRewardModel, encodePair, keptGateWeight, loadHeads, saveHeads, type QuantileHeads } from '@qrlhf/qrm';
import { charTokenizer, gateF64, tinyLlama, toF64 } from './reference.js';

const M = 3, K = 5, d = 16;
const taus = Float32Array.from({ length: K }, (_, k) => (k + 1) / (K + 1));
const attributes = ['helpfulness', 'verbosity', 'harmlessness'];

function randomHeads(rng: Rng): QuantileHeads {
  const weight = Float32Array.from({ length: M * K * d }, () => 0.3 * rng.normal());
  // biases increasing in k so most rows are sorted already, some cross (exercising the sort)
  const bias = Float32Array.from({ length: M * K }, (_, i) => 0.1 * (i % K) + 0.05 * rng.normal());
  return { weight, bias, taus, attributes, d, labelMin: Float32Array.from([1, 0, -2]), labelMax: Float32Array.from([5, 100, 2]) };
}

function makeModel(seed: number): QuantileRewardModel {
  const rng = new Rng(seed);
  const gate = GateNetwork.create({ inputDim: d, numAttributes: M, hiddenSize: 8 }, rng);
  return new QuantileRewardModel({ heads: randomHeads(rng), gate, verbosity: 'verbosity', debiasPenalties: [0.2, 1, 0.05] });
}

/** The whole scoring rule in float64, written out from SPEC §4. */
async function scoreF64(model: QuantileRewardModel, pf: Float32Array, rf: Float32Array, i: number): Promise<{ q: number[]; g: number[]; attr: number[][] }> {
  const h = model.heads;
  const raw: number[][] = [];
  for (let m = 0; m < M; m++) {
    const row: number[] = [];
    for (let k = 0; k < K; k++) {
      let s = h.bias[m * K + k]!;
      for (let j = 0; j < d; j++) s += h.weight[(m * K + k) * d + j]! * rf[i * d + j]!;
      row.push(s);
    }
    raw.push(row.sort((a, b) => a - b)); // heads' quantiles, rearranged
  }
  const v = 1;
  const attr = raw.map((row, m) => row.map((x, k) => x - model.debiasPenalties[m]! * raw[v]![k]!).sort((a, b) => a - b));
  const g = gateF64(toF64(await model.gate.toTensors()), pf.subarray(i * d, (i + 1) * d), 2 + 1 + 1, 10);
  const q = Array.from({ length: K }, (_, k) => attr.reduce((s, row, m) => s + g[m]! * row[k]!, 0)).sort((a, b) => a - b);
  return { q, g, attr };
}

test.serial('scoreFeatures equals the float64 pipeline: heads, rearrangement, debiasing, gate, eq. 3', async (t) => {
  const model = makeModel(1);
  const rng = new Rng(2);
  const n = 7;
  const pf = Float32Array.from({ length: n * d }, () => rng.normal());
  const rf = Float32Array.from({ length: n * d }, () => rng.normal());
  const scores = await model.scoreFeatures(pf, rf, n);
  t.is(scores.length, n);
  for (const [i, s] of scores.entries()) {
    const ref = await scoreF64(model, pf, rf, i);
    for (let k = 0; k < K; k++) t.true(Math.abs(s.quantiles[k]! - ref.q[k]!) < 1e-5, `row ${i} level ${k}`);
    for (let k = 1; k < K; k++) t.true(s.quantiles[k]! >= s.quantiles[k - 1]!);
    t.true(Math.abs(s.expectation - ref.q.reduce((a, b) => a + b, 0) / K) < 1e-5);
    for (let m = 0; m < M; m++) {
      t.true(Math.abs(s.gate[m]! - ref.g[m]!) < 1e-5);
      for (let k = 0; k < K; k++) t.true(Math.abs(s.attributeQuantiles[m * K + k]! - ref.attr[m]![k]!) < 1e-5);
    }
    // verbosity is fully removed from itself
    for (let k = 0; k < K; k++) t.is(s.attributeQuantiles[K + k], 0);
  }
  model.dispose();
});

test.serial('save writes the contract layout, load gives back the same scores; bad folders are clear errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-qrm-'));
  const model = makeModel(3);
  model.mixture = 'mixture';
  const out = join(dir, 'qrm');
  await model.save(out);
  t.deepEqual(readdirSync(out).sort(), ['gate.safetensors', 'heads.safetensors', 'qrm.json']);
  t.deepEqual(readdirSync(dir), ['qrm']); // no temporary left behind
  const { tensors } = readSafetensors(join(out, 'heads.safetensors'));
  t.deepEqual(Object.keys(tensors).sort(), ['bias', 'taus', 'weight']);
  t.deepEqual(tensors['weight']!.shape, [M, K, d]);
  t.deepEqual(tensors['bias']!.shape, [M, K]);
  t.deepEqual(tensors['taus']!.shape, [K]);
  for (const k of ['weight', 'bias', 'taus']) t.is(tensors[k]!.dtype, 'F32');
  const again = await QuantileRewardModel.load(out);
  t.is(again.mixture, 'mixture');
  t.deepEqual(again.attributes, attributes);
  t.deepEqual(again.labelScaling, { helpfulness: { min: 1, max: 5 }, verbosity: { min: 0, max: 100 }, harmlessness: { min: -2, max: 2 } });
  const rng = new Rng(4);
  const pf = Float32Array.from({ length: 3 * d }, () => rng.normal());
  const rf = Float32Array.from({ length: 3 * d }, () => rng.normal());
  t.deepEqual(await again.scoreFeatures(pf, rf, 3), await model.scoreFeatures(pf, rf, 3));
  // saving over an existing folder replaces the model's files and keeps the others (e.g. a metrics log)
  writeFileSync(join(out, 'gate-metrics.jsonl'), '{}\n');
  await again.save(out);
  t.deepEqual(readdirSync(dir), ['qrm']);
  t.deepEqual(readdirSync(out).sort(), ['gate-metrics.jsonl', 'gate.safetensors', 'heads.safetensors', 'qrm.json']);
  t.deepEqual(await (await QuantileRewardModel.load(out)).scoreFeatures(pf, rf, 3), await model.scoreFeatures(pf, rf, 3));
  await t.throwsAsync(QuantileRewardModel.load(dir), { instanceOf: QrlhfError, message: /not a QRM folder \(no qrm\.json\)/ });
  // heads files alone round-trip too
  saveHeads(join(dir, 'h.safetensors'), model.heads);
  const h = loadHeads(join(dir, 'h.safetensors'));
  t.deepEqual(Array.from(h.weight), Array.from(model.heads.weight));
  t.deepEqual(h.attributes, attributes);
  await t.throwsAsync(() => model.scoreFeatures(pf, rf, 2), { instanceOf: QrlhfError, message: /expected prompt and response features of 2 x 16/ });
  model.dispose();
  again.dispose();
});

test.serial('score(pairs) runs the backbone: same as scoreFeatures on single-pass features', async (t) => {
  const model = makeModel(5);
  const b = { model: LlamaModel.random(tinyLlama, 8), tokenizer: charTokenizer() };
  model.setBackbone(b);
  const pairs = [
    { prompt: '\n\nHuman: hi?\n\nAssistant:', response: ' hello there.' },
    { prompt: '\n\nHuman: tell me a joke.\n\nAssistant:', response: ' no.' },
  ];
  const scores = await model.score(pairs);
  for (const [i, p] of pairs.entries()) {
    const e = encodePair(b.tokenizer, p.prompt, p.response, 1000);
    const h = tf.tidy(() => b.model.hidden(tf.tensor2d([e.ids], [1, e.ids.length], 'int32')));
    const data = h.dataSync() as Float32Array;
    h.dispose();
    const rf = data.slice((e.ids.length - 1) * d, e.ids.length * d);
    const pf = data.slice(e.promptEnd * d, (e.promptEnd + 1) * d);
    const [ref] = await model.scoreFeatures(pf, rf, 1);
    for (let k = 0; k < K; k++) t.true(Math.abs(scores[i]!.quantiles[k]! - ref!.quantiles[k]!) < 1e-4);
  }
  // without a backbone recorded or set, score() says what is missing
  const bare = makeModel(6);
  await t.throwsAsync(bare.score(pairs), { instanceOf: QrlhfError, message: /no backbone is recorded/ });
  t.false(existsSync('qrm.json'));
  model.dispose();
  bare.dispose();
  b.model.dispose();
});

test.serial("normalise 'kept-weight': divides by the gate weight on attributes whose debiased quantiles are not all 0 (p = 1 alone does not zero)", async (t) => {
  const base = makeModel(5);
  // helpfulness never met the Spearman threshold (p = 1) but keeps Q_h − Q_v ≠ 0; verbosity is zeroed
  const model = new QuantileRewardModel({ heads: base.heads, gate: base.gate, verbosity: 'verbosity', debiasPenalties: [1, 1, 0.05], normalise: 'kept-weight' });
  const rng = new Rng(6);
  const n = 5;
  const pf = Float32Array.from({ length: n * d }, () => rng.normal());
  const rf = Float32Array.from({ length: n * d }, () => rng.normal());
  const scores = await model.scoreFeatures(pf, rf, n);
  model.normalise = 'none';
  const plain = await model.scoreFeatures(pf, rf, n);
  for (const [i, s] of scores.entries()) {
    const ref = await scoreF64(model, pf, rf, i);
    const kept = ref.g[0]! + ref.g[2]!; // helpfulness and harmlessness; verbosity (m = 1) is identically 0
    for (let k = 0; k < K; k++) t.true(Math.abs(s.quantiles[k]! - ref.q[k]! / kept) < 1e-5, `row ${i} level ${k}`);
    t.true(Math.abs(s.expectation - ref.q.reduce((a, b) => a + b, 0) / K / kept) < 1e-5);
    // the old rule (keep only p < 1) would have divided by g_harmlessness alone: a different reward
    t.true(Math.abs(s.expectation - ref.q.reduce((a, b) => a + b, 0) / K / ref.g[2]!) > 1e-3);
    for (let k = 0; k < K; k++) t.true(Math.abs(plain[i]!.quantiles[k]! - ref.q[k]!) < 1e-5);
  }
  t.is(keptGateWeight([0, 0, 1, 2], [0.3, 0.7], 2, 2), 0.7);
  t.is(keptGateWeight([0, 0, 0, 0], [0.3, 0.7], 2, 2), 0);
  // recorded in qrm.json and read back
  model.normalise = 'kept-weight';
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-qrm-norm-'));
  await model.save(join(dir, 'q'));
  t.is(JSON.parse(readFileSync(join(dir, 'q', 'qrm.json'), 'utf8')).normalise, 'kept-weight');
  t.throws(() => new QuantileRewardModel({ heads: base.heads, gate: base.gate, verbosity: null, debiasPenalties: [0, 0, 0], normalise: 'beta' as never }), { message: /normalise must be one of none, kept-weight/ });
  base.dispose();
});
