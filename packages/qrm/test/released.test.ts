/**
 * The released QRM layout (nicolinho/QRM-Llama3.1-8B; RewardBench's rewardbench/models/qrm.py):
 * small random folders written here in that layout are scored through qrlhf and compared with a
 * float64 reference of the released code's formulas (backbone forward included), M ≠ K as well as
 * M = K; export → import round-trips; broken folders give one error naming the file and the key.
 */
import test from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError, Rng, configToHf, writeSafetensors, type LlamaConfig, type RawTensor } from '@qrlhf/core';
import { GateNetwork, QuantileRewardModel, exportReleasedQrm, importReleasedQrm } from '@qrlhf/qrm';
import { randomWeights, referenceLogits } from '../../core/test/model-reference.js';
import { charTokenizer, tinyLlama } from './reference.js';

const tok = charTokenizer();
const cfg: LlamaConfig = { ...tinyLlama, vocabSize: 40, tieWordEmbeddings: true };
const d = cfg.hiddenSize;
/** "\n\nA": the start of "\n\nAssistant:" (the char tokenizer's stand-in for Llama 3's eot + assistant header). */
const pattern = tok.encode('\n\nA', { addBos: false });

interface Fixture {
  dir: string;
  M: number;
  K: number;
  H: number;
  L: number;
  T: number;
  f: Record<string, { shape: number[]; data: Float32Array }>;
}

/** Writes a released-layout folder: random backbone, regression layer, transform matrix, BatchNorm gate. */
function writeFolder(seed: number, M: number, K: number, opts: { H?: number; L?: number; T?: number } = {}): Fixture {
  const H = opts.H ?? 8;
  const L = opts.L ?? 2;
  const T = opts.T ?? 5;
  const rng = new Rng(seed);
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-released-'));
  const f: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, v] of Object.entries(randomWeights(cfg, seed))) f[k] = v;
  const rnd = (shape: number[], scale: number, offset = 0) => ({ shape, data: Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => offset + scale * rng.normal()) });
  f['regression_layer.weight'] = rnd([M * K, d], 0.5);
  const R = rnd([M, M], 0.2); // not the identity: the test must see the transform applied
  for (let m = 0; m < M; m++) R.data[m * M + m]! += 1;
  f['reward_transform_matrix'] = R;
  let fin = d;
  for (let i = 0; i < L; i++) {
    f[`gating.layers.${3 * i}.weight`] = rnd([H, fin], 0.6);
    f[`gating.layers.${3 * i + 2}.weight`] = rnd([H], 0.3, 1);
    f[`gating.layers.${3 * i + 2}.bias`] = rnd([H], 0.3);
    f[`gating.layers.${3 * i + 2}.running_mean`] = rnd([H], 0.3, 0.4);
    f[`gating.layers.${3 * i + 2}.running_var`] = { shape: [H], data: Float32Array.from({ length: H }, () => 0.2 + rng.next()) };
    fin = H;
  }
  f[`gating.layers.${3 * L}.weight`] = rnd([M, H], 0.8);
  f[`gating.layers.${3 * L}.bias`] = rnd([M], 0.5);
  f['gating.logit_scale'] = { shape: [1], data: Float32Array.from([1.7]) };
  const tensors: Record<string, RawTensor> = {};
  for (const [k, v] of Object.entries(f)) tensors[k] = { dtype: 'F32', ...v };
  for (let i = 0; i < L; i++) tensors[`gating.layers.${3 * i + 2}.num_batches_tracked`] = { dtype: 'I64', shape: [], data: Int32Array.from([1234]) };
  writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  writeFileSync(
    join(dir, 'config.json'),
    JSON.stringify({
      ...configToHf(cfg),
      architectures: ['LlamaForRewardModelWithGating'],
      num_objectives: M,
      num_quantiles: K,
      gating_temperature: T,
      gating_hidden_dim: H,
      gating_n_hidden: L,
      gating_token_pattern: pattern,
    }),
  );
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.toJSON()));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.toConfigJSON()));
  return { dir, M, K, H, L, T, f };
}

/** The released code's forward in float64 for one token sequence: reward_quantiles [K], score, gate [M]. */
function referenceScore(fx: Fixture, ids: number[]): { quantiles: number[]; score: number; gate: number[] } {
  const { M, K, L, T, f } = fx;
  // final-norm hidden states: the reference forward with an identity LM head
  const eye = new Float64Array(d * d);
  for (let i = 0; i < d; i++) eye[i * d + i] = 1;
  const w = Object.fromEntries(Object.entries(f).filter(([k]) => k.startsWith('model.')));
  const hs = referenceLogits({ ...cfg, vocabSize: d, tieWordEmbeddings: false }, w, [ids], undefined, { 'lm_head.weight': eye })[0]!;
  // gate position: last start of the pattern, found by string search (independent of qrlhf's loop)
  const key = (a: readonly number[]) => a.map((x) => `<${x}>`).join('');
  const at = key(ids).lastIndexOf(key(pattern));
  const gatePos = key(ids).slice(0, at).split('<').length - 1;
  const x = hs[ids.length - 1]!;
  const p = hs[gatePos]!;
  const W = f['regression_layer.weight']!.data;
  const R = f['reward_transform_matrix']!.data;
  const r = Array.from({ length: M }, (_, m) => Array.from({ length: K }, (_, k) => x.reduce((s, v, i) => s + v * W[(m * K + k) * d + i]!, 0)));
  const a = Array.from({ length: M }, (_, j) => Array.from({ length: K }, (_, k) => r.reduce((s, row, m) => s + row[k]! * R[m * M + j]!, 0)));
  let h = p.slice();
  for (let i = 0; i <= L; i++) {
    const Wl = f[`gating.layers.${3 * i}.weight`]!;
    const out = Wl.shape[0]!;
    const b = f[`gating.layers.${3 * i}.bias`];
    let y = Array.from({ length: out }, (_, o) => h.reduce((s, v, j) => s + v * Wl.data[o * h.length + j]!, b ? b.data[o]! : 0));
    if (i < L) {
      const bn = (n: string) => f[`gating.layers.${3 * i + 2}.${n}`]!.data;
      y = y.map((v, o) => ((Math.max(0, v) - bn('running_mean')[o]!) / Math.sqrt(bn('running_var')[o]! + 1e-5)) * bn('weight')[o]! + bn('bias')[o]!);
    }
    h = y;
  }
  const z = h.map((v) => v / T);
  const mx = Math.max(...z);
  const e = z.map((v) => Math.exp(v - mx));
  const sum = e.reduce((s, v) => s + v, 0);
  const g = e.map((v) => (f['gating.logit_scale']!.data[0]! * v) / sum);
  const quantiles = Array.from({ length: K }, (_, k) => g.reduce((s, gj, j) => s + gj * a[j]![k]!, 0));
  const score = g.reduce((s, gj, j) => s + (gj * a[j]!.reduce((t, v) => t + v, 0)) / K, 0);
  return { quantiles, score, gate: g };
}

const dialogues = [
  { prompt: '\n\nHuman: how are you?\n\nAssistant:', response: ' fine, thanks.' },
  { prompt: '\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and now?\n\nAssistant:', response: ' now i rest!' },
  { prompt: '\n\nHuman: a\n\nAssistant:', response: " it's a." },
];

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return a.length === b.length ? m : Infinity;
}

async function checkAgainstReference(t: import('ava').ExecutionContext, fx: Fixture, qrm: QuantileRewardModel): Promise<void> {
  const viaText = await qrm.score(dialogues, { batchSize: 2 });
  const ids = dialogues.map((x) => tok.encode(x.prompt + x.response, { addBos: true }));
  const viaIds = await qrm.scoreTokens(ids.map((i) => ({ ids: i })));
  for (let i = 0; i < dialogues.length; i++) {
    const ref = referenceScore(fx, ids[i]!);
    const sorted = ref.quantiles.slice().sort((a, b) => a - b);
    for (const s of [viaText[i]!, viaIds[i]!]) {
      t.true(maxAbs(s.quantiles, sorted) < 1e-5, `quantiles ${Array.from(s.quantiles)} vs ${sorted}`);
      t.true(Math.abs(s.expectation - ref.score) < 1e-5, `score ${s.expectation} vs ${ref.score}`);
      t.true(maxAbs(s.gate, ref.gate) < 1e-5, `gate ${Array.from(s.gate)} vs ${ref.gate}`);
    }
  }
  // the reference's quantiles are not all equal (the comparison above is not trivially satisfied)
  const r0 = referenceScore(fx, ids[0]!);
  t.true(Math.max(...r0.quantiles) - Math.min(...r0.quantiles) > 1e-3);
}

test.serial('a released-layout QRM scores as the float64 reference of the released code (M ≠ K)', async (t) => {
  const fx = writeFolder(11, 3, 5);
  const qrm = importReleasedQrm(fx.dir);
  t.is(qrm.gate.config.temperature, 5);
  t.is(qrm.gate.config.kind, 'batchnorm');
  t.deepEqual(qrm.gatePattern, pattern);
  t.deepEqual(Array.from(qrm.taus), [1, 2, 3, 4, 5].map((k) => Math.fround(k / 6)));
  await checkAgainstReference(t, fx, qrm);
  qrm.dispose();
});

test.serial('a released-layout QRM scores as the reference with M = K and three gate layers', async (t) => {
  const fx = writeFolder(12, 4, 4, { L: 3, H: 6, T: 10 });
  const qrm = importReleasedQrm(fx.dir);
  await checkAgainstReference(t, fx, qrm);
  qrm.dispose();
});

test.serial('export → import round-trips, and so does the qrlhf folder of an imported QRM', async (t) => {
  const fx = writeFolder(13, 3, 5);
  const qrm = importReleasedQrm(fx.dir);
  const out = join(mkdtempSync(join(tmpdir(), 'qrlhf-released-out-')), 'hf');
  await exportReleasedQrm(qrm, out);
  const cfgOut = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  t.is(cfgOut['num_objectives'], 3);
  t.is(cfgOut['num_quantiles'], 5);
  t.is(cfgOut['gating_temperature'], 5);
  const again = importReleasedQrm(out);
  await checkAgainstReference(t, fx, again);
  const native = join(mkdtempSync(join(tmpdir(), 'qrlhf-released-native-')), 'qrm');
  await qrm.save(native);
  const loaded = await QuantileRewardModel.load(native);
  t.is(loaded.gate.config.kind, 'batchnorm');
  t.false(loaded.rearrange);
  await checkAgainstReference(t, fx, loaded);
  for (const m of [qrm, again, loaded]) m.dispose();
});

test.serial('a qrlhf QRM the layout cannot hold is refused with the reason', async (t) => {
  const fx = writeFolder(14, 3, 5);
  const imported = importReleasedQrm(fx.dir);
  const rng = new Rng(1);
  const own = new QuantileRewardModel({
    heads: { ...imported.heads, bias: Float32Array.from({ length: 15 }, () => 0.1) },
    gate: GateNetwork.create({ inputDim: d, numAttributes: 3, hiddenSize: 8, numHidden: 1 }, rng),
    verbosity: null,
    debiasPenalties: [0, 0, 0],
    backbone: fx.dir,
  });
  const e = await t.throwsAsync(exportReleasedQrm(own, join(fx.dir, 'out')), { instanceOf: QrlhfError });
  t.regex(e!.message, /cannot be written in the released layout: its heads have an intercept/);
  imported.dispose();
  own.dispose();
});

test.serial('broken folders: one error naming the file and the key', async (t) => {
  // a missing BatchNorm statistic
  const a = writeFolder(15, 2, 3, { L: 1 });
  const sub = join(a.dir, 'broken');
  mkdirSync(sub);
  const tensors: Record<string, RawTensor> = {};
  for (const [k, v] of Object.entries(a.f)) if (k !== 'gating.layers.2.running_var') tensors[k] = { dtype: 'F32', ...v };
  writeSafetensors(join(sub, 'model.safetensors'), tensors);
  copyFileSync(join(a.dir, 'config.json'), join(sub, 'config.json'));
  let e = t.throws(() => importReleasedQrm(sub), { instanceOf: QrlhfError });
  t.regex(e!.message, /broken.*tensor "layers\.2\.running_var" is missing/);
  // config.json disagrees with the regression layer
  const cfgPath = join(a.dir, 'config.json');
  const c = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
  writeFileSync(cfgPath, JSON.stringify({ ...c, num_quantiles: 4 }));
  e = t.throws(() => importReleasedQrm(a.dir), { instanceOf: QrlhfError });
  t.regex(e!.message, /model\.safetensors: tensor "regression_layer\.weight" has shape \[6, 16\], expected \[8, 16\] from config\.json/);
  // no token pattern and not Llama 3's vocabulary
  const { gating_token_pattern: _p, ...noPattern } = c;
  writeFileSync(cfgPath, JSON.stringify(noPattern));
  e = t.throws(() => importReleasedQrm(a.dir), { instanceOf: QrlhfError });
  t.regex(e!.message, /config\.json: "gating_token_pattern" is missing/);
});

test.serial('a dialogue without the gate pattern is an error naming the item', async (t) => {
  const fx = writeFolder(16, 2, 3, { L: 1 });
  const qrm = importReleasedQrm(fx.dir);
  const e = await t.throwsAsync(qrm.score([{ prompt: 'User: hi. Bot:', response: ' yes' }]), { instanceOf: QrlhfError });
  t.regex(e!.message, /item 0: the gate's token pattern \[.*\] does not occur/);
  qrm.dispose();
});
