/**
 * SFT data: prompt/response pairs turned into token ids with a loss mask, a held-out split, a
 * deterministic example stream, and right-padded micro-batches.
 *
 * Layout of one example (SPEC §3): [BOS] prompt response [EOS]. The loss mask is 1 on the
 * response tokens and the EOS, 0 on BOS and the prompt, so the loss is the mean cross-entropy of
 * the response given the prompt.
 *
 * With a chat template (chatTemplate 'auto' on a model that has one, or a PATH) the dialogue's
 * turns are rendered by the template: the prompt is every turn before the final assistant turn
 * plus the generation prompt, the response is the final turn's text and the template's own
 * end-of-turn token (<|im_end|>, <|eot_id|>, </s>), so no EOS is appended; BOS only where the
 * tokenizer adds one and the template did not write it (formatNeedsBos).
 */
import { QrlhfError, Rng, formatNeedsBos, type ChatMessage, type DialogueFormat } from '@qrlhf/core';

/** What tokenising needs from a tokenizer (the core `Tokenizer` satisfies it). */
export interface SftTokenizer {
  readonly bosId: number;
  readonly eosId: number;
  /** Whether the tokenizer's convention starts a text with BOS (read for chat templates only). */
  readonly defaultAddBos?: boolean;
  encode(text: string, opts?: { addBos?: boolean }): number[];
}

/** One example's texts and its ends: BOS before the prompt, EOS after the response (both by default). */
export interface SftText {
  prompt: string;
  response: string;
  bos?: boolean;
  eos?: boolean;
}

/**
 * The texts of SFT examples in `format`. HH: the pairs as read (BOS + prompt + response + EOS, as
 * always); a template: prompt and reply from format.split(messages), no EOS when the reply ends
 * with the template's end-of-turn token.
 */
export function formatExamples(
  tok: SftTokenizer,
  items: readonly { prompt: string; response: string; messages?: ChatMessage[] }[],
  format: DialogueFormat,
): SftText[] {
  if (!format.template) return items.map(({ prompt, response }) => ({ prompt, response }));
  return items.map((it, i) => {
    if (!it.messages) throw new QrlhfError(`sft example ${i}: a chat template needs the dialogue's turns (messages)`);
    const s = format.split(it.messages);
    return { prompt: s.prompt, response: s.reply, bos: formatNeedsBos(format, s.prompt, tok.defaultAddBos ?? true, true), eos: !s.endsTurn };
  });
}

export interface SftExample {
  /** [BOS, ...prompt, ...response, EOS] (with a chat template: BOS and EOS only where needed, see formatExamples) */
  ids: number[];
  /** Number of leading tokens (BOS + prompt) that carry no loss; the rest (response + EOS) do. */
  promptLength: number;
}

export interface TokenizeStats {
  /** Rows read. */
  total: number;
  /** Rows dropped because BOS + prompt + response + EOS exceeded maxLength (filtered, not truncated). */
  tooLong: number;
  /** Rows where encode(prompt + response) did not start with encode(prompt), so the two parts
   *  were encoded separately (see tokenizeExample). */
  boundaryMismatch: number;
}

function startsWith(xs: number[], prefix: number[]): boolean {
  if (prefix.length > xs.length) return false;
  for (let i = 0; i < prefix.length; i++) if (xs[i] !== prefix[i]) return false;
  return true;
}

/**
 * Tokenises one prompt/response pair. The response's tokens are taken from the encoding of the
 * whole text (prompt + response) after the prompt's own tokens, so they are the tokens the model
 * would see in the whole dialogue and the tokens it should emit after the prompt at generation
 * time (encoding the response alone would give sentencepiece tokenizers a spurious leading
 * space). When the whole encoding does not begin with the prompt's encoding (a merge across the
 * boundary), the two parts are encoded separately; `mismatch` reports it.
 */
export function tokenizeExample(
  tok: SftTokenizer,
  prompt: string,
  response: string,
  ends: { bos?: boolean; eos?: boolean } = {},
): { example: SftExample; mismatch: boolean } {
  const p = tok.encode(prompt, { addBos: false });
  const whole = tok.encode(prompt + response, { addBos: false });
  let r: number[];
  let mismatch = false;
  if (startsWith(whole, p)) {
    r = whole.slice(p.length);
  } else {
    mismatch = true;
    r = tok.encode(response, { addBos: false });
  }
  const bos = (ends.bos ?? true) ? [tok.bosId] : [];
  const eos = (ends.eos ?? true) ? [tok.eosId] : [];
  return { example: { ids: [...bos, ...p, ...r, ...eos], promptLength: bos.length + p.length }, mismatch };
}

/** Tokenises all pairs, filtering out those longer than maxLength tokens (counted in the stats);
 *  `kept[i]` is the index in `pairs` of `examples[i]`. */
export function tokenizeExamples(
  tok: SftTokenizer,
  pairs: readonly SftText[],
  maxLength: number,
): { examples: SftExample[]; kept: number[]; stats: TokenizeStats } {
  const examples: SftExample[] = [];
  const kept: number[] = [];
  const stats: TokenizeStats = { total: pairs.length, tooLong: 0, boundaryMismatch: 0 };
  pairs.forEach(({ prompt, response, bos, eos }, i) => {
    const { example, mismatch } = tokenizeExample(tok, prompt, response, { bos, eos });
    if (mismatch) stats.boundaryMismatch++;
    if (example.ids.length > maxLength) {
      stats.tooLong++;
      return;
    }
    examples.push(example);
    kept.push(i);
  });
  return { examples, kept, stats };
}

/**
 * Splits examples into train and held-out sets: a seeded shuffle of the indices, the first
 * round(fraction * n) (at least 1 when fraction > 0 and n > 1) held out. The order inside each
 * set follows the original file order, so the split depends only on (n, fraction, seed).
 */
export function splitHeldOut<T>(items: readonly T[], fraction: number, seed: number): { train: T[]; heldOut: T[] } {
  const n = items.length;
  if (fraction <= 0 || n < 2) return { train: [...items], heldOut: [] };
  let k = Math.round(fraction * n);
  k = Math.min(Math.max(k, 1), n - 1);
  const order = new Rng(`${seed}:heldout-split`).shuffle([...Array(n).keys()]);
  const held = new Set(order.slice(0, k));
  const train: T[] = [];
  const heldOut: T[] = [];
  items.forEach((x, i) => (held.has(i) ? heldOut : train).push(x));
  return { train, heldOut };
}

/**
 * The training stream: epoch e visits the train examples in the order of a permutation drawn
 * from Rng(`${seed}:epoch:${e}`); the stream is the concatenation of the epochs. Example number
 * g of the stream is therefore a pure function of (seed, n, g), so a resumed run only needs the
 * stream position to continue exactly where it stopped.
 */
export class ExampleStream {
  private cache = new Map<number, number[]>();
  constructor(
    readonly size: number,
    readonly seed: number,
  ) {
    if (size <= 0) throw new QrlhfError('ExampleStream: no training examples');
  }

  permutation(epoch: number): number[] {
    let p = this.cache.get(epoch);
    if (!p) {
      p = new Rng(`${this.seed}:epoch:${epoch}`).shuffle([...Array(this.size).keys()]);
      this.cache.clear(); // only the current epoch (and maybe the next) are ever needed
      this.cache.set(epoch, p);
    }
    return p;
  }

  /** Indices into the train set of stream positions [start, end). */
  slice(start: number, end: number): number[] {
    const out: number[] = [];
    for (let g = start; g < end; g++) {
      const epoch = Math.floor(g / this.size);
      out.push(this.permutation(epoch)[g - epoch * this.size]!);
    }
    return out;
  }
}

/** A right-padded micro-batch as plain arrays (turned into tensors by the trainer). */
export interface PaddedBatch {
  batch: number;
  length: number;
  /** int32 [batch * length], pad id on padding */
  ids: Int32Array;
  /** float32 [batch * length]: 1 on real tokens, 0 on padding */
  attention: Float32Array;
  /** float32 [batch * length]: 1 on tokens whose prediction is scored (response + EOS) */
  lossMask: Float32Array;
  /** Number of scored tokens (sum of lossMask). */
  lossTokens: number;
  /** Number of real tokens (sum of attention). */
  tokens: number;
}

/** Pads examples on the right to the longest one. */
export function padBatch(examples: readonly SftExample[], padId: number): PaddedBatch {
  const batch = examples.length;
  const length = Math.max(2, ...examples.map((e) => e.ids.length));
  const ids = new Int32Array(batch * length).fill(padId);
  const attention = new Float32Array(batch * length);
  const lossMask = new Float32Array(batch * length);
  let lossTokens = 0;
  let tokens = 0;
  examples.forEach((e, b) => {
    const o = b * length;
    for (let t = 0; t < e.ids.length; t++) {
      ids[o + t] = e.ids[t]!;
      attention[o + t] = 1;
      if (t >= e.promptLength) {
        lossMask[o + t] = 1;
        lossTokens++;
      }
    }
    tokens += e.ids.length;
  });
  return { batch, length, ids, attention, lossMask, lossTokens, tokens };
}

/** Number of scored tokens of an example (response + EOS). */
export function lossTokenCount(e: SftExample): number {
  return e.ids.length - e.promptLength;
}
