/**
 * The released QRM layout in and out: the Hugging Face folders the QRM authors published
 * (nicolinho/QRM-Llama3.1-8B, -v2, QRM-Llama3-8B), whose only public reader is RewardBench's
 * `rewardbench/models/qrm.py`. A folder holds config.json (the Llama backbone's keys plus
 * `num_objectives` M, `num_quantiles` K, `gating_temperature` T (10 when absent; 5 in
 * QRM-Llama3.1-8B), `gating_hidden_dim` H (1024), `gating_n_hidden` L (3)) and the weights
 * (model.safetensors or shards listed in model.safetensors.index.json):
 *
 *   model.*                                the backbone (a LlamaModel; no lm_head)
 *   regression_layer.weight    [M·K, d]    no bias; row m·K + k is objective m at level k
 *   reward_transform_matrix    [M, M]      identity in the release
 *   gating.layers.{3i}.weight  [H, in]     Linear without bias, i < L (then ReLU at 3i + 1)
 *   gating.layers.{3i+2}.*     [H]         BatchNorm1d: weight, bias, running_mean, running_var
 *   gating.layers.{3L}.weight, .bias       [M, H], [M]
 *   gating.logit_scale         [1]
 *
 * Scoring one sequence (x: final-norm hidden state at the last token; p: at the gate position,
 * the start of the LAST occurrence of the token pattern of "<|eot_id|><|start_header_id|>assistant
 * <|end_header_id|>\n\n", i.e. the end of the last user turn in the Llama-3 chat template):
 *   r_{m,k} = W_{m·K+k} · x
 *   a_{j,k} = Σ_m r_{m,k} R_{m,j}                    (R = reward_transform_matrix)
 *   g       = logit_scale · softmax(gate(p) / T)      (BatchNorm in eval mode: running statistics)
 *   reward_quantiles_k = Σ_j g_j a_{j,k}             score = Σ_j g_j · mean_k a_{j,k}
 * Levels: tau_k = (k + 1) / (K + 1) (torch.linspace(0, 1, K + 2)[1:-1]).
 * RewardBench computes reward_quantiles as a [B, M, M] tensor times a [B, M, K] one: it runs only
 * when M = K (19 and 19 in the release). qrlhf computes the same sum for any M and K.
 *
 * Reading (`importReleasedQrm`): R folds into the heads (weight'_{j,k} = Σ_m R_{m,j} W_{m,k}, the
 * same linear map, so the attribute quantiles qrlhf reports are RewardBench's a_{j,k}), the heads
 * get zero bias, the gate becomes a 'batchnorm' GateNetwork with beta = logit_scale, and the folder
 * itself is the backbone, and `rearrange` is off (the attribute quantiles stay in level order, unsorted,
 * as the released code leaves them). qrlhf returns the K mixed quantiles sorted (its contract:
 * non-decreasing): RewardBench's reward_quantiles in ascending order; the expectation is its score.
 *
 * Writing (`exportReleasedQrm`): the heads go to regression_layer, the verbosity debiasing
 * Q'_j = Q_j − p_j Q_v to reward_transform_matrix (R_{m,j} = δ_{mj} − p_j δ_{mv}, ArmoRM's use
 * of it), the gate's tensors under `gating.`. The layout has no room for the rest of what qrlhf
 * can hold, so writing refuses, naming the reason: heads with an intercept (regression_layer has
 * no bias), an 'mlp' gate (its biases sit before the ReLU), mean or max pooling, the 'mixture' rule, a
 * QRM whose prompt feature is not read at a token pattern.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  LlamaModel,
  QrlhfError,
  Tokenizer,
  configFromHf,
  configToHf,
  defineConfig,
  initBackend,
  readSafetensors,
  requireKeys,
  type ConfigOf,
  writeFileAtomic,
  writeSafetensors,
  type RawTensor,
} from '@qrlhf/core';
import { GateNetwork, type F32Tensor } from './gate.js';
import type { Backbone } from './features.js';
import { QuantileRewardModel } from './model.js';
import type { QuantileHeads } from './quantile/index.js';

/** tokenizer.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") in Llama 3's vocabulary (RewardBench's token_pattern). */
export const LLAMA3_GATE_PATTERN: readonly number[] = Object.freeze([128009, 128006, 78191, 128007, 271]);

/** The config.json key under which qrlhf writes the gate's token pattern (RewardBench hard-codes Llama 3's). */
export const GATE_PATTERN_KEY = 'gating_token_pattern';

type Json = Record<string, unknown>;

function readJson(path: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new QrlhfError(`${path}: not readable JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new QrlhfError(`${path}: expected a JSON object`);
  return v as Json;
}

function posInt(cfg: Json, key: string, path: string, dflt?: number): number {
  const v = cfg[key] ?? dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < (key === 'gating_n_hidden' ? 0 : 1)) {
    throw new QrlhfError(`${path}: "${key}" is ${JSON.stringify(cfg[key])}, expected a ${key === 'gating_n_hidden' ? 'non-negative' : 'positive'} integer`);
  }
  return v;
}

/** True when the folder's config.json describes a released-layout QRM (it has num_quantiles). */
export function isReleasedQrmFolder(dir: string): boolean {
  const p = join(dir, 'config.json');
  if (!existsSync(p)) return false;
  try {
    return (JSON.parse(readFileSync(p, 'utf8')) as Json)['num_quantiles'] !== undefined;
  } catch {
    return false;
  }
}

/** Where each tensor of a folder lives: model.safetensors, or the shards of model.safetensors.index.json. */
function tensorFiles(dir: string): Map<string, string[]> {
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return new Map([[single, []]]);
  const index = join(dir, 'model.safetensors.index.json');
  if (!existsSync(index)) throw new QrlhfError(`${dir}: no model.safetensors or model.safetensors.index.json`);
  const map = readJson(index)['weight_map'];
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new QrlhfError(`${index}: "weight_map" is missing`);
  const out = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(map as Json)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard.includes('..')) {
      throw new QrlhfError(`${index}: "weight_map"."${name}" is ${JSON.stringify(shard)}, expected a shard file name`);
    }
    const path = join(dir, shard);
    if (!out.has(path)) out.set(path, []);
    out.get(path)!.push(name);
  }
  for (const path of out.keys()) if (!existsSync(path)) throw new QrlhfError(`${index}: shard "${basename(path)}" does not exist`);
  return out;
}

/** The tensors of a folder whose names pass `keep`, each with the file it came from. */
function readFolderTensors(dir: string, keep: (name: string) => boolean): Map<string, RawTensor & { file: string }> {
  const out = new Map<string, RawTensor & { file: string }>();
  for (const file of tensorFiles(dir).keys()) {
    for (const [name, t] of Object.entries(readSafetensors(file).tensors)) if (keep(name)) out.set(name, { ...t, file });
  }
  return out;
}

/** The settings of a released QRM folder, read from its config.json. */
export interface ReleasedQrmConfig {
  hiddenSize: number;
  numObjectives: number;
  numQuantiles: number;
  temperature: number;
  gatingHiddenDim: number;
  gatingNHidden: number;
  gatePattern: number[];
  attributes: string[];
  taus: number[];
}

export function readReleasedConfig(dir: string): ReleasedQrmConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new QrlhfError(`${dir}: no config.json (not a Hugging Face reward-model folder)`);
  const cfg = readJson(path);
  if (cfg['num_quantiles'] === undefined) throw new QrlhfError(`${path}: "num_quantiles" is missing (not a released-layout QRM folder)`);
  const hiddenSize = posInt(cfg, 'hidden_size', path);
  const numObjectives = posInt(cfg, 'num_objectives', path, 19); // RewardBench's default
  const numQuantiles = posInt(cfg, 'num_quantiles', path);
  const t = cfg['gating_temperature'] ?? 10;
  if (typeof t !== 'number' || !(t > 0) || !Number.isFinite(t)) throw new QrlhfError(`${path}: "gating_temperature" is ${JSON.stringify(t)}, expected a number > 0`);
  let gatePattern: number[];
  const pat = cfg[GATE_PATTERN_KEY];
  const vocab = typeof cfg['vocab_size'] === 'number' ? (cfg['vocab_size'] as number) : 0;
  if (pat !== undefined) {
    if (!Array.isArray(pat) || pat.length === 0 || !pat.every((x) => Number.isInteger(x) && x >= 0 && x < vocab)) {
      throw new QrlhfError(`${path}: "${GATE_PATTERN_KEY}" must be a non-empty list of token ids below vocab_size ${vocab}`);
    }
    gatePattern = pat as number[];
  } else if (vocab >= 128256) {
    gatePattern = [...LLAMA3_GATE_PATTERN];
  } else {
    throw new QrlhfError(
      `${path}: "${GATE_PATTERN_KEY}" is missing and the vocabulary (${vocab}) is not Llama 3's, so the gate's token pattern is unknown (give the ids of the end-of-user-turn + assistant-header tokens)`,
    );
  }
  let attributes = Array.from({ length: numObjectives }, (_, m) => `objective_${m}`);
  const names = cfg['qrlhf_attributes'];
  if (names !== undefined) {
    if (!Array.isArray(names) || names.length !== numObjectives || !names.every((x) => typeof x === 'string')) {
      throw new QrlhfError(`${path}: "qrlhf_attributes" must be a list of ${numObjectives} names`);
    }
    attributes = names as string[];
  }
  let taus = Array.from({ length: numQuantiles }, (_, k) => (k + 1) / (numQuantiles + 1));
  const ts = cfg['qrlhf_taus'];
  if (ts !== undefined) {
    if (!Array.isArray(ts) || ts.length !== numQuantiles || !ts.every((x, k) => typeof x === 'number' && x > 0 && x < 1 && (k === 0 || x > (ts[k - 1] as number)))) {
      throw new QrlhfError(`${path}: "qrlhf_taus" must be ${numQuantiles} levels increasing strictly inside (0, 1)`);
    }
    taus = ts as number[];
  }
  return {
    hiddenSize,
    numObjectives,
    numQuantiles,
    temperature: t,
    gatingHiddenDim: posInt(cfg, 'gating_hidden_dim', path, 1024),
    gatingNHidden: posInt(cfg, 'gating_n_hidden', path, 3),
    gatePattern,
    attributes,
    taus,
  };
}

function need(tensors: Map<string, RawTensor & { file: string }>, dir: string, name: string, shape: number[]): Float32Array {
  const t = tensors.get(name);
  if (!t) throw new QrlhfError(`${dir}: tensor "${name}" is missing (expected shape [${shape.join(', ')}] from config.json)`);
  if (t.shape.length !== shape.length || t.shape.some((s, i) => s !== shape[i])) {
    throw new QrlhfError(`${t.file}: tensor "${name}" has shape [${t.shape.join(', ')}], expected [${shape.join(', ')}] from config.json`);
  }
  if (!(t.data instanceof Float32Array)) throw new QrlhfError(`${t.file}: tensor "${name}" is ${t.dtype}, expected a floating type`);
  return t.data;
}

/**
 * Reads a released-layout QRM folder as a QuantileRewardModel (see the header for the mapping).
 * Only the head and gate tensors are read here; the backbone is loaded when scoring needs it.
 */
export function importReleasedQrm(dir: string): QuantileRewardModel {
  const root = resolve(dir);
  const c = readReleasedConfig(root);
  const { hiddenSize: d, numObjectives: M, numQuantiles: K, gatingHiddenDim: H, gatingNHidden: L } = c;
  const t = readFolderTensors(root, (n) => n === 'regression_layer.weight' || n === 'reward_transform_matrix' || n.startsWith('gating.') || n === 'regression_layer.bias');
  if (t.has('regression_layer.bias')) throw new QrlhfError(`${t.get('regression_layer.bias')!.file}: tensor "regression_layer.bias" is not part of the released layout (its regression_layer has no bias)`);
  const W = need(t, root, 'regression_layer.weight', [M * K, d]);
  const R = t.has('reward_transform_matrix') ? need(t, root, 'reward_transform_matrix', [M, M]) : null;
  // weight'_{j,k} = Σ_m R_{m,j} W_{m,k} in float64, stored [M, K, d] like qrlhf's heads.
  const weight = new Float32Array(M * K * d);
  const acc = new Float64Array(d);
  for (let j = 0; j < M; j++) {
    for (let k = 0; k < K; k++) {
      acc.fill(0);
      for (let m = 0; m < M; m++) {
        const r = R ? R[m * M + j]! : m === j ? 1 : 0;
        if (r === 0) continue;
        const row = (m * K + k) * d;
        for (let i = 0; i < d; i++) acc[i] += r * W[row + i]!;
      }
      weight.set(acc, (j * K + k) * d);
    }
  }
  const heads: QuantileHeads = { weight, bias: new Float32Array(M * K), taus: Float32Array.from(c.taus), attributes: c.attributes, d };
  const gateTensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [name, x] of t) {
    if (!name.startsWith('gating.')) continue;
    if (name.endsWith('.num_batches_tracked')) continue;
    if (!(x.data instanceof Float32Array)) throw new QrlhfError(`${x.file}: tensor "${name}" is ${x.dtype}, expected a floating type`);
    gateTensors[name === 'gating.logit_scale' ? 'beta' : name.slice('gating.'.length)] = { shape: x.shape, data: x.data };
  }
  const gate = GateNetwork.fromTensors(
    { inputDim: d, numAttributes: M, hiddenSize: H, numHidden: L, temperature: c.temperature, kind: 'batchnorm' },
    gateTensors,
    `${root} (gating.* tensors; logit_scale read as beta)`,
  );
  return new QuantileRewardModel({ heads, gate, verbosity: null, debiasPenalties: new Array<number>(M).fill(0), backbone: root, pooling: 'last', gatePattern: c.gatePattern, rearrange: false, features: null });
}

/**
 * The backbone of a reward-model folder (its `model.*` tensors; the folder has no lm_head, so the
 * embedding stands in for it: only hidden states are read from this model) and its tokenizer.
 */
export async function loadRewardBackbone(dir: string, tokenizerPath?: string | null): Promise<Backbone> {
  const cfgPath = join(dir, 'config.json');
  const config = { ...configFromHf(readJson(cfgPath), cfgPath), tieWordEmbeddings: true };
  const tokPath = tokenizerPath ?? join(dir, 'tokenizer.json');
  if (!existsSync(tokPath)) throw new QrlhfError(`${dir}: no tokenizer.json; give a tokenizer (--tokenizer)`);
  const tokenizer = await Tokenizer.fromFile(tokPath, { bosTokenId: config.bosTokenId, eosTokenId: config.eosTokenId, padTokenId: config.padTokenId });
  const raw = readFolderTensors(dir, (n) => n.startsWith('model.') && !n.endsWith('.rotary_emb.inv_freq'));
  const tensors: Record<string, tf.Tensor> = {};
  for (const [name, x] of raw) tensors[name] = tf.tensor(x.data as Float32Array, x.shape, 'float32');
  try {
    return { model: LlamaModel.fromTensors(config, tensors), tokenizer };
  } catch (e) {
    for (const x of Object.values(tensors)) x.dispose();
    throw e instanceof QrlhfError ? new QrlhfError(`${dir}: ${e.message}`) : e;
  }
}

export interface ExportReleasedOptions {
  /** The backbone's weights and config (default: the QRM's own backbone, loaded). */
  backbone?: Backbone;
  /** Tensor dtype of the backbone on file (F32 default; the release is BF16). */
  dtype?: 'F32' | 'F16' | 'BF16';
}

/** Why a QRM cannot be written in the released layout exactly, or null when it can. */
export function releasedLayoutProblem(qrm: QuantileRewardModel): string | null {
  if (qrm.heads.bias.some((b) => b !== 0)) return 'its heads have an intercept (bias), and the layout\'s regression_layer has none';
  if (qrm.gate.config.kind !== 'batchnorm') return 'its gate is an "mlp" gate (Linear with bias → ReLU), and the layout\'s gate is Linear without bias → ReLU → BatchNorm1d';
  if (qrm.pooling !== 'last') return `its response feature is "${qrm.pooling}"-pooled, and the layout reads the last token`;
  if (qrm.mixture !== 'eq3') return `it mixes by "${qrm.mixture}", and the layout by eq. 3`;
  if (qrm.rearrange) return 'it sorts each attribute\'s quantiles before mixing, and the layout\'s code does not (set rearrange: false)';
  if (!qrm.gatePattern) return 'its prompt feature is read at the prompt\'s last token, and the layout reads it at a token pattern';
  return null;
}

/**
 * Writes a QRM as a released-layout folder (config.json, model.safetensors with the backbone, the
 * heads and the gate, tokenizer.json, tokenizer_config.json), built under a temporary name and renamed into place.
 */
export async function exportReleasedQrm(qrm: QuantileRewardModel, dir: string, opts: ExportReleasedOptions = {}): Promise<void> {
  const problem = releasedLayoutProblem(qrm);
  if (problem) throw new QrlhfError(`${dir}: this QRM cannot be written in the released layout: ${problem}`);
  const target = resolve(dir);
  if (existsSync(target) && (!statSync(target).isDirectory() || readdirSync(target).length > 0)) {
    throw new QrlhfError(`${target}: exists and is not an empty folder`);
  }
  const b = opts.backbone ?? (await qrm.loadBackbone());
  const { d, attributes, taus } = qrm.heads;
  const M = attributes.length;
  const K = taus.length;
  if (b.model.config.hiddenSize !== d) throw new QrlhfError(`${target}: the backbone's hidden size is ${b.model.config.hiddenSize}, the heads expect ${d}`);
  const tensors: Record<string, { dtype: 'F32' | 'F16' | 'BF16' | 'I64'; shape: number[]; data: Float32Array | Int32Array }> = {};
  for (const [name, v] of Object.entries(b.model.weights)) {
    if (!name.startsWith('model.')) continue; // no lm_head in a reward model
    tensors[name] = { dtype: opts.dtype ?? 'F32', shape: [...v.shape], data: (await v.data()) as Float32Array };
  }
  tensors['regression_layer.weight'] = { dtype: 'F32', shape: [M * K, d], data: qrm.heads.weight };
  const R = new Float32Array(M * M);
  const v = qrm.verbosity === null ? -1 : attributes.indexOf(qrm.verbosity);
  for (let j = 0; j < M; j++) {
    R[j * M + j] = 1;
    if (v >= 0) R[v * M + j] -= qrm.debiasPenalties[j]!;
  }
  tensors['reward_transform_matrix'] = { dtype: 'F32', shape: [M, M], data: R };
  const g: Record<string, F32Tensor> = await qrm.gate.toTensors();
  for (const [name, x] of Object.entries(g)) tensors[name === 'beta' ? 'gating.logit_scale' : `gating.${name}`] = x;
  for (let i = 0; i < qrm.gate.config.numHidden; i++) tensors[`gating.layers.${3 * i + 2}.num_batches_tracked`] = { dtype: 'I64', shape: [], data: new Int32Array(1) };
  const cfg: Json = {
    ...configToHf(b.model.config),
    architectures: ['LlamaForRewardModelWithGating'],
    tie_word_embeddings: false,
    num_labels: 1,
    num_objectives: M,
    num_quantiles: K,
    gating_temperature: qrm.gate.config.temperature,
    gating_hidden_dim: qrm.gate.config.hiddenSize,
    gating_n_hidden: qrm.gate.config.numHidden,
    [GATE_PATTERN_KEY]: qrm.gatePattern,
    qrlhf_attributes: attributes,
    qrlhf_taus: Array.from(taus),
  };
  const tmp = `${target}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    writeSafetensors(join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    writeFileAtomic(join(tmp, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    writeFileAtomic(join(tmp, 'tokenizer.json'), JSON.stringify(b.tokenizer.toJSON()));
    writeFileAtomic(join(tmp, 'tokenizer_config.json'), JSON.stringify(b.tokenizer.toConfigJSON(), null, 2) + '\n');
    if (existsSync(target)) rmSync(target, { recursive: true });
    renameSync(tmp, target);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// The stages behind `qrlhf qrm import` and `qrlhf qrm export`

export const QRM_IMPORT_SCHEMA = defineConfig({
  from: { type: 'string', default: null, nullable: true, path: true, doc: 'released-layout QRM folder (config.json with num_quantiles, model.safetensors or shards) (required)' },
  out: { type: 'string', default: null, nullable: true, path: true, doc: 'qrlhf QRM folder to write: qrm.json, heads.safetensors, gate.safetensors; the backbone stays the source folder (required)' },
});
export type QrmImportConfig = ConfigOf<typeof QRM_IMPORT_SCHEMA>;

/** Reads a released-layout folder and writes it as a qrlhf QRM folder (same scores). */
export async function runQrmImport(config: QrmImportConfig): Promise<void> {
  const cfg = requireKeys(config, ['from', 'out'], 'qrm import');
  if (!existsSync(cfg.from)) throw new QrlhfError(`--from ${cfg.from}: no such folder`);
  await initBackend('auto', { quiet: true });
  const qrm = importReleasedQrm(cfg.from);
  try {
    await qrm.save(cfg.out);
  } finally {
    qrm.dispose();
  }
  const g = qrm.gate.config;
  process.stderr.write(
    `qrlhf: wrote ${cfg.out} (${qrm.attributes.length} objectives, ${qrm.taus.length} quantiles, gate ${g.numHidden}×${g.hiddenSize} with BatchNorm, T = ${g.temperature}; backbone ${qrm.backbonePath})\n`,
  );
}

export const QRM_EXPORT_SCHEMA = defineConfig({
  qrm: { type: 'string', default: null, nullable: true, path: true, doc: 'qrlhf QRM folder (qrm.json) to write out (required)' },
  format: { type: 'string', default: 'hf', choices: ['hf'], doc: "output layout: hf = the released QRM's Hugging Face folder (RewardBench's qrm.py reads it when num_objectives = num_quantiles)" },
  out: { type: 'string', default: null, nullable: true, path: true, doc: 'folder to write (must not exist or be empty) (required)' },
  dtype: { type: 'string', default: 'F32', choices: ['F32', 'F16', 'BF16'], doc: "the backbone's weight type on file (the heads and the gate stay F32)" },
});
export type QrmExportConfig = ConfigOf<typeof QRM_EXPORT_SCHEMA>;

/** Writes a qrlhf QRM (and its backbone) in the released layout; refuses what that layout cannot hold. */
export async function runQrmExport(config: QrmExportConfig): Promise<void> {
  const cfg = requireKeys(config, ['qrm', 'out'], 'qrm export');
  await initBackend('auto', { quiet: true });
  const qrm = await QuantileRewardModel.load(cfg.qrm);
  try {
    await exportReleasedQrm(qrm, cfg.out, { dtype: cfg.dtype });
  } finally {
    qrm.dispose();
  }
  process.stderr.write(`qrlhf: wrote ${cfg.out} (${qrm.attributes.length} objectives × ${qrm.taus.length} quantiles, released QRM layout)\n`);
}
