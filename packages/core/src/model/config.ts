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
  eosTokenId: number;
  padTokenId?: number;
}

/** Per-head width. */
export function headDim(c: LlamaConfig): number {
  return c.hiddenSize / c.numHeads;
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

/** Token ids may be absent (default), an integer, or (eos in newer configs) a list: the first is used. */
function tokenId(o: Json, key: string, file: string | undefined, dflt: number | undefined): number | undefined {
  let v = o[key];
  if (Array.isArray(v)) v = v.length > 0 ? v[0] : undefined;
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new QrlhfError(`${where(file, key)}: expected a non-negative integer token id, got ${JSON.stringify(v)}`);
  }
  return v;
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
    bosTokenId: tokenId(o, 'bos_token_id', file, 1)!,
    eosTokenId: tokenId(o, 'eos_token_id', file, 2)!,
  };
  const pad = tokenId(o, 'pad_token_id', file, undefined);
  if (pad !== undefined) c.padTokenId = pad;
  // Variants this forward pass does not implement are refused rather than run wrongly.
  const rs = o['rope_scaling'];
  if (rs !== undefined && rs !== null) {
    throw new QrlhfError(`${where(file, 'rope_scaling')}: rotary scaling is not supported (expected null or absent)`);
  }
  for (const key of ['attention_bias', 'mlp_bias']) {
    if (o[key] === true) throw new QrlhfError(`${where(file, key)}: biases are not supported (expected false)`);
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
  if (c.hiddenSize % c.numHeads !== 0) {
    throw new QrlhfError(
      `${f}: "hidden_size" (${c.hiddenSize}) must be divisible by "num_attention_heads" (${c.numHeads})`,
    );
  }
  if ((c.hiddenSize / c.numHeads) % 2 !== 0) {
    throw new QrlhfError(`${f}: the head width hidden_size/num_attention_heads (${c.hiddenSize / c.numHeads}) must be even for rotary embedding`);
  }
  if (c.numKvHeads > c.numHeads || c.numHeads % c.numKvHeads !== 0) {
    throw new QrlhfError(
      `${f}: "num_attention_heads" (${c.numHeads}) must be a multiple of "num_key_value_heads" (${c.numKvHeads})`,
    );
  }
  for (const [key, id] of [
    ['bos_token_id', c.bosTokenId],
    ['eos_token_id', c.eosTokenId],
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
    rope_scaling: null,
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: c.tieWordEmbeddings,
    max_position_embeddings: c.maxPositionEmbeddings,
    bos_token_id: c.bosTokenId,
    eos_token_id: c.eosTokenId,
    torch_dtype: 'float32',
  };
  if (c.padTokenId !== undefined) out['pad_token_id'] = c.padTokenId;
  return out;
}
