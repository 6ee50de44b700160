/**
 * GGUF out: a model as the single file llama.cpp-based runtimes load (llama.cpp, node-llama-cpp,
 * Ollama). Why here: a policy trained in qrlhf should leave it for the runtimes JavaScript users
 * deploy with, without a Python converter.
 *
 * The file (GGUF version 3, little-endian): "GGUF", version u32, tensor count u64, key/value count
 * u64; the key/values (key: u64 length + UTF-8; value: type u32 + payload; arrays: element type
 * u32, count u64, elements); one info per tensor (name, n_dims u32, dims u64 innermost first, ggml
 * type u32, offset u64 into the data section); padding to general.alignment (32); the tensor data,
 * each tensor starting on a 32-byte boundary.
 *
 * What llama.cpp's LLAMA architecture reads, as its own converter (convert_hf_to_gguf.py) writes
 * it for a Hugging Face Llama:
 * - metadata `general.architecture` = "llama", `llama.{vocab_size, context_length,
 *   embedding_length, block_count, feed_forward_length, attention.head_count,
 *   attention.head_count_kv, rope.freq_base, attention.layer_norm_rms_epsilon,
 *   rope.dimension_count}`;
 * - tensors token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
 *   ffn_up, ffn_down}, output_norm, output (absent when the embeddings are tied: llama.cpp then
 *   reuses token_embd); a [out, in] matrix has dims (in, out); 1-D tensors stay F32 in an F16 file;
 * - q and k rows permuted within each head from Hugging Face's rotate-half layout (pairs i, i + hd/2)
 *   to the interleaved pairs (2i, 2i + 1) that llama.cpp's rotary embedding for LLAMA rotates:
 *   new row 2i + s of a head = old row s·hd/2 + i (s ∈ {0, 1});
 * - the tokenizer: a byte-level BPE tokenizer.json as `tokenizer.ggml.model` "gpt2" (tokens,
 *   token_type, merges, `tokenizer.ggml.pre` from its pre-tokenizer); a SentencePiece-style one
 *   (byte_fallback BPE, as Llama 2's) and a llama2.c tokenizer as "llama" (tokens with '▁' for
 *   space, scores, token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
 *   llama2.c's scores are its own; a tokenizer.json has none, and its ids (sentencepiece order:
 *   higher score first) give score −id. The special ids, add_bos_token and the chat template.
 * Rows of the embedding beyond the tokenizer's vocabulary get "[PAD{i}]" tokens of type unused.
 */
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import { QrlhfError } from '../errors.js';
import { headDim, type LlamaConfig } from '../model/config.js';
import type { LlamaModel } from '../model/llama.js';
import type { Tokenizer } from '../tokenizer.js';
import { floatToHalfBits } from './safetensors.js';

export const GGUF_ALIGNMENT = 32;

/** GGUF metadata value types. */
const T = { U8: 0, I8: 1, U16: 2, I16: 3, U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10, I64: 11, F64: 12 } as const;
/** ggml tensor types written here. */
export const GGML_TYPE = { F32: 0, F16: 1 } as const;

/** llama.cpp's token types. */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'strings'; value: string[] }
  | { type: 'f32s'; value: ArrayLike<number> }
  | { type: 'i32s'; value: ArrayLike<number> };

/** A growing little-endian byte buffer. */
class Bytes {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32LE(v, this.length);
    this.length += 4;
  }
  i32(v: number): void {
    this.room(4);
    this.buf.writeInt32LE(v, this.length);
    this.length += 4;
  }
  u64(v: number | bigint): void {
    this.room(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  f32(v: number): void {
    this.room(4);
    this.buf.writeFloatLE(v, this.length);
    this.length += 4;
  }
  u8(v: number): void {
    this.room(1);
    this.buf.writeUInt8(v, this.length);
    this.length += 1;
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.room(b.length);
    b.copy(this.buf, this.length);
    this.length += b.length;
  }
  pad(align: number): void {
    const n = (align - (this.length % align)) % align;
    this.room(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeValue(b: Bytes, v: GgufValue): void {
  switch (v.type) {
    case 'u32':
      b.u32(T.U32);
      b.u32(v.value);
      return;
    case 'i32':
      b.u32(T.I32);
      b.i32(v.value);
      return;
    case 'f32':
      b.u32(T.F32);
      b.f32(v.value);
      return;
    case 'bool':
      b.u32(T.BOOL);
      b.u8(v.value ? 1 : 0);
      return;
    case 'string':
      b.u32(T.STRING);
      b.str(v.value);
      return;
    case 'strings':
      b.u32(T.ARRAY);
      b.u32(T.STRING);
      b.u64(v.value.length);
      for (const s of v.value) b.str(s);
      return;
    case 'f32s':
      b.u32(T.ARRAY);
      b.u32(T.F32);
      b.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) b.f32(v.value[i]!);
      return;
    case 'i32s':
      b.u32(T.ARRAY);
      b.u32(T.I32);
      b.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) b.i32(v.value[i]!);
      return;
  }
}

/** A tensor to write: its GGUF name, its shape as PyTorch writes it (outermost first), its data. */
export interface GgufTensor {
  name: string;
  shape: number[];
  type: 'F32' | 'F16';
  /** Produces the float32 data when the tensor is written (one tensor in memory at a time). */
  data: () => Float32Array | Promise<Float32Array>;
}

/**
 * Writes a GGUF file (to a temporary name, renamed into place): the metadata in the given order,
 * then the tensors, each produced and written one at a time.
 */
export async function writeGgufFile(path: string, metadata: [string, GgufValue][], tensors: GgufTensor[]): Promise<void> {
  const head = new Bytes();
  head.u32(0x46554747); // "GGUF" read as a little-endian u32
  head.u32(3);
  head.u64(tensors.length);
  head.u64(metadata.length);
  for (const [k, v] of metadata) {
    head.str(k);
    writeValue(head, v);
  }
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.shape.length);
    for (let i = t.shape.length - 1; i >= 0; i--) head.u64(t.shape[i]!); // innermost first
    head.u32(GGML_TYPE[t.type]);
    head.u64(offset);
    const n = t.shape.reduce((a, s) => a * s, 1) * (t.type === 'F32' ? 4 : 2);
    sizes.push(n);
    offset += n + ((GGUF_ALIGNMENT - (n % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT);
  }
  head.pad(GGUF_ALIGNMENT);
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, head.bytes());
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i]!;
      const data = await t.data();
      const n = sizes[i]!;
      if (data.length * (t.type === 'F32' ? 4 : 2) !== n) {
        throw new QrlhfError(`${path}: tensor "${t.name}" has ${data.length} values, its shape [${t.shape.join(', ')}] needs ${n / (t.type === 'F32' ? 4 : 2)}`);
      }
      let out: Buffer;
      if (t.type === 'F32') out = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      else {
        const h = new Uint16Array(data.length);
        for (let j = 0; j < data.length; j++) h[j] = floatToHalfBits(data[j]!);
        out = Buffer.from(h.buffer);
      }
      writeSync(fd, out);
      const pad = (GGUF_ALIGNMENT - (n % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      if (pad) writeSync(fd, Buffer.alloc(pad));
    }
    closeSync(fd);
    renameSync(tmp, path);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      /* already closed */
    }
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * Rows of a q or k projection [nHeads·hd, in] from the rotate-half layout (Hugging Face) to the
 * interleaved one (llama.cpp, Meta's original): new row 2i + s of each head = old row s·hd/2 + i.
 */
export function rotateHalfToInterleaved(w: Float32Array, nHeads: number, hd: number, inDim: number): Float32Array {
  if (w.length !== nHeads * hd * inDim) throw new QrlhfError(`rotateHalfToInterleaved: ${w.length} values for [${nHeads}·${hd}, ${inDim}]`);
  const out = new Float32Array(w.length);
  const half = hd / 2;
  for (let h = 0; h < nHeads; h++) {
    for (let i = 0; i < half; i++) {
      for (let s = 0; s < 2; s++) {
        const from = (h * hd + s * half + i) * inDim;
        out.set(w.subarray(from, from + inDim), (h * hd + 2 * i + s) * inDim);
      }
    }
  }
  return out;
}

/** The GGUF name of a Hugging Face Llama weight. */
export function ggufTensorName(hf: string): string {
  if (hf === 'model.embed_tokens.weight') return 'token_embd.weight';
  if (hf === 'model.norm.weight') return 'output_norm.weight';
  if (hf === 'lm_head.weight') return 'output.weight';
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hf);
  const names: Record<string, string> = {
    'input_layernorm.weight': 'attn_norm.weight',
    'self_attn.q_proj.weight': 'attn_q.weight',
    'self_attn.k_proj.weight': 'attn_k.weight',
    'self_attn.v_proj.weight': 'attn_v.weight',
    'self_attn.o_proj.weight': 'attn_output.weight',
    'post_attention_layernorm.weight': 'ffn_norm.weight',
    'mlp.gate_proj.weight': 'ffn_gate.weight',
    'mlp.up_proj.weight': 'ffn_up.weight',
    'mlp.down_proj.weight': 'ffn_down.weight',
  };
  if (m && names[m[2]!]) return `blk.${m[1]}.${names[m[2]!]}`;
  throw new QrlhfError(`GGUF: no llama.cpp name for the weight "${hf}"`);
}

type Json = Record<string, unknown>;

/** The tokenizer's GGUF metadata (see the header). */
export function ggufTokenizerMetadata(tok: Tokenizer, vocabSize: number): [string, GgufValue][] {
  if (tok.vocabSize > vocabSize) throw new QrlhfError(`GGUF: the tokenizer has ${tok.vocabSize} tokens, the model's embedding ${vocabSize} rows`);
  const out: [string, GgufValue][] = [];
  const tokens: string[] = [];
  const types: number[] = [];
  const scores = tok.sentencePieceScores();
  const json = tok.toJSON() as Json;
  const model = (json['model'] ?? {}) as Json;
  const added = new Map<number, { special: boolean }>();
  for (const a of (json['added_tokens'] ?? []) as Json[]) if (typeof a['id'] === 'number') added.set(a['id'] as number, { special: a['special'] === true });
  const spm = scores !== null || model['byte_fallback'] === true;
  for (let i = 0; i < vocabSize; i++) {
    const piece = i < tok.vocabSize ? tok.idToToken(i) : undefined;
    if (piece === undefined) {
      tokens.push(`[PAD${i}]`);
      types.push(TOKEN_TYPE.UNUSED);
      continue;
    }
    tokens.push(piece);
    const a = added.get(i);
    if (scores !== null && i <= 2) types.push(i === 0 ? TOKEN_TYPE.UNKNOWN : TOKEN_TYPE.CONTROL); // llama2.c: <unk> <s> </s>
    else if (a) types.push(a.special ? (spm && piece === model['unk_token'] ? TOKEN_TYPE.UNKNOWN : TOKEN_TYPE.CONTROL) : TOKEN_TYPE.USER_DEFINED);
    else if (spm && /^<0x[0-9A-Fa-f]{2}>$/.test(piece)) types.push(TOKEN_TYPE.BYTE);
    else types.push(TOKEN_TYPE.NORMAL);
  }
  if (spm) {
    out.push(['tokenizer.ggml.model', { type: 'string', value: 'llama' }]);
    out.push(['tokenizer.ggml.tokens', { type: 'strings', value: tokens }]);
    out.push(['tokenizer.ggml.scores', { type: 'f32s', value: Float32Array.from(tokens, (_, i) => (scores && i < scores.length ? scores[i]! : -i)) }]);
    out.push(['tokenizer.ggml.token_type', { type: 'i32s', value: types }]);
    out.push(['tokenizer.ggml.unknown_token_id', { type: 'u32', value: 0 }]);
  } else {
    if (model['type'] !== 'BPE') throw new QrlhfError(`GGUF: tokenizer model "${String(model['type'])}" is not written (byte-level BPE and SentencePiece-style tokenizers are)`);
    const merges = ((model['merges'] ?? []) as unknown[]).map((m) => (Array.isArray(m) ? m.join(' ') : String(m)));
    out.push(['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }]);
    out.push(['tokenizer.ggml.pre', { type: 'string', value: preTokenizerName(json['pre_tokenizer']) }]);
    out.push(['tokenizer.ggml.tokens', { type: 'strings', value: tokens }]);
    out.push(['tokenizer.ggml.token_type', { type: 'i32s', value: types }]);
    out.push(['tokenizer.ggml.merges', { type: 'strings', value: merges }]);
  }
  out.push(['tokenizer.ggml.bos_token_id', { type: 'u32', value: tok.bosId }]);
  out.push(['tokenizer.ggml.eos_token_id', { type: 'u32', value: tok.eosId }]);
  out.push(['tokenizer.ggml.padding_token_id', { type: 'u32', value: tok.padId }]);
  out.push(['tokenizer.ggml.add_bos_token', { type: 'bool', value: tok.defaultAddBos }]);
  out.push(['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }]);
  const tpl = chatTemplateOf(tok);
  if (tpl !== null) out.push(['tokenizer.chat_template', { type: 'string', value: tpl }]);
  return out;
}

/** llama.cpp's pre-tokenizer name for a byte-level tokenizer.json's pre_tokenizer. */
function preTokenizerName(pre: unknown): string {
  const s = JSON.stringify(pre ?? null);
  if (s.includes("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}")) return 'llama-bpe';
  if (s.includes('"Digits"') && s.includes('"individual_digits":true') && s.includes('"ByteLevel"')) return 'smollm';
  if (s.includes('"ByteLevel"')) return 'gpt-2';
  return 'default';
}

/** The chat template of tokenizer_config.json (a string, or the "default" of a named list), or null. */
function chatTemplateOf(tok: Tokenizer): string | null {
  const t = tok.tokenizerConfig['chat_template'];
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const d = (t as Json[]).find((x) => x['name'] === 'default') ?? (t as Json[])[0];
    if (d && typeof d['template'] === 'string') return d['template'] as string;
  }
  return null;
}

/** The Llama metadata llama.cpp's LLAMA architecture reads. */
export function ggufLlamaMetadata(c: LlamaConfig, name: string, type: 'F32' | 'F16'): [string, GgufValue][] {
  if (c.ropeScaling) {
    throw new QrlhfError(`GGUF: config.json "rope_scaling" (rope_type "${c.ropeScaling.ropeType}") is not written to GGUF yet (llama.cpp needs rope_freqs / rope.scaling keys for it)`);
  }
  return [
    ['general.architecture', { type: 'string', value: 'llama' }],
    ['general.name', { type: 'string', value: name }],
    ['general.alignment', { type: 'u32', value: GGUF_ALIGNMENT }],
    ['general.file_type', { type: 'u32', value: type === 'F32' ? 0 : 1 }], // LLAMA_FTYPE_ALL_F32 / MOSTLY_F16
    ['llama.vocab_size', { type: 'u32', value: c.vocabSize }],
    ['llama.context_length', { type: 'u32', value: c.maxPositionEmbeddings }],
    ['llama.embedding_length', { type: 'u32', value: c.hiddenSize }],
    ['llama.block_count', { type: 'u32', value: c.numLayers }],
    ['llama.feed_forward_length', { type: 'u32', value: c.intermediateSize }],
    ['llama.attention.head_count', { type: 'u32', value: c.numHeads }],
    ['llama.attention.head_count_kv', { type: 'u32', value: c.numKvHeads }],
    ['llama.rope.freq_base', { type: 'f32', value: c.ropeTheta }],
    ['llama.attention.layer_norm_rms_epsilon', { type: 'f32', value: c.rmsNormEps }],
    ['llama.rope.dimension_count', { type: 'u32', value: headDim(c) }],
  ];
}

export interface GgufOptions {
  /** F32 (default) or F16 for the matrices; 1-D tensors (norms) are F32 in both. */
  dtype?: 'F32' | 'F16';
  /** general.name (default: the file's base name). */
  name?: string;
}

/**
 * Writes a model (no LoRA: merge it first) and its tokenizer as a GGUF file llama.cpp loads.
 */
export async function saveGguf(path: string, model: LlamaModel, tokenizer: Tokenizer, opts: GgufOptions = {}): Promise<void> {
  if (model.lora) throw new QrlhfError(`${path}: the model carries a LoRA adapter: merge it first (mergeLora)`);
  const c = model.config;
  const type = opts.dtype ?? 'F32';
  const hd = headDim(c);
  const metadata = [...ggufLlamaMetadata(c, opts.name ?? basename(path).replace(/\.gguf$/i, ''), type), ...ggufTokenizerMetadata(tokenizer, c.vocabSize)];
  const order = ['model.embed_tokens.weight'];
  for (let l = 0; l < c.numLayers; l++) {
    for (const m of ['input_layernorm', 'self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'post_attention_layernorm', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']) {
      order.push(`model.layers.${l}.${m}.weight`);
    }
  }
  order.push('model.norm.weight');
  if (!c.tieWordEmbeddings) order.push('lm_head.weight');
  const tensors: GgufTensor[] = order.map((hf) => {
    const v = model.weights[hf];
    if (!v) throw new QrlhfError(`${path}: the model has no weight "${hf}"`);
    const shape = [...v.shape];
    const q = hf.endsWith('q_proj.weight');
    const k = hf.endsWith('k_proj.weight');
    return {
      name: ggufTensorName(hf),
      shape,
      type: shape.length === 1 ? 'F32' : type,
      data: async () => {
        const d = (await v.data()) as Float32Array;
        if (q) return rotateHalfToInterleaved(d, c.numHeads, hd, shape[1]!);
        if (k) return rotateHalfToInterleaved(d, c.numKvHeads, hd, shape[1]!);
        return d;
      },
    };
  });
  await writeGgufFile(path, metadata, tensors);
}
