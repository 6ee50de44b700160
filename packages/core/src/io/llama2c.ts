/**
 * llama2.c's two binary formats (SPEC §2, MANIFEST: the stories260K model):
 *
 * - the checkpoint ("legacy" export): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 *   vocab_size — negative when the classifier is not shared — and seq_len), then float32 weights in
 *   the order token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 (each for all layers),
 *   rms_final, freq_cis_real, freq_cis_imag, and wcls when unshared. Linear weights are [out, in]
 *   as in PyTorch. Its q/k rows are laid out for rotary embedding on interleaved pairs (2i, 2i+1);
 *   Hugging Face's Llama rotates pairs (i, i + d/2), so the rows of each head are permuted.
 * - the tokenizer: int32 max_token_length, then per token float32 score, int32 byte length, bytes.
 *   Encoding follows llama2.c's run.c: a dummy-prefix space, one piece per UTF-8 character (bytes
 *   <0xXX> when the character is not in the vocabulary), then repeatedly merge the adjacent pair
 *   whose concatenation is the best-scoring piece, leftmost first on ties.
 */
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import type { LlamaConfig } from '../model/config.js';

// ---------------------------------------------------------------------------------------------
// Checkpoint

/** A float32 array with its shape, outside tfjs. */
export interface Float32Tensor { shape: number[]; data: Float32Array }

/** llama2.c's "ak42" magic, which starts the newer (version >= 1) export files. */
const LLAMA2C_MAGIC = 0x616b3432;

/**
 * Permutes the rows of a q or k projection [nHeads * hd, inDim] from llama2.c's interleaved rotary
 * layout to Hugging Face's rotate-half one: within each head, new row j = old row 2j and new row
 * j + hd/2 = old row 2j + 1 (j < hd/2). Both q and k get the same permutation, so q·k is unchanged
 * while each rotated pair moves to the positions rotate-half expects.
 */
export function interleavedToRotateHalf(w: Float32Array, nHeads: number, hd: number, inDim: number): Float32Array {
  const out = new Float32Array(w.length);
  const half = hd / 2;
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < half; j++) {
      const base = h * hd;
      out.set(w.subarray((base + 2 * j) * inDim, (base + 2 * j + 1) * inDim), (base + j) * inDim);
      out.set(w.subarray((base + 2 * j + 1) * inDim, (base + 2 * j + 2) * inDim), (base + half + j) * inDim);
    }
  }
  return out;
}

/** Parses a llama2.c checkpoint into a config and float32 arrays under Hugging Face names. */
export function parseLlama2c(buf: Uint8Array, where = '<buffer>'): { config: LlamaConfig; arrays: Record<string, Float32Tensor> } {
  const fail = (msg: string): never => {
    throw new QrlhfError(`${where}: not a llama2.c checkpoint: ${msg}`);
  };
  if (buf.length < 28) fail(`file is ${buf.length} bytes, shorter than the 28-byte header`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dv.getUint32(0, true) === LLAMA2C_MAGIC) {
    fail(`it starts with the "ak42" magic of llama2.c's export version ${dv.getInt32(4, true)}; only the legacy ` +
      'format (export version 0, as run.c reads) is supported: re-export with version 0');
  }
  const names = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'] as const;
  const h = names.map((_, i) => dv.getInt32(4 * i, true));
  const [dim, hidden, nLayers, nHeads, nKv, vocabSigned, seqLen] = h as [number, number, number, number, number, number, number];
  h.forEach((v, i) => {
    if (names[i] === 'vocab_size' ? v === 0 : v <= 0) fail(`header field ${names[i]} = ${v} (expected a positive integer)`);
  });
  const shared = vocabSigned > 0;
  const vocab = Math.abs(vocabSigned);
  if (dim % nHeads !== 0) fail(`dim ${dim} is not divisible by n_heads ${nHeads}`);
  const hd = dim / nHeads;
  if (hd % 2 !== 0) fail(`head size ${hd} (dim / n_heads) is odd; rotary embedding needs it even`);
  if (nKv > nHeads || nHeads % nKv !== 0) fail(`n_heads ${nHeads} is not a multiple of n_kv_heads ${nKv}`);
  const kvDim = nKv * hd;

  // The weights in file order: [name, count]
  const plan: [string, number][] = [
    ['token_embedding', vocab * dim],
    ['rms_att', nLayers * dim],
    ['wq', nLayers * dim * dim],
    ['wk', nLayers * kvDim * dim],
    ['wv', nLayers * kvDim * dim],
    ['wo', nLayers * dim * dim],
    ['rms_ffn', nLayers * dim],
    ['w1', nLayers * hidden * dim],
    ['w2', nLayers * dim * hidden],
    ['w3', nLayers * hidden * dim],
    ['rms_final', dim],
    ['freq_cis_real', (seqLen * hd) / 2],
    ['freq_cis_imag', (seqLen * hd) / 2],
  ];
  if (!shared) plan.push(['wcls', vocab * dim]);
  const floats = plan.reduce((a, [, n]) => a + n, 0);
  const expected = 28 + 4 * floats;
  if (buf.length !== expected) {
    fail(`the header (dim ${dim}, hidden_dim ${hidden}, n_layers ${nLayers}, n_heads ${nHeads}, n_kv_heads ${nKv}, ` +
      `vocab_size ${vocabSigned}, seq_len ${seqLen}) implies ${expected} bytes, but the file has ${buf.length}` +
      (buf.length < expected ? ' (truncated?)' : ''));
  }
  // One aligned copy of all the floats.
  const all = new Float32Array(new Uint8Array(buf.subarray(28, expected)).buffer);
  const parts: Record<string, Float32Array> = {};
  let off = 0;
  for (const [name, n] of plan) {
    parts[name] = all.subarray(off, off + n);
    off += n;
  }
  for (let i = 0; i < all.length; i++) {
    if (!Number.isFinite(all[i]!)) {
      const at = plan.find(([name]) => {
        const p = parts[name]!;
        return p.byteOffset / 4 <= i && i < p.byteOffset / 4 + p.length;
      });
      fail(`weight ${at?.[0] ?? '?'} holds a non-finite value (${all[i]}) at float index ${i}`);
    }
  }

  const layer = (name: string, i: number, per: number) => parts[name]!.slice(i * per, (i + 1) * per);
  const arrays: Record<string, Float32Tensor> = {};
  arrays['model.embed_tokens.weight'] = { shape: [vocab, dim], data: parts['token_embedding']!.slice() };
  for (let i = 0; i < nLayers; i++) {
    const p = `model.layers.${i}`;
    arrays[`${p}.input_layernorm.weight`] = { shape: [dim], data: layer('rms_att', i, dim) };
    arrays[`${p}.self_attn.q_proj.weight`] = { shape: [dim, dim], data: interleavedToRotateHalf(layer('wq', i, dim * dim), nHeads, hd, dim) };
    arrays[`${p}.self_attn.k_proj.weight`] = { shape: [kvDim, dim], data: interleavedToRotateHalf(layer('wk', i, kvDim * dim), nKv, hd, dim) };
    arrays[`${p}.self_attn.v_proj.weight`] = { shape: [kvDim, dim], data: layer('wv', i, kvDim * dim) };
    arrays[`${p}.self_attn.o_proj.weight`] = { shape: [dim, dim], data: layer('wo', i, dim * dim) };
    arrays[`${p}.post_attention_layernorm.weight`] = { shape: [dim], data: layer('rms_ffn', i, dim) };
    arrays[`${p}.mlp.gate_proj.weight`] = { shape: [hidden, dim], data: layer('w1', i, hidden * dim) };
    arrays[`${p}.mlp.down_proj.weight`] = { shape: [dim, hidden], data: layer('w2', i, dim * hidden) };
    arrays[`${p}.mlp.up_proj.weight`] = { shape: [hidden, dim], data: layer('w3', i, hidden * dim) };
  }
  arrays['model.norm.weight'] = { shape: [dim], data: parts['rms_final']!.slice() };
  if (!shared) arrays['lm_head.weight'] = { shape: [vocab, dim], data: parts['wcls']!.slice() };

  const config: LlamaConfig = {
    vocabSize: vocab,
    hiddenSize: dim,
    intermediateSize: hidden,
    numLayers: nLayers,
    numHeads: nHeads,
    numKvHeads: nKv,
    rmsNormEps: 1e-5, // run.c's rmsnorm
    ropeTheta: 10000, // run.c's rotary base
    tieWordEmbeddings: shared,
    maxPositionEmbeddings: seqLen,
    bosTokenId: 1, // llama2.c's (sentencepiece's) fixed ids
    eosTokenId: 2,
  };
  return { config, arrays };
}

/**
 * Reads a llama2.c checkpoint (.bin) into a Llama config and tf tensors under Hugging Face names,
 * q/k rows permuted to the rotate-half layout. The caller owns the tensors.
 */
export function readLlama2c(path: string): { config: LlamaConfig; tensors: Record<string, tf.Tensor> } {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new QrlhfError(`${path}: cannot read llama2.c checkpoint (${(e as Error).message})`);
  }
  const { config, arrays } = parseLlama2c(buf, path);
  const tensors: Record<string, tf.Tensor> = {};
  for (const [name, a] of Object.entries(arrays)) tensors[name] = tf.tensor(a.data, a.shape, 'float32');
  return { config, tensors };
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

/** `<0xAB>` for byte 0xAB: the byte-fallback piece names of sentencepiece. */
export function bytePiece(b: number): string {
  return `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
}
const BYTE_PIECE = /^<0x([0-9A-F]{2})>$/;

/** A binary min-heap of merge candidates ordered by (score desc, position asc). */
class CandidateHeap {
  private items: { score: number; pos: number; left: number; right: number; leftVer: number; rightVer: number }[] = [];
  get size(): number {
    return this.items.length;
  }
  private before(a: CandidateHeap['items'][number], b: CandidateHeap['items'][number]): boolean {
    return a.score > b.score || (a.score === b.score && a.pos < b.pos);
  }
  push(x: CandidateHeap['items'][number]): void {
    const a = this.items;
    a.push(x);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }
  pop(): CandidateHeap['items'][number] | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.before(a[l]!, a[m]!)) m = l;
        if (r < a.length && this.before(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }
}

/** A llama2.c tokenizer (tok512.bin, tokenizer.bin): pieces, scores, run.c's encoder and decoder. */
export class Llama2cTokenizer {
  /** Pieces as stored: spaces are ' ' (not sentencepiece's '▁'); BOS/EOS are "\n<s>\n", "\n</s>\n". */
  readonly pieces: string[];
  readonly scores: Float32Array;
  readonly maxTokenLength: number;
  readonly bosId = 1;
  readonly eosId = 2;
  readonly unkId = 0;
  private readonly lookup: Map<string, number>;
  /** Byte value -> id of its <0xXX> piece. */
  private readonly byteIds: Int32Array;

  constructor(pieces: string[], scores: Float32Array, maxTokenLength: number, where = '<tokenizer>') {
    this.pieces = pieces;
    this.scores = scores;
    this.maxTokenLength = maxTokenLength;
    this.lookup = new Map();
    // run.c looks pieces up in a sorted copy of the vocabulary; with duplicates the first id wins.
    pieces.forEach((p, i) => {
      if (!this.lookup.has(p)) this.lookup.set(p, i);
    });
    this.byteIds = new Int32Array(256).fill(-1);
    pieces.forEach((p, i) => {
      const m = BYTE_PIECE.exec(p);
      if (m && this.byteIds[parseInt(m[1]!, 16)] === -1) this.byteIds[parseInt(m[1]!, 16)] = i;
    });
    if (pieces.length < 3) throw new QrlhfError(`${where}: a llama2.c tokenizer needs at least <unk>, <s>, </s>; it has ${pieces.length} tokens`);
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  /** Reads a llama2.c tokenizer file; the vocabulary size is however many tokens the file holds. */
  static read(path: string): Llama2cTokenizer {
    let buf: Buffer;
    try {
      buf = readFileSync(path);
    } catch (e) {
      throw new QrlhfError(`${path}: cannot read llama2.c tokenizer (${(e as Error).message})`);
    }
    return Llama2cTokenizer.parse(buf, path);
  }

  static parse(buf: Uint8Array, where = '<buffer>'): Llama2cTokenizer {
    const fail = (msg: string): never => {
      throw new QrlhfError(`${where}: not a llama2.c tokenizer: ${msg}`);
    };
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (buf.length < 4) fail(`file is ${buf.length} bytes, too short for max_token_length`);
    const maxLen = dv.getInt32(0, true);
    if (maxLen <= 0 || maxLen > 1 << 16) fail(`max_token_length = ${maxLen} (expected a small positive integer)`);
    const pieces: string[] = [];
    const scores: number[] = [];
    const utf8 = new TextDecoder('utf-8', { fatal: true });
    let off = 4;
    while (off < buf.length) {
      const i = pieces.length;
      if (off + 8 > buf.length) fail(`token ${i} at byte ${off}: truncated score/length`);
      const score = dv.getFloat32(off, true);
      const len = dv.getInt32(off + 4, true);
      off += 8;
      if (len < 0 || len > maxLen) fail(`token ${i} at byte ${off - 4}: length ${len} outside 0..max_token_length ${maxLen}`);
      if (off + len > buf.length) fail(`token ${i}: its ${len} bytes run past the end of the file`);
      let piece = '';
      try {
        piece = utf8.decode(buf.subarray(off, off + len));
      } catch {
        fail(`token ${i} at byte ${off}: bytes are not valid UTF-8`);
      }
      off += len;
      pieces.push(piece);
      scores.push(score);
    }
    return new Llama2cTokenizer(pieces, Float32Array.from(scores), maxLen, where);
  }

  /** Ids of `text`, as run.c's encode() with bos = eos = 0 (add them yourself). */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    const ids: number[] = [];
    // sentencepiece's add_dummy_prefix: a leading space
    const dummy = this.lookup.get(' ');
    if (dummy !== undefined) ids.push(dummy);
    for (const ch of text) {
      const id = this.lookup.get(ch);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      for (const b of new TextEncoder().encode(ch)) {
        const bid = this.byteIds[b]!;
        ids.push(bid >= 0 ? bid : this.unkId);
      }
    }
    return this.merge(ids);
  }

  /**
   * run.c's merge loop — repeatedly replace the adjacent pair whose concatenation is the
   * highest-scoring piece (the leftmost on ties) — with a heap and a linked list instead of
   * rescanning, which gives the same result in O(n log n).
   */
  private merge(ids: number[]): number[] {
    const n = ids.length;
    if (n < 2) return ids;
    const tok = Int32Array.from(ids);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const ver = new Int32Array(n); // bumped whenever a node changes or dies
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const heap = new CandidateHeap();
    const consider = (l: number, r: number) => {
      const id = this.lookup.get(this.pieces[tok[l]!]! + this.pieces[tok[r]!]!);
      if (id === undefined) return;
      heap.push({ score: this.scores[id]!, pos: l, left: l, right: r, leftVer: ver[l]!, rightVer: ver[r]! });
    };
    for (let i = 0; i + 1 < n; i++) consider(i, i + 1);
    while (heap.size > 0) {
      const c = heap.pop()!;
      if (!alive[c.left] || !alive[c.right] || ver[c.left] !== c.leftVer || ver[c.right] !== c.rightVer || next[c.left] !== c.right) continue;
      const merged = this.lookup.get(this.pieces[tok[c.left]!]! + this.pieces[tok[c.right]!]!)!;
      tok[c.left] = merged;
      ver[c.left]!++;
      alive[c.right] = 0;
      ver[c.right]!++;
      const nr = next[c.right]!;
      next[c.left] = nr;
      if (nr >= 0) prev[nr] = c.left;
      if (prev[c.left]! >= 0) consider(prev[c.left]!, c.left);
      if (nr >= 0) consider(c.left, nr);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) out.push(tok[i]!);
    return out;
  }

  /** Whether an id is one of the control tokens (<unk>, <s>, </s>). */
  isSpecial(id: number): boolean {
    return id === this.unkId || id === this.bosId || id === this.eosId;
  }

  /**
   * Text of `ids`, decoded the way the equivalent Hugging Face tokenizer.json decodes (see
   * toTokenizerJson): control tokens appear as <unk>/<s>/</s> unless skipped, runs of <0xXX> bytes
   * become their UTF-8 text (invalid bytes U+FFFD), and one leading space is dropped.
   */
  decode(ids: number[], opts: { skipSpecial?: boolean } = {}): string {
    const parts: string[] = [];
    let bytes: number[] = [];
    const flush = () => {
      if (bytes.length > 0) parts.push(new TextDecoder().decode(Uint8Array.from(bytes)));
      bytes = [];
    };
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.pieces.length) {
        throw new QrlhfError(`token id ${id} is outside the vocabulary (0..${this.pieces.length - 1})`);
      }
      if (this.isSpecial(id)) {
        if (opts.skipSpecial) continue;
        flush();
        parts.push(hfPieceName(this.pieces[id]!, id));
        continue;
      }
      const m = BYTE_PIECE.exec(this.pieces[id]!);
      if (m) {
        bytes.push(parseInt(m[1]!, 16));
        continue;
      }
      flush();
      parts.push(this.pieces[id]!);
    }
    flush();
    const s = parts.join('');
    return s.startsWith(' ') ? s.slice(1) : s;
  }

  /**
   * The equivalent Hugging Face tokenizer.json (Llama style): BPE with byte fallback over the same
   * vocabulary ('▁' for space), a normalizer that prepends '▁' and turns spaces into '▁', merges
   * for every split of every piece into two pieces, ranked by the merged piece's score (highest
   * first) — which is the pair llama2.c's loop picks — and the decoder that undoes it.
   */
  toTokenizerJson(): Record<string, unknown> {
    const SP = '\u2581';
    const vocab: Record<string, number> = {};
    const names = this.pieces.map((p, i) => (this.isSpecial(i) ? hfPieceName(p, i) : p.replaceAll(' ', SP)));
    names.forEach((name, i) => {
      if (!(name in vocab)) vocab[name] = i;
    });
    const merges: { left: string; right: string; score: number; id: number; l: number; r: number }[] = [];
    names.forEach((name, id) => {
      if (this.isSpecial(id) || BYTE_PIECE.test(name)) return;
      const cps = Array.from(name);
      for (let k = 1; k < cps.length; k++) {
        const left = cps.slice(0, k).join('');
        const right = cps.slice(k).join('');
        const l = vocab[left];
        const r = vocab[right];
        if (l === undefined || r === undefined || this.isSpecial(l) || this.isSpecial(r)) continue;
        merges.push({ left, right, score: this.scores[id]!, id, l, r });
      }
    });
    merges.sort((a, b) => b.score - a.score || a.id - b.id || a.l - b.l || a.r - b.r);
    const special = [0, 1, 2].map((id) => ({
      id, content: names[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
    }));
    return {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: special,
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'Prepend', prepend: SP },
          { type: 'Replace', pattern: { String: ' ' }, content: SP },
        ],
      },
      pre_tokenizer: null,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: names[1], type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [
          { SpecialToken: { id: names[1], type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: names[1], type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
        ],
        special_tokens: { [names[1]!]: { id: names[1], ids: [1], tokens: [names[1]] } },
      },
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: SP }, content: ' ' },
          { type: 'ByteFallback' },
          { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 },
        ],
      },
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: names[0],
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: true,
        byte_fallback: true,
        ignore_merges: false,
        vocab,
        merges: merges.map((m) => [m.left, m.right]),
      },
    };
  }
}

/** The Hugging Face names of llama2.c's control pieces ("\n<s>\n" -> "<s>"). */
function hfPieceName(piece: string, id: number): string {
  const t = piece.trim();
  if (t.length > 0) return t;
  return ['<unk>', '<s>', '</s>'][id] ?? piece;
}
