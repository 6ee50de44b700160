/**
 * A small byte-level BPE trainer and the tokenizer.json it writes: a Hugging Face `BPE` model with
 * a `ByteLevel` pre-tokenizer and decoder (the GPT-2 scheme), so any text round-trips exactly
 * (every byte is in the alphabet), plus the special tokens `<s>`, `</s>`, `<pad>` and the two
 * dialogue markers as added tokens, so a prompt always ends on a token boundary.
 */
import type { Rng } from '@qrlhf/core';
import { ASSISTANT_TAG, HUMAN_TAG } from './text.js';

export const BOS = '<s>';
export const EOS = '</s>';
export const PAD = '<pad>';
export const SPECIAL_TOKENS = [BOS, EOS, PAD] as const;
export const MARKER_TOKENS = [HUMAN_TAG, ASSISTANT_TAG] as const;

export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

export interface TokenizerJson {
  version: string;
  truncation: null;
  padding: null;
  added_tokens: AddedTokenJson[];
  normalizer: null;
  pre_tokenizer: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  post_processor: null;
  decoder: { type: 'ByteLevel'; add_prefix_space: boolean; trim_offsets: boolean; use_regex: boolean };
  model: {
    type: 'BPE';
    dropout: null;
    unk_token: null;
    continuing_subword_prefix: null;
    end_of_word_suffix: null;
    fuse_unk: boolean;
    byte_fallback: boolean;
    ignore_merges: boolean;
    vocab: Record<string, number>;
    merges: string[];
  };
}

/**
 * The GPT-2 byte-to-character table: printable bytes stand for themselves, the others are moved
 * to code points from 256 up, so every byte is a visible, non-space character.
 */
export function byteToUnicode(): string[] {
  const table = new Array<string>(256);
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let extra = 0;
  for (let b = 0; b < 256; b++) table[b] = String.fromCodePoint(printable(b) ? b : 256 + extra++);
  return table;
}

/** The GPT-2 pre-tokenizer pattern (the one `ByteLevel` with use_regex applies). */
export const PRETOKEN_RE = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const ADDED = [...SPECIAL_TOKENS, ...MARKER_TOKENS];

/** Splits text on the added tokens, then pre-tokenizes the pieces between them into byte symbols. */
export function pretokenize(text: string, b2u: string[]): string[] {
  const out: string[] = [];
  const enc = new TextEncoder();
  let rest = text;
  while (rest.length > 0) {
    let at = -1;
    let tok = '';
    for (const a of ADDED) {
      const i = rest.indexOf(a);
      if (i >= 0 && (at < 0 || i < at || (i === at && a.length > tok.length))) { at = i; tok = a; }
    }
    const piece = at < 0 ? rest : rest.slice(0, at);
    for (const m of piece.matchAll(PRETOKEN_RE)) {
      out.push(Array.from(enc.encode(m[0]), (b) => b2u[b]!).join(''));
    }
    if (at < 0) break;
    rest = rest.slice(at + tok.length);
  }
  return out;
}

/**
 * Learns merges on pre-token counts: repeatedly merges the most frequent adjacent pair (ties:
 * the lexicographically smallest "left right"), until `numMerges` merges or no pair occurs twice.
 */
export function trainBpe(counts: Map<string, number>, numMerges: number): [string, string][] {
  const words: { syms: string[]; n: number }[] = [];
  for (const [w, n] of [...counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))) {
    words.push({ syms: Array.from(w), n });
  }
  const merges: [string, string][] = [];
  while (merges.length < numMerges) {
    const pairs = new Map<string, number>();
    for (const { syms, n } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const key = syms[i] + ' ' + syms[i + 1];
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    }
    let best = '';
    let bestN = 1;
    for (const [k, n] of pairs) {
      if (n > bestN || (n === bestN && bestN > 1 && k < best)) { best = k; bestN = n; }
    }
    if (bestN < 2) break;
    const [l, r] = best.split(' ') as [string, string];
    merges.push([l, r]);
    const merged = l + r;
    for (const w of words) {
      const s = w.syms;
      const out: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === l && s[i + 1] === r) { out.push(merged); i++; }
        else out.push(s[i]!);
      }
      w.syms = out;
    }
  }
  return merges;
}

/** Assembles a tokenizer.json from learned merges. Ids: specials, markers, 256 bytes, merges. */
export function tokenizerJsonFromMerges(merges: [string, string][]): TokenizerJson {
  const vocab: Record<string, number> = {};
  const added: AddedTokenJson[] = [];
  let id = 0;
  for (const t of ADDED) {
    vocab[t] = id;
    added.push({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false,
      special: (SPECIAL_TOKENS as readonly string[]).includes(t) });
    id++;
  }
  for (const c of byteToUnicode()) vocab[c] = id++;
  for (const [l, r] of merges) {
    const t = l + r;
    if (!(t in vocab)) vocab[t] = id++;
  }
  const byteLevel = { type: 'ByteLevel' as const, add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: { ...byteLevel },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: merges.map(([l, r]) => `${l} ${r}`),
    },
  };
}

/**
 * Trains the world's tokenizer on `nDocs` texts drawn with `sampleText`, plus every world word
 * after a space, twice (a merge needs a pair seen twice), so the words that the sample misses or
 * sees rarely (they occur in garbled text) still get merges if the budget allows.
 */
export function buildWorldTokenizer(sampleText: (rng: Rng) => string, words: string[], rng: Rng, vocabSize: number, nDocs = 3000): TokenizerJson {
  const b2u = byteToUnicode();
  const counts = new Map<string, number>();
  const add = (t: string) => {
    for (const p of pretokenize(t, b2u)) counts.set(p, (counts.get(p) ?? 0) + 1);
  };
  for (let i = 0; i < nDocs; i++) add(sampleText(rng));
  for (const w of words) add(` ${w} ${w}`);
  const numMerges = vocabSize - ADDED.length - 256;
  return tokenizerJsonFromMerges(trainBpe(counts, numMerges));
}

export function worldTokenizerConfig(): Record<string, unknown> {
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: BOS,
    eos_token: EOS,
    pad_token: PAD,
    unk_token: null,
    add_bos_token: true,
    add_eos_token: false,
    clean_up_tokenization_spaces: false,
    model_max_length: 512,
  };
}
