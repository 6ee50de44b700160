/**
 * The shape of a Llama model (SPEC §2), read from and written to a Hugging Face `config.json`.
 */
import { QrlhfError } from '../errors.js';

export interface LlamaConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** Key/value heads; fewer than numHeads is grouped-query attention. */
  numKvHeads: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** The LM head reuses the token embedding. */
  tieWordEmbeddings: boolean;
  maxPositionEmbeddings: number;
  bosTokenId: number;
  /** The first end-of-sequence id (config.json's eos_token_id, or the first of its list). */
  eosTokenId: number;
  /** Every end-of-sequence id when config.json gives a list (Llama 3.x Instruct: end_of_text,
   *  eom_id, eot_id); generation stops at any of them. */
  eosTokenIds?: number[];
  padTokenId?: number;
  /** Per-head width when config.json says it (head_dim); default hiddenSize / numHeads. */
  headDim?: number;
  /** Rotary scaling (config.json's rope_scaling); absent: none. See rope.ts. */
  ropeScaling?: RopeScaling;
}

/**
 * The rotary scalings implemented (rope.ts has the formulas): `linear` divides every frequency by
 * factor (positions interpolated); `llama3` (Llama 3.1 / 3.2) divides low frequencies (wavelength
 * above original/lowFreqFactor) by factor, keeps high ones (below original/highFreqFactor), and
 * blends in between.
 */
export type RopeScaling =
  | { ropeType: 'linear'; factor: number }
  | { ropeType: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number };

/** Per-head width. */
export function headDim(c: LlamaConfig): number {
  return c.headDim ?? c.hiddenSize / c.numHeads;
}

/**
 * The ids generation stops at: the tokenizer's eos when given (what the stages have always used),
 * plus every id of config.json's eos_token_id when it is a list; without a tokenizer id, the
 * config's eos ids.
 */
export function eosIds(c: LlamaConfig, tokenizerEos?: number): number[] {
  if (tokenizerEos === undefined) return c.eosTokenIds ?? [c.eosTokenId];
  return [...new Set([tokenizerEos, ...(c.eosTokenIds ?? [])])];
}

type Json = Record<string, unknown>;

function where(file: string | undefined, key: string): string {
  return `${file ?? 'config.json'}: "${key}"`;
}

function intField(o: Json, key: string, file: string | undefined, dflt?: number): number {
  const v = o[key];
  if (v === undefined || v === null) {
    if (dflt !== undefined) return dflt;
    throw new QrlhfError(`${where(file, key)} is missing (expected a positive integer)`);
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new QrlhfError(`${where(file, key)}: expected a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function posNumber(o: Json, key: string, file: string | undefined, dflt: number): number {
  const v = o[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new QrlhfError(`${where(file, key)}: expected a positive number, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Token ids may be absent, an integer, or (eos in newer configs) a non-empty list; for bos and pad the first of a list is used. */
function tokenIds(o: Json, key: string, file: string | undefined): number[] | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  const list = Array.isArray(v) ? v : [v];
  if (list.length === 0 || list.some((x) => typeof x !== 'number' || !Number.isInteger(x) || x < 0)) {
    throw new QrlhfError(`${where(file, key)}: expected a non-negative integer token id or a non-empty list of them, got ${JSON.stringify(v)}`);
  }
  return list as number[];
}

/** rope_scaling: null / absent, or one of the types of RopeScaling; others are refused by name. */
function ropeScalingField(o: Json, file: string | undefined): RopeScaling | undefined {
  const rs = o['rope_scaling'];
  if (rs === undefined || rs === null) return undefined;
  const at = (k: string) => `${file ?? 'config.json'}: "rope_scaling.${k}"`;
  if (typeof rs !== 'object' || Array.isArray(rs)) {
    throw new QrlhfError(`${where(file, 'rope_scaling')}: expected null or an object with "rope_type", got ${JSON.stringify(rs)}`);
  }
  const r = rs as Json;
  // transformers before 4.43 wrote the type under "type".
  const typeKey = r['rope_type'] !== undefined ? 'rope_type' : 'type';
  const type = r[typeKey];
  const num = (k: string, check: (x: number) => boolean, expected: string): number => {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) {
      throw new QrlhfError(`${at(k)} ${v === undefined ? 'is missing' : `is ${JSON.stringify(v)}`} (expected ${expected} for rope_type "${String(type)}")`);
    }
    return v;
  };
  if (type === 'default') return undefined;
  if (type === 'linear') return { ropeType: 'linear', factor: num('factor', (x) => x >= 1, 'a number >= 1') };
  if (type === 'llama3') {
    const low = num('low_freq_factor', (x) => x > 0, 'a positive number');
    const s: RopeScaling = {
      ropeType: 'llama3',
      factor: num('factor', (x) => x >= 1, 'a number >= 1'),
      lowFreqFactor: low,
      highFreqFactor: num('high_freq_factor', (x) => x > low, `a number above low_freq_factor (${low})`),
      originalMaxPositionEmbeddings: num('original_max_position_embeddings', (x) => Number.isInteger(x) && x > 0, 'a positive integer'),
    };
    return s;
  }
  const why = type === 'dynamic'
    ? ' (dynamic NTK scaling changes the frequencies with the length of each sequence, so cached keys would disagree with a fresh forward; it is not implemented)'
    : '';
  throw new QrlhfError(`${at(typeKey)} is ${JSON.stringify(type)}: rotary scaling of this type is not supported${why} (supported: "llama3", "linear", "default")`);
}

/**
 * Reads a Hugging Face Llama `config.json` object. Missing optional keys get Hugging Face's
 * defaults (num_key_value_heads = num_attention_heads, rope_theta 10000, rms_norm_eps 1e-6,
 * tie_word_embeddings false, bos 1, eos 2). Throws QrlhfError naming the file and the key.
 */
export function configFromHf(json: unknown, file?: string): LlamaConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new QrlhfError(`${file ?? 'config.json'}: expected a JSON object`);
  }
  const o = json as Json;
  const mt = o['model_type'];
  if (mt !== undefined && mt !== 'llama' && mt !== 'mistral') {
    throw new QrlhfError(`${where(file, 'model_type')}: expected "llama", got ${JSON.stringify(mt)}`);
  }
  const numHeads = intField(o, 'num_attention_heads', file);
  const tie = o['tie_word_embeddings'];
  if (tie !== undefined && tie !== null && typeof tie !== 'boolean') {
    throw new QrlhfError(`${where(file, 'tie_word_embeddings')}: expected true or false, got ${JSON.stringify(tie)}`);
  }
  const c: LlamaConfig = {
    vocabSize: intField(o, 'vocab_size', file),
    hiddenSize: intField(o, 'hidden_size', file),
    intermediateSize: intField(o, 'intermediate_size', file),
    numLayers: intField(o, 'num_hidden_layers', file),
    numHeads,
    numKvHeads: intField(o, 'num_key_value_heads', file, numHeads),
    rmsNormEps: posNumber(o, 'rms_norm_eps', file, 1e-6),
    ropeTheta: posNumber(o, 'rope_theta', file, 10000),
    tieWordEmbeddings: tie === true,
    maxPositionEmbeddings: intField(o, 'max_position_embeddings', file, 2048),
    bosTokenId: tokenIds(o, 'bos_token_id', file)?.[0] ?? 1,
    eosTokenId: 2,
  };
  const eos = tokenIds(o, 'eos_token_id', file);
  if (eos) {
    c.eosTokenId = eos[0]!;
    if (Array.isArray(o['eos_token_id'])) c.eosTokenIds = eos;
  }
  const pad = tokenIds(o, 'pad_token_id', file)?.[0];
  if (pad !== undefined) c.padTokenId = pad;
  if (o['head_dim'] !== undefined && o['head_dim'] !== null) c.headDim = intField(o, 'head_dim', file);
  const scaling = ropeScalingField(o, file);
  if (scaling) c.ropeScaling = scaling;
  // Variants this forward pass does not implement are refused rather than run wrongly.
  for (const key of ['attention_bias', 'mlp_bias']) {
    if (o[key] === true) throw new QrlhfError(`${where(file, key)}: biases in the ${key === 'mlp_bias' ? 'MLP' : 'attention'} projections are not supported (expected false or absent)`);
  }
  const act = o['hidden_act'];
  if (act !== undefined && act !== 'silu') {
    throw new QrlhfError(`${where(file, 'hidden_act')}: expected "silu", got ${JSON.stringify(act)}`);
  }
  validateConfig(c, file);
  return c;
}

/** Checks the relations between fields (divisibility, ids inside the vocabulary). */
export function validateConfig(c: LlamaConfig, file?: string): void {
  const f = file ?? 'config';
  if (c.headDim === undefined && c.hiddenSize % c.numHeads !== 0) {
    throw new QrlhfError(
      `${f}: "hidden_size" (${c.hiddenSize}) must be divisible by "num_attention_heads" (${c.numHeads}) when "head_dim" is not given`,
    );
  }
  if (c.headDim !== undefined && !(Number.isInteger(c.headDim) && c.headDim > 0)) {
    throw new QrlhfError(`${f}: "head_dim" must be a positive integer, got ${c.headDim}`);
  }
  if (headDim(c) % 2 !== 0) {
    throw new QrlhfError(`${f}: the head width (${c.headDim !== undefined ? '"head_dim"' : 'hidden_size/num_attention_heads'} = ${headDim(c)}) must be even for rotary embedding`);
  }
  if (c.numKvHeads > c.numHeads || c.numHeads % c.numKvHeads !== 0) {
    throw new QrlhfError(
      `${f}: "num_attention_heads" (${c.numHeads}) must be a multiple of "num_key_value_heads" (${c.numKvHeads})`,
    );
  }
  for (const [key, id] of [
    ['bos_token_id', c.bosTokenId],
    ['eos_token_id', c.eosTokenId],
    ...(c.eosTokenIds ?? []).map((x) => ['eos_token_id', x] as const),
    ['pad_token_id', c.padTokenId],
  ] as const) {
    if (id !== undefined && id >= c.vocabSize) {
      throw new QrlhfError(`${f}: "${key}" (${id}) must be below "vocab_size" (${c.vocabSize})`);
    }
  }
}

/** The `config.json` content for a model of this shape (what transformers' LlamaConfig writes). */
export function configToHf(c: LlamaConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    intermediate_size: c.intermediateSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    num_key_value_heads: c.numKvHeads,
    hidden_act: 'silu',
    rms_norm_eps: c.rmsNormEps,
    rope_theta: c.ropeTheta,
    rope_scaling: ropeScalingToHf(c.ropeScaling),
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: c.tieWordEmbeddings,
    max_position_embeddings: c.maxPositionEmbeddings,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenIds ?? c.eosTokenId,
    torch_dtype: 'float32',
  };
  if (c.padTokenId !== undefined) out['pad_token_id'] = c.padTokenId;
  if (c.headDim !== undefined) out['head_dim'] = c.headDim;
  return out;
}

function ropeScalingToHf(s: RopeScaling | undefined): Record<string, unknown> | null {
  if (!s) return null;
  if (s.ropeType === 'linear') return { rope_type: 'linear', factor: s.factor };
  return {
    rope_type: 'llama3',
    factor: s.factor,
    low_freq_factor: s.lowFreqFactor,
    high_freq_factor: s.highFreqFactor,
    original_max_position_embeddings: s.originalMaxPositionEmbeddings,
  };
}
