/**
 * Frozen-backbone features (SPEC §4). One forward pass over prompt+response gives:
 * - the response feature: the final-norm hidden state at the last (non-pad) token of the sequence;
 * - the prompt feature: the hidden state at the last token of the prompt (the token that ends the
 *   user's turn, before the reply), from the same pass (causal attention: it sees the prompt only).
 * They are cached once in safetensors laid out as ArmoRM's files:
 * - stage 1 (ratings): `embeddings` [N, d], `labels` [N, M] (NaN = missing), metadata
 *   `attributes` = JSON list of the M names;
 * - stage 2 (pairs): `embeddings` [N, 2, d] and `prompt_embeddings` [N, 2, d], 0 = chosen,
 *   1 = rejected.
 * Extraction is batched, reports progress and is resumable: finished shards of rows are kept in
 * `<out>.parts/` beside the output, and a rerun with the same settings continues after the last one.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import {
  QrlhfError,
  firstNonFinite,
  formatNeedsBos,
  pairToMessages,
  readJsonl,
  readSafetensors,
  writeFileAtomic,
  writeSafetensors,
  type LlamaModel,
  type DialogueFormat,
  type RawTensor,
  type Tokenizer,
} from '@qrlhf/core';
import { parseProvenance, type FeatureProvenance } from './provenance.js';

/** A frozen backbone: the model and its tokenizer. */
export interface Backbone {
  model: LlamaModel;
  tokenizer: Tokenizer;
}

export interface PromptResponseItem {
  prompt: string;
  response: string;
}

export interface EncodedPair {
  ids: number[];
  /** Index in `ids` of the prompt's last token. */
  promptEnd: number;
  /** Tokens dropped from the front to fit maxTokens. */
  truncated: number;
}

function addBos(tok: Tokenizer): boolean {
  return (tok as Tokenizer & { defaultAddBos?: boolean }).defaultAddBos ?? true;
}

/**
 * Tokens of prompt+response (encoded as one text, BOS first when the tokenizer's convention has
 * it) and the position of the prompt's last token: the last position where the joint encoding
 * still agrees with the prompt's own encoding (BPE merges across the border move it back by one
 * at most). Sequences longer than maxTokens lose tokens from the front (the start of the
 * dialogue); the prompt's last token must survive, or the row is an error. `bos` overrides the
 * tokenizer's convention; `promptEndAt` puts the prompt feature at the last token of
 * prompt.slice(0, promptEndAt) instead (a chat template's end of the last user turn).
 */
export function encodePair(
  tok: Tokenizer,
  prompt: string,
  response: string,
  maxTokens: number,
  where = 'row',
  o: { bos?: boolean; promptEndAt?: number; limitHint?: string } = {},
): EncodedPair {
  const bos = o.bos ?? addBos(tok);
  const full = tok.encode(prompt + response, { addBos: bos });
  const p = tok.encode(o.promptEndAt === undefined ? prompt : prompt.slice(0, o.promptEndAt), { addBos: bos });
  let common = 0;
  while (common < p.length && common < full.length && p[common] === full[common]) common++;
  if (common === 0) throw new QrlhfError(`${where}: the prompt is empty (no token to take the prompt feature from)`);
  let promptEnd = common - 1;
  let ids = full;
  let truncated = 0;
  if (ids.length > maxTokens) {
    truncated = ids.length - maxTokens;
    ids = ids.slice(truncated);
    promptEnd -= truncated;
    if (promptEnd < 0) {
      throw new QrlhfError(
        `${where}: the response alone is ${full.length - common} tokens, over the ${maxTokens}-token limit${o.limitHint ?? ''}`,
      );
    }
  }
  return { ids, promptEnd, truncated };
}

/**
 * A (prompt, response) item in a chat template's format: the prompt (HH text or plain text) and
 * response become turns, rendered by `format` (DialogueFormat.split); the sequence is the rendered
 * prompt + the reply and its end-of-turn token, BOS only where the template did not write it, and
 * the prompt feature sits at the token that closes the last user turn (SPEC §4: Llama 3's
 * <|eot_id|> before the assistant header). The HH format encodes the texts as they are.
 */
export function encodeDialogue(tok: Tokenizer, format: DialogueFormat | undefined, prompt: string, response: string, maxTokens: number, where = 'row', limitHint?: string): EncodedPair {
  if (!format?.template) return encodePair(tok, prompt, response, maxTokens, where, { limitHint });
  const s = format.split(pairToMessages(prompt, response));
  const bos = formatNeedsBos(format, s.prompt, addBos(tok), addBos(tok));
  return encodePair(tok, s.prompt, s.reply, maxTokens, where, { bos, promptEndAt: s.userTurnEnd, limitHint });
}

/**
 * How the response feature is read off the backbone's last layer: 'last' (SPEC §4, ArmoRM) takes
 * the hidden state at the last token; 'mean' averages the hidden states of the response's tokens;
 * 'max' takes each dimension's largest value over them.
 * A large backbone's last state summarises the response; a tiny one's mostly predicts the next
 * token, and the mean keeps what each token saw (the Figure 3 world uses it: see its README). The
 * mean of a longer response dilutes each sentence (two sentences each count half), while the max
 * keeps a feature that any one sentence turns on, so a linear head can add sentences' effects.
 */
export type FeaturePooling = 'last' | 'mean' | 'max';
export const FEATURE_POOLINGS: readonly FeaturePooling[] = ['last', 'mean', 'max'];

/**
 * The pooled response features [B, d] of hidden states h [B, T, d], row b encoded as rows[b] (its
 * ids padded to T). 'mean' and 'max' read the tokens of meanPoolRange, 'last' the last real token.
 * Differentiable: the reward backbone trains through it.
 */
export function poolResponses(h: tf.Tensor3D, rows: readonly { ids: ArrayLike<number>; promptEnd: number }[], pooling: FeaturePooling): tf.Tensor2D {
  const [B, T, d] = h.shape;
  if (rows.length !== B) throw new QrlhfError(`poolResponses: ${rows.length} rows for a batch of ${B}`);
  return tf.tidy(() => {
    if (pooling === 'max') {
      // 0 on the pooled tokens, -1e9 elsewhere: the max over T then sees only the pooled ones
      const bias = new Float32Array(B * T).fill(-1e9);
      rows.forEach((r, b) => {
        const [from, to] = meanPoolRange(r);
        bias.fill(0, b * T + from, b * T + to);
      });
      return tf.max(tf.add(h, tf.tensor3d(bias, [B, T, 1])), 1) as tf.Tensor2D;
    }
    if (pooling === 'last') {
      const last = Int32Array.from(rows, (r, b) => b * T + r.ids.length - 1);
      return tf.gather(h.reshape([B * T, d]), tf.tensor1d(last, 'int32')) as tf.Tensor2D;
    }
    // row b of `pool`: 1/len on its pooled tokens, so pool · h is their mean
    const pool = new Float32Array(B * T);
    rows.forEach((r, b) => {
      const [from, to] = meanPoolRange(r);
      pool.fill(1 / (to - from), b * T + from, b * T + to);
    });
    return tf.matMul(tf.tensor3d(pool, [B, 1, T]), h).reshape([B, d]) as tf.Tensor2D;
  });
}

export interface FeatureOptions {
  /** The response feature: 'last' (default, SPEC §4), or the 'mean' or per-dimension 'max' over the response's tokens. */
  pooling?: FeaturePooling;
  /** Sequences per forward pass (8). */
  batchSize?: number;
  /** Longest sequence; longer ones lose their first tokens (the model's maxPositionEmbeddings). */
  maxTokens?: number;
  /**
   * Token ids whose LAST occurrence in the sequence marks the prompt feature (its first token),
   * instead of the prompt's last token: the released QRM reads its gate input at the
   * end-of-user-turn + assistant-header pattern.
   */
  gatePattern?: readonly number[];
  /** How a (prompt, response) is written for the backbone (default: the HH texts as they are). */
  format?: DialogueFormat;
  /** Said after "over the N-token limit" when a response alone is too long: how to raise it. */
  limitHint?: string;
}

/** Start of the last occurrence of `pattern` in `ids` (RewardBench's find_token_for_gating); an error naming `where` when absent. */
export function findGatePosition(ids: readonly number[], pattern: readonly number[], where: string): number {
  for (let j = ids.length - pattern.length; j >= 0; j--) {
    let k = 0;
    while (k < pattern.length && ids[j + k] === pattern[k]) k++;
    if (k === pattern.length) return j;
  }
  throw new QrlhfError(`${where}: the gate's token pattern [${pattern.join(', ')}] does not occur in the sequence (is the dialogue in the QRM's chat format?)`);
}

/**
 * Response and prompt features [n, d] for n (prompt, response) items. Items are sorted by length
 * into batches (less padding), right-padded, and put back in their order.
 */
export async function pairFeatures(
  backbone: Backbone,
  items: readonly PromptResponseItem[],
  opts: FeatureOptions & { where?: (i: number) => string; onBatch?: (done: number) => void } = {},
): Promise<{ response: Float32Array; prompt: Float32Array; truncated: number }> {
  const { model, tokenizer } = backbone;
  const maxTokens = opts.maxTokens ?? model.config.maxPositionEmbeddings;
  const enc = items.map((it, i) => {
    const where = opts.where?.(i) ?? `item ${i}`;
    const e = encodeDialogue(tokenizer, opts.format, it.prompt, it.response, maxTokens, where, opts.limitHint ?? ` (the backbone's context is ${model.config.maxPositionEmbeddings} tokens)`);
    return opts.gatePattern ? { ...e, promptEnd: findGatePosition(e.ids, opts.gatePattern, where) } : e;
  });
  return encodedFeatures(backbone, enc, opts);
}

/** Response and prompt features [n, d] of sequences already encoded (see pairFeatures). */
export async function encodedFeatures(
  backbone: Pick<Backbone, 'model'> & { tokenizer: Pick<Tokenizer, 'padId'> },
  enc: readonly EncodedPair[],
  opts: FeatureOptions & { where?: (i: number) => string; onBatch?: (done: number) => void } = {},
): Promise<{ response: Float32Array; prompt: Float32Array; truncated: number }> {
  const { model, tokenizer } = backbone;
  const d = model.config.hiddenSize;
  const batchSize = opts.batchSize ?? 8;
  const pooling = opts.pooling ?? 'last';
  if (!FEATURE_POOLINGS.includes(pooling)) throw new QrlhfError(`feature pooling: expected one of ${FEATURE_POOLINGS.join(', ')}, got "${pooling}"`);
  const order = enc.map((_, i) => i).sort((a, b) => enc[a]!.ids.length - enc[b]!.ids.length);
  const response = new Float32Array(enc.length * d);
  const prompt = new Float32Array(enc.length * d);
  const pad = tokenizer.padId;
  for (let s = 0; s < order.length; s += batchSize) {
    const rows = order.slice(s, s + batchSize);
    const B = rows.length;
    const T = Math.max(...rows.map((r) => enc[r]!.ids.length));
    const ids = new Int32Array(B * T).fill(pad);
    const mask = new Float32Array(B * T);
    const gatherIdx = new Int32Array(B);
    rows.forEach((r, b) => {
      const e = enc[r]!;
      ids.set(e.ids, b * T);
      mask.fill(1, b * T, b * T + e.ids.length);
      gatherIdx[b] = b * T + e.promptEnd;
    });
    // rows [0, B): the pooled response features; [B, 2B): the prompt features (the promptEnd token)
    const feats = tf.tidy(() => {
      const h = model.hidden(tf.tensor2d(ids, [B, T], 'int32'), { mask: tf.tensor2d(mask, [B, T]) });
      const promptFeat = tf.gather(h.reshape([B * T, d]), tf.tensor1d(gatherIdx, 'int32'));
      return tf.concat([poolResponses(h, rows.map((r) => enc[r]!), pooling), promptFeat], 0);
    });
    const data = (await feats.data()) as Float32Array;
    feats.dispose();
    // a NaN here (broken weights, an overflow) would be cached and fitted silently: stop, naming the row
    const bad = firstNonFinite(data);
    if (bad >= 0) {
      const r = rows[Math.floor(bad / d) % B]!;
      throw new QrlhfError(
        `${opts.where?.(r) ?? `item ${r}`}: the backbone's hidden state is not finite (${data[bad]}): its weights hold NaN/Inf or its activations overflow`,
      );
    }
    rows.forEach((r, b) => {
      response.set(data.subarray(b * d, (b + 1) * d), r * d);
      prompt.set(data.subarray((B + b) * d, (B + b + 1) * d), r * d);
    });
    opts.onBatch?.(Math.min(order.length, s + batchSize));
  }
  return { response, prompt, truncated: enc.reduce((a, e) => a + (e.truncated > 0 ? 1 : 0), 0) };
}

// ---------------------------------------------------------------------------------------------
// Input rows

export interface RatingRow {
  prompt: string;
  response: string;
  labels: Record<string, number | null>;
}

/**
 * The tokens 'mean' and 'max' pooling read: the response's, [promptEnd + 1, end), or the last token
 * alone when the response is empty. Whatever trains on pooled features (figure3's reward backbone) pools
 * with this too, so it reads the same positions the QRM's features do.
 */
export function meanPoolRange(e: { ids: ArrayLike<number>; promptEnd: number }): [from: number, to: number] {
  return [Math.min(e.promptEnd + 1, e.ids.length - 1), e.ids.length];
}

const RESERVED = new Set(['prompt', 'response']);

/** Reads a ratings jsonl: `{prompt, response, <attribute>: number | null, ...}` per line. */
export async function readRatings(path: string, maxRows?: number): Promise<RatingRow[]> {
  const out: RatingRow[] = [];
  for await (const { row, line } of readJsonl(path)) {
    if (maxRows !== undefined && out.length >= maxRows) break;
    const where = `${path}:${line}`;
    if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new QrlhfError(`${where}: expected an object {prompt, response, <attribute>: number|null, ...}`);
    const o = row as Record<string, unknown>;
    for (const key of ['prompt', 'response']) {
      if (typeof o[key] !== 'string') throw new QrlhfError(`${where}: field "${key}" must be a string`);
    }
    const labels: Record<string, number | null> = {};
    for (const [k, v] of Object.entries(o)) {
      if (RESERVED.has(k)) continue;
      if (v === null) labels[k] = null;
      else if (typeof v === 'number' && Number.isFinite(v)) labels[k] = v;
      else throw new QrlhfError(`${where}: attribute "${k}" must be a finite number or null, got ${JSON.stringify(v)}`);
    }
    out.push({ prompt: o['prompt'] as string, response: o['response'] as string, labels });
  }
  return out;
}

export interface PairRow {
  prompt: string;
  chosen: string;
  rejected: string;
}

/** Reads a pairs jsonl: `{prompt, chosen, rejected}` per line (other fields are ignored). */
export async function readPairs(path: string, maxRows?: number): Promise<PairRow[]> {
  const out: PairRow[] = [];
  for await (const { row, line } of readJsonl(path)) {
    if (maxRows !== undefined && out.length >= maxRows) break;
    const where = `${path}:${line}`;
    if (row === null || typeof row !== 'object' || Array.isArray(row)) throw new QrlhfError(`${where}: expected an object {prompt, chosen, rejected}`);
    const o = row as Record<string, unknown>;
    for (const key of ['prompt', 'chosen', 'rejected']) {
      if (typeof o[key] !== 'string') throw new QrlhfError(`${where}: field "${key}" must be a string`);
    }
    out.push({ prompt: o['prompt'] as string, chosen: o['chosen'] as string, rejected: o['rejected'] as string });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Resumable extraction to ArmoRM-layout files

/**
 * What computes features instead of an in-process backbone: an inference engine (see
 * engine-features.ts). `ref` goes into the metadata and the resume fingerprint.
 */
export interface FeatureSource {
  /** Feature width. */
  d: number;
  /** Longest sequence sent. */
  maxTokens: number;
  /** e.g. "openai:http://host:8000/v1 model=NAME" */
  ref: string;
  /** Recorded in the file's metadata (e.g. {engine: 'openai', engine_model: NAME}). */
  metadata: Record<string, string>;
  features(
    items: readonly PromptResponseItem[],
    opts: FeatureOptions & { where?: (i: number) => string; onBatch?: (done: number) => void },
  ): Promise<{ response: Float32Array; prompt: Float32Array; truncated: number }>;
}

export interface ExtractOptions extends FeatureOptions {
  input: string;
  output: string;
  /** The in-process backbone (or give `source`). */
  backbone?: Backbone;
  /** An engine computing the features instead of `backbone`. */
  source?: FeatureSource;
  /** Recorded in the file's metadata and the resume fingerprint (e.g. the model path). */
  backboneRef?: string;
  /** How the features are made (provenance.ts): recorded in the metadata as `provenance`. */
  provenance?: FeatureProvenance;
  /** Rows per shard kept in `<output>.parts/` (512). */
  shardSize?: number;
  maxRows?: number;
  /** Stage 1 only: the attribute columns (default: every key other than prompt/response, in first-seen order). */
  attributes?: string[];
  onProgress?: (done: number, total: number) => void;
}

export interface ExtractResult {
  path: string;
  n: number;
  d: number;
  attributes?: string[];
  /** Shards taken from an earlier, interrupted run. */
  resumedShards: number;
  /** Rows that lost their first tokens to maxTokens. */
  truncated: number;
}

const FORMAT = 'qrlhf-features/1';

interface Fingerprint {
  format: string;
  stage: 1 | 2;
  input: string;
  inputSize: number;
  inputMtimeMs: number;
  rows: number;
  d: number;
  shardSize: number;
  maxTokens: number;
  backbone: string;
  attributes: string[] | null;
  pooling: FeaturePooling;
  /** The chat template's file when the dialogues were rendered by one (absent: HH). */
  chatTemplate?: string;
}

function shardPath(parts: string, i: number): string {
  return `${parts}/shard-${String(i).padStart(5, '0')}.safetensors`;
}

/** The parts folder, and how many shards in it are finished (after checking the fingerprint). */
function openParts(output: string, fp: Fingerprint): { parts: string; done: number } {
  const parts = `${output}.parts`;
  const fpFile = `${parts}/progress.json`;
  if (existsSync(fpFile)) {
    let old: Record<string, unknown>;
    try {
      old = JSON.parse(readFileSync(fpFile, 'utf8')) as Record<string, unknown>;
    } catch {
      throw new QrlhfError(`${fpFile}: unreadable; delete ${parts} to start over`);
    }
    for (const [k, v] of Object.entries(fp)) {
      if (JSON.stringify(old[k]) !== JSON.stringify(v)) {
        throw new QrlhfError(
          `${parts} holds an interrupted run with a different ${k} (${JSON.stringify(old[k])}, now ${JSON.stringify(v)}): ` +
            `delete it to start over, or rerun with the same settings to resume`,
        );
      }
    }
  } else {
    mkdirSync(parts, { recursive: true });
    writeFileAtomic(fpFile, JSON.stringify(fp, null, 2) + '\n');
  }
  let done = 0;
  while (existsSync(shardPath(parts, done))) done++;
  return { parts, done };
}

function f32(t: RawTensor, name: string, where: string): Float32Array {
  if (!(t.data instanceof Float32Array)) throw new QrlhfError(`${where}: tensor "${name}" is ${t.dtype}, expected a float tensor`);
  return t.data;
}

function concatShards(parts: string, count: number, names: string[]): Record<string, Float32Array> {
  const pieces: Record<string, Float32Array[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let i = 0; i < count; i++) {
    const p = shardPath(parts, i);
    const { tensors } = readSafetensors(p);
    for (const n of names) {
      const t = tensors[n];
      if (!t) throw new QrlhfError(`${p}: tensor "${n}" is missing; delete ${parts} to start over`);
      pieces[n]!.push(f32(t, n, p));
    }
  }
  const out: Record<string, Float32Array> = {};
  for (const n of names) {
    const len = pieces[n]!.reduce((a, x) => a + x.length, 0);
    const all = new Float32Array(len);
    let off = 0;
    for (const x of pieces[n]!) {
      all.set(x, off);
      off += x.length;
    }
    out[n] = all;
  }
  return out;
}

function widthOf(o: ExtractOptions): number {
  if (!o.backbone === !o.source) throw new QrlhfError('feature extraction: give exactly one of a backbone or an engine source');
  return o.source ? o.source.d : o.backbone!.model.config.hiddenSize;
}

/** One chunk's features, from the engine or the in-process backbone. */
async function chunkFeatures(o: ExtractOptions, items: readonly PromptResponseItem[], extra: { where: (i: number) => string; limitHint: string; onBatch: (k: number) => void }) {
  return o.source ? o.source.features(items, { ...o, ...extra }) : pairFeatures(o.backbone!, items, { ...o, ...extra });
}

function fingerprint(o: ExtractOptions, stage: 1 | 2, rows: number, attributes: string[] | null): Fingerprint {
  const input = resolve(o.input);
  const st = statSync(input);
  return {
    format: FORMAT,
    stage,
    input,
    inputSize: st.size,
    inputMtimeMs: Math.floor(st.mtimeMs),
    rows,
    d: widthOf(o),
    shardSize: o.shardSize ?? 512,
    maxTokens: o.maxTokens ?? o.source?.maxTokens ?? o.backbone!.model.config.maxPositionEmbeddings,
    backbone: o.backboneRef ?? o.source?.ref ?? '',
    attributes,
    pooling: o.pooling ?? 'last',
    ...(o.format?.template ? { chatTemplate: o.format.name } : {}),
  };
}

function provenanceMetadata(o: ExtractOptions): Record<string, string> {
  return o.provenance ? { provenance: JSON.stringify(o.provenance) } : {};
}

/** Stage 1: response features and attribute labels of a ratings file. */
export async function extractRatingFeatures(o: ExtractOptions): Promise<ExtractResult> {
  const rows = await readRatings(o.input, o.maxRows);
  if (rows.length === 0) throw new QrlhfError(`${o.input}: no rows`);
  let attributes = o.attributes;
  if (!attributes) {
    const seen = new Set<string>();
    for (const r of rows) for (const k of Object.keys(r.labels)) seen.add(k);
    attributes = [...seen];
  }
  if (attributes.length === 0) throw new QrlhfError(`${o.input}: no attribute columns (expected numeric fields beside prompt and response)`);
  // an attribute no row rates (a misspelt name) would be an all-NaN column: refuse it by name
  const present = new Map<string, number>();
  for (const r of rows) for (const [k, v] of Object.entries(r.labels)) present.set(k, (present.get(k) ?? 0) + (v === null ? 0 : 1));
  const unrated = attributes.filter((a) => !present.get(a));
  if (unrated.length) {
    const have = [...present.keys()];
    throw new QrlhfError(
      `${o.input}: ${unrated.map((a) => `attribute "${a}" ${present.has(a) ? 'is null in every row' : 'is in no row'}`).join('; ')} ` +
        `(of ${rows.length} rows; the rows have ${have.length ? have.map((a) => `"${a}"`).join(', ') : 'no attribute fields'})`,
    );
  }
  const M = attributes.length;
  const d = widthOf(o);
  const fp = fingerprint(o, 1, rows.length, attributes);
  const { parts, done } = openParts(o.output, fp);
  const shardSize = fp.shardSize;
  const nShards = Math.ceil(rows.length / shardSize);
  let truncated = 0;
  o.onProgress?.(Math.min(rows.length, done * shardSize), rows.length);
  for (let s = done; s < nShards; s++) {
    const lo = s * shardSize;
    const chunk = rows.slice(lo, lo + shardSize);
    const f = await chunkFeatures(o, chunk, {
      where: (i) => `${o.input}: row ${lo + i + 1}`,
      limitHint: o.limitHint ?? ' (raise --max-tokens)',
      onBatch: (k) => o.onProgress?.(lo + k, rows.length),
    });
    truncated += f.truncated;
    const labels = new Float32Array(chunk.length * M);
    chunk.forEach((r, i) => attributes!.forEach((a, j) => (labels[i * M + j] = r.labels[a] ?? NaN)));
    writeSafetensors(shardPath(parts, s), {
      embeddings: { dtype: 'F32', shape: [chunk.length, d], data: f.response },
      labels: { dtype: 'F32', shape: [chunk.length, M], data: labels },
    });
  }
  const all = concatShards(parts, nShards, ['embeddings', 'labels']);
  writeSafetensors(
    o.output,
    {
      embeddings: { dtype: 'F32', shape: [rows.length, d], data: all['embeddings']! },
      labels: { dtype: 'F32', shape: [rows.length, M], data: all['labels']! },
    },
    { format: FORMAT, stage: '1', attributes: JSON.stringify(attributes), backbone: fp.backbone, ...(o.source?.metadata ?? {}), ...provenanceMetadata(o) },
  );
  rmSync(parts, { recursive: true, force: true });
  return { path: o.output, n: rows.length, d, attributes, resumedShards: done, truncated };
}

/** Stage 2: features of both sides of preference pairs (0 = chosen, 1 = rejected). */
export async function extractPairFeatures(o: ExtractOptions): Promise<ExtractResult> {
  const rows = await readPairs(o.input, o.maxRows);
  if (rows.length === 0) throw new QrlhfError(`${o.input}: no rows`);
  const d = widthOf(o);
  const fp = fingerprint(o, 2, rows.length, null);
  const { parts, done } = openParts(o.output, fp);
  const shardSize = fp.shardSize;
  const nShards = Math.ceil(rows.length / shardSize);
  let truncated = 0;
  o.onProgress?.(Math.min(rows.length, done * shardSize), rows.length);
  for (let s = done; s < nShards; s++) {
    const lo = s * shardSize;
    const chunk = rows.slice(lo, lo + shardSize);
    // interleave: item 2i is pair i's chosen side, 2i+1 its rejected side -> [n, 2, d] directly
    const items: PromptResponseItem[] = [];
    for (const r of chunk) items.push({ prompt: r.prompt, response: r.chosen }, { prompt: r.prompt, response: r.rejected });
    const f = await chunkFeatures(o, items, {
      where: (i) => `${o.input}: row ${lo + Math.floor(i / 2) + 1} (${i % 2 === 0 ? 'chosen' : 'rejected'})`,
      limitHint: o.limitHint ?? ' (raise --max-tokens)',
      onBatch: (k) => o.onProgress?.(lo + Math.floor(k / 2), rows.length),
    });
    truncated += f.truncated;
    writeSafetensors(shardPath(parts, s), {
      embeddings: { dtype: 'F32', shape: [chunk.length, 2, d], data: f.response },
      prompt_embeddings: { dtype: 'F32', shape: [chunk.length, 2, d], data: f.prompt },
    });
  }
  const all = concatShards(parts, nShards, ['embeddings', 'prompt_embeddings']);
  writeSafetensors(
    o.output,
    {
      embeddings: { dtype: 'F32', shape: [rows.length, 2, d], data: all['embeddings']! },
      prompt_embeddings: { dtype: 'F32', shape: [rows.length, 2, d], data: all['prompt_embeddings']! },
    },
    { format: FORMAT, stage: '2', backbone: fp.backbone, ...(o.source?.metadata ?? {}), ...provenanceMetadata(o) },
  );
  rmSync(parts, { recursive: true, force: true });
  return { path: o.output, n: rows.length, d, resumedShards: done, truncated };
}

// ---------------------------------------------------------------------------------------------
// Reading feature files back

export interface RatingFeatures {
  n: number;
  d: number;
  embeddings: Float32Array;
  labels: Float32Array;
  attributes: string[];
  /** The backbone recorded in the file's metadata ('' or absent when none). */
  backbone?: string;
  /** How the features were made (null or absent: a file written before this was recorded). */
  provenance?: FeatureProvenance | null;
}

export interface PairFeatures {
  n: number;
  d: number;
  /** [n, 2, d] */
  embeddings: Float32Array;
  prompt_embeddings: Float32Array;
  backbone?: string;
  /** How the features were made (null or absent: a file written before this was recorded). */
  provenance?: FeatureProvenance | null;
}

/** A stage-1 file: `embeddings` [N, d], `labels` [N, M], attribute names from the metadata. */
export function readRatingFeatures(path: string): RatingFeatures {
  if (!existsSync(path)) throw new QrlhfError(`${path}: features file not found`);
  const { tensors, metadata } = readSafetensors(path);
  const e = tensors['embeddings'];
  const l = tensors['labels'];
  if (!e || e.shape.length !== 2) throw new QrlhfError(`${path}: expected a tensor "embeddings" [N, d] (a stage-1 features file)`);
  if (!l || l.shape.length !== 2 || l.shape[0] !== e.shape[0]) {
    throw new QrlhfError(`${path}: expected a tensor "labels" [${e.shape[0]}, M] beside "embeddings"`);
  }
  const M = l.shape[1]!;
  let attributes: string[];
  try {
    attributes = metadata['attributes'] ? (JSON.parse(metadata['attributes']) as string[]) : [];
  } catch {
    throw new QrlhfError(`${path}: metadata "attributes" is not a JSON list of names`);
  }
  if (!Array.isArray(attributes) || attributes.length === 0) attributes = Array.from({ length: M }, (_, j) => `attribute_${j}`);
  if (attributes.length !== M) throw new QrlhfError(`${path}: metadata names ${attributes.length} attributes, labels have ${M} columns`);
  const n = e.shape[0]!;
  const d = e.shape[1]!;
  if (n === 0) throw new QrlhfError(`${path}: no rows (embeddings [0, ${d}]): nothing to fit`);
  const embeddings = f32(e, 'embeddings', path);
  const labels = f32(l, 'labels', path);
  // a NaN feature makes the whole fit NaN (and the heads all zero) without a word: refuse it here
  const bad = firstNonFinite(embeddings);
  if (bad >= 0) {
    throw new QrlhfError(`${path}: "embeddings" row ${Math.floor(bad / d) + 1}, column ${(bad % d) + 1} is ${embeddings[bad]}: features must be finite; re-extract them`);
  }
  // labels: NaN means "not rated"; an infinity is an error, and so is a column with no rating at all
  const rated = new Array<number>(M).fill(0);
  for (let i = 0; i < n * M; i++) {
    const v = labels[i]!;
    if (Number.isNaN(v)) continue;
    if (!Number.isFinite(v)) throw new QrlhfError(`${path}: "labels" row ${Math.floor(i / M) + 1}, attribute "${attributes[i % M]}" is ${v}: expected a finite rating or NaN (missing)`);
    rated[i % M]!++;
  }
  const empty = attributes.filter((_, j) => rated[j] === 0);
  if (empty.length) throw new QrlhfError(`${path}: attribute${empty.length > 1 ? 's' : ''} ${empty.map((a) => `"${a}"`).join(', ')} ha${empty.length > 1 ? 've' : 's'} no rated row (all ${n} labels NaN)`);
  return { n, d, embeddings, labels, attributes, backbone: metadata['backbone'], provenance: parseProvenance(metadata, path) };
}

/** A stage-2 file: `embeddings` and `prompt_embeddings`, both [N, 2, d]. */
export function readPairFeatures(path: string): PairFeatures {
  if (!existsSync(path)) throw new QrlhfError(`${path}: features file not found`);
  const { tensors, metadata } = readSafetensors(path);
  const e = tensors['embeddings'];
  const p = tensors['prompt_embeddings'];
  if (!e || e.shape.length !== 3 || e.shape[1] !== 2) throw new QrlhfError(`${path}: expected a tensor "embeddings" [N, 2, d] (a stage-2 features file)`);
  if (!p || p.shape.join() !== e.shape.join()) throw new QrlhfError(`${path}: expected a tensor "prompt_embeddings" [${e.shape.join(', ')}]`);
  const n = e.shape[0]!;
  const d = e.shape[2]!;
  if (n === 0) throw new QrlhfError(`${path}: no rows (embeddings [0, 2, ${d}])`);
  const out = { embeddings: f32(e, 'embeddings', path), prompt_embeddings: f32(p, 'prompt_embeddings', path) };
  for (const [name, x] of Object.entries(out)) {
    const bad = firstNonFinite(x);
    if (bad >= 0) {
      const row = Math.floor(bad / (2 * d));
      throw new QrlhfError(`${path}: "${name}" row ${row + 1} (${Math.floor(bad / d) % 2 === 0 ? 'chosen' : 'rejected'}), column ${(bad % d) + 1} is ${x[bad]}: features must be finite; re-extract them`);
    }
  }
  return { n, d, ...out, backbone: metadata['backbone'], provenance: parseProvenance(metadata, path) };
}

/** Splits [n, 2, d] into the chosen [n, d] and rejected [n, d] halves. */
export function splitSides(x: Float32Array, n: number, d: number): [Float32Array, Float32Array] {
  const a = new Float32Array(n * d);
  const b = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    a.set(x.subarray((2 * i) * d, (2 * i + 1) * d), i * d);
    b.set(x.subarray((2 * i + 1) * d, (2 * i + 2) * d), i * d);
  }
  return [a, b];
}

/** Lists the shard files of an interrupted run (for messages). */
export function pendingShards(output: string): number {
  const parts = `${output}.parts`;
  if (!existsSync(parts)) return 0;
  return readdirSync(parts).filter((f) => f.startsWith('shard-')).length;
}
