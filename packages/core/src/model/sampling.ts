/**
 * Decoding with a KV cache, and the per-token log-probabilities that SFT and RLOO train through.
 */
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import type { Rng } from '../random.js';
import type { LlamaModel } from './llama.js';
import { eosIds } from './config.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy (argmax, no random draws). */
  temperature: number;
  /** Keep only the k most likely tokens (after temperature). */
  topK?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (after top-k). */
  topP?: number;
  /** Stops a row when drawn (and is included in its tokens); default every eos id of the model's config; [] never. */
  eosTokenId?: number | number[];
  /** Called with a row's new tokens after each draw; true stops that row. */
  stop?: (generatedIds: number[]) => boolean;
  rng: Rng;
  /**
   * One generator per row, used instead of `rng` when given: row b's draws then depend only on
   * rowRngs[b] (and its own tokens), not on which other rows share the batch. This is what lets a
   * request served alone (an engine's per-request `seed`) reproduce the same row of a larger batch.
   */
  rowRngs?: Rng[];
}

export interface GenerateResult {
  /** New tokens only, EOS included when hit. */
  tokens: number[][];
  finishedWithEos: boolean[];
}

/**
 * Continues each prompt (left-padded together into one batch) until EOS, `stop`, or maxNewTokens.
 * Every random draw comes from opts.rng, one per active row per step, so the same seed and inputs
 * give the same tokens. An enabled LoRA adapter is applied unmerged to the prompt and merged into
 * the decoding weights for the new tokens (rebuilt whenever the adapter or weights have changed).
 * Async because each step's logits are read with `await data()`: a GPU backend (webgpu) has no
 * synchronous read.
 */
export async function generate(model: LlamaModel, prompts: number[][], opts: GenerateOptions): Promise<GenerateResult> {
  const V = model.config.vocabSize;
  validateGenerate(prompts, opts, V);
  const B = prompts.length;
  const eos = new Set(opts.eosTokenId === undefined ? eosIds(model.config) : [opts.eosTokenId].flat());
  const tokens: number[][] = prompts.map(() => []);
  const finishedWithEos = prompts.map(() => false);
  if (opts.maxNewTokens === 0) return { tokens, finishedWithEos };

  const L = Math.max(...prompts.map((p) => p.length));
  // The pad id is never seen (its mask is 0); any valid id will do.
  const pad = model.config.padTokenId ?? 0;
  const mask: number[][] = prompts.map((p) => [...Array<number>(L - p.length).fill(0), ...Array<number>(p.length).fill(1)]);
  const done = prompts.map(() => false);
  const cache = model.createCache(B, L + opts.maxNewTokens);

  let logits: tf.Tensor2D | null = null;
  try {
    // The prompts in one step() (its products are large enough to run well as they are); then one
    // decode() per token, on fused weights with the adapter merged (LlamaModel.decodingWeights).
    const ids = prompts.map((p) => [...Array<number>(L - p.length).fill(pad), ...p]);
    logits = tf.tidy(() => {
      const out = model.step(tf.tensor2d(ids, [B, L], 'int32'), cache, tf.tensor2d(mask, [B, L]), { lastOnly: true });
      return out.reshape([B, V]) as tf.Tensor2D;
    });
    for (let n = 0; n < opts.maxNewTokens; n++) {
      const all = (await logits.data()) as Float32Array;
      logits.dispose();
      logits = null;
      const next: number[] = [];
      for (let b = 0; b < B; b++) {
        const wasActive = !done[b];
        if (wasActive) {
          const tok = chooseToken(all.subarray(b * V, (b + 1) * V), opts.rowRngs ? { ...opts, rng: opts.rowRngs[b]! } : opts);
          tokens[b]!.push(tok);
          if (eos.has(tok)) {
            done[b] = true;
            finishedWithEos[b] = true;
          } else if (opts.stop?.(tokens[b]!.slice())) {
            done[b] = true;
          }
          next.push(tok);
        } else {
          next.push(pad);
        }
        // A finished row keeps being fed pads that nothing attends to.
        mask[b]!.push(wasActive ? 1 : 0);
      }
      if (done.every(Boolean) || n === opts.maxNewTokens - 1) break;
      logits = model.decode(next, cache, mask);
    }
  } finally {
    logits?.dispose();
    cache.dispose();
  }
  return { tokens, finishedWithEos };
}

function validateGenerate(prompts: number[][], o: GenerateOptions, V: number): void {
  if (!Array.isArray(prompts) || prompts.length === 0) throw new QrlhfError('generate: expected at least one prompt');
  prompts.forEach((p, i) => {
    if (!Array.isArray(p) || p.length === 0) throw new QrlhfError(`generate: prompt ${i} is empty (it needs at least a BOS token)`);
    const bad = p.findIndex((x) => !Number.isInteger(x) || x < 0 || x >= V);
    if (bad >= 0) throw new QrlhfError(`generate: prompt ${i}, position ${bad}: token ${p[bad]} is not an id below vocab size ${V}`);
  });
  if (!Number.isInteger(o.maxNewTokens) || o.maxNewTokens < 0) {
    throw new QrlhfError(`generate: maxNewTokens must be a non-negative integer, got ${o.maxNewTokens}`);
  }
  if (!(o.temperature >= 0) || !Number.isFinite(o.temperature)) {
    throw new QrlhfError(`generate: temperature must be >= 0, got ${o.temperature}`);
  }
  if (o.topK !== undefined && (!Number.isInteger(o.topK) || o.topK < 1)) {
    throw new QrlhfError(`generate: topK must be a positive integer, got ${o.topK}`);
  }
  if (o.topP !== undefined && !(o.topP > 0 && o.topP <= 1)) throw new QrlhfError(`generate: topP must be in (0, 1], got ${o.topP}`);
  if (o.rowRngs !== undefined && o.rowRngs.length !== prompts.length) {
    throw new QrlhfError(`generate: rowRngs has ${o.rowRngs.length} generators for ${prompts.length} prompts (one per row)`);
  }
}

/** Index of the largest value (the first on ties). */
function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/**
 * One token from a row of logits: greedy, or a draw at `temperature` from the top-k / top-p
 * truncated distribution, in that order (as transformers applies its logits warpers).
 */
export function chooseToken(row: Float32Array, o: Pick<GenerateOptions, 'temperature' | 'topK' | 'topP' | 'rng'>): number {
  if (o.temperature === 0) return argmax(row);
  const V = row.length;
  const k = o.topK !== undefined && o.topK < V ? o.topK : V;
  const p = o.topP ?? 1;
  if (k === V && p >= 1) return drawFull(row, o.temperature, o.rng);
  // Candidates in order of decreasing logit (ties by index); the full vocabulary only when needed.
  let cand: number[];
  const byLogit = (a: number, b: number) => row[b]! - row[a]! || a - b;
  if (k < V) {
    const kth = Float32Array.from(row).sort()[V - k]!;
    cand = [];
    for (let i = 0; i < V; i++) if (row[i]! >= kth) cand.push(i);
    cand.sort(byLogit);
    cand.length = k;
  } else if (p < 1) {
    cand = Array.from({ length: V }, (_, i) => i).sort(byLogit);
  } else {
    cand = Array.from({ length: V }, (_, i) => i);
  }
  const top = row[argmax(row)]!;
  const w = cand.map((i) => Math.exp((row[i]! - top) / o.temperature));
  let total = w.reduce((a, b) => a + b, 0);
  if (p < 1) {
    // cand is sorted here: cut after the prefix whose mass first reaches p.
    let acc = 0;
    let keep = 0;
    while (keep < w.length && acc < p * total) acc += w[keep++]!;
    cand.length = keep;
    w.length = keep;
    total = acc;
  }
  let u = o.rng.next() * total;
  for (let j = 0; j < cand.length; j++) {
    u -= w[j]!;
    if (u < 0) return cand[j]!;
  }
  return cand[cand.length - 1]!;
}

/** drawFull's weights, reused across calls (sampling runs once per row per token: RLOO draws ~1,500 a step). */
let scratch = new Float64Array(0);

/**
 * A draw from the whole vocabulary at `temperature`: chooseToken's general path with every token
 * a candidate (its weights exp((x - max) / T), their sum from the left, the walk down the
 * cumulative sum) in the same float64 operations and order, so it picks the same token for the
 * same row and draw, on a typed array instead of candidate and weight arrays built per call.
 */
function drawFull(row: Float32Array, temperature: number, rng: Rng): number {
  const V = row.length;
  if (scratch.length < V) scratch = new Float64Array(V);
  const w = scratch;
  const top = row[argmax(row)]!;
  let total = 0;
  for (let i = 0; i < V; i++) {
    const x = Math.exp((row[i]! - top) / temperature);
    w[i] = x;
    total += x;
  }
  let u = rng.next() * total;
  for (let j = 0; j < V; j++) {
    u -= w[j]!;
    if (u < 0) return j;
  }
  return V - 1;
}

export interface LogProbOptions {
  /** LoRA dropout on. */
  training?: boolean;
  /** Log-probs of the distribution at this temperature (the one sampled from); default 1. */
  temperature?: number;
}

/**
 * log pi(ids[:, t] | ids[:, <t]) for t >= 1 as [B, T-1], zero where targetsMask is 0.
 * targetsMask is [B, T-1] (aligned with the targets ids[:, 1:]) or [B, T] (aligned with ids; its
 * first column is dropped). Differentiable with respect to the LoRA variables.
 *
 * The target's logit is taken as h · w_y with w_y gathered from the (frozen) head matrix rather
 * than picked out of the [N, V] logits: no one-hot tensor, and no gradient of a gather (which needs
 * UnsortedSegmentSum, absent on wasm) when the head is not trained.
 */
export function sequenceLogProbs(
  model: LlamaModel,
  ids: tf.Tensor2D,
  mask: tf.Tensor2D,
  targetsMask: tf.Tensor2D,
  opts: LogProbOptions = {},
): tf.Tensor2D {
  return targetLogProbs(model, ids, mask, targetsMask, opts, false).logp;
}

/**
 * sequenceLogProbs and, from the same logits, the entropy of each next-token distribution at
 * the temperature, H_t = -Σ_v p_v log p_v with log p = z/T - logsumexp(z/T); both [B, T-1], zero
 * off the targets mask. The log-probs are sequenceLogProbs' to the bit (one computation).
 */
export function tokenLogProbsAndEntropy(
  model: LlamaModel,
  ids: tf.Tensor2D,
  mask: tf.Tensor2D,
  targetsMask: tf.Tensor2D,
  opts: LogProbOptions = {},
): { logp: tf.Tensor2D; entropy: tf.Tensor2D } {
  const r = targetLogProbs(model, ids, mask, targetsMask, opts, true);
  return { logp: r.logp, entropy: r.entropy! };
}

function targetLogProbs(
  model: LlamaModel,
  ids: tf.Tensor2D,
  mask: tf.Tensor2D,
  targetsMask: tf.Tensor2D,
  opts: LogProbOptions,
  withEntropy: boolean,
): { logp: tf.Tensor2D; entropy?: tf.Tensor2D } {
  const [B, T] = ids.shape;
  const d = model.config.hiddenSize;
  if (T < 2) throw new QrlhfError(`sequenceLogProbs: sequences need at least 2 tokens, got ${T}`);
  const [mb, mt] = targetsMask.shape;
  if (mb !== B || (mt !== T - 1 && mt !== T)) {
    throw new QrlhfError(`sequenceLogProbs: targetsMask must be [${B}, ${T - 1}] or [${B}, ${T}], got [${targetsMask.shape}]`);
  }
  const temp = opts.temperature ?? 1;
  if (!(temp > 0)) throw new QrlhfError(`sequenceLogProbs: temperature must be > 0, got ${temp}`);
  return tf.tidy(() => {
    const h = model.hidden(ids, { mask, training: opts.training ?? false });
    const tm = tf.cast(mt === T ? targetsMask.slice([0, 1], [B, T - 1]) : targetsMask, 'float32');
    let hp = h.slice([0, 0, 0], [B, T - 1, d]).reshape([B * (T - 1), d]);
    let targets = tf.cast(ids.slice([0, 1], [B, T - 1]), 'int32').reshape([-1]);
    // The head and the softmax over the vocabulary only at the mask's positions (targetRows).
    const rows = targetRows(tm as tf.Tensor2D);
    const spread = (x: tf.Tensor) => (rows ? rows.spread(x as tf.Tensor1D) : x).reshape([B, T - 1]);
    if (rows) {
      hp = tf.gather(hp, rows.picked);
      targets = tf.gather(targets, rows.picked);
    }
    let logits = model.head(hp);
    let targetLogit = tf.sum(tf.mul(hp, tf.gather(model.headWeight(), targets)), 1);
    if (temp !== 1) {
      logits = tf.div(logits, temp);
      targetLogit = tf.div(targetLogit, temp);
    }
    const lse = logSumExpRows(logits);
    const lp = spread(tf.sub(targetLogit, lse));
    const logp = tf.mul(lp, tm) as tf.Tensor2D;
    if (!withEntropy) return { logp };
    const logSm = tf.sub(logits, lse.reshape([-1, 1]));
    const ent = spread(tf.neg(tf.sum(tf.mul(tf.exp(logSm), logSm), 1)));
    return { logp, entropy: tf.mul(ent, tm) as tf.Tensor2D };
  });
}

/**
 * The positions of a [B, T-1] targets mask worth a head: the head product and the log-softmax
 * over the vocabulary cost about as much per row as a layer of a small model, and in RLOO about
 * half the rows are prompt positions that the mask zeroes anyway. `picked` are the flat indices
 * of the nonzero entries; spread(x) puts per-picked-row values x [n] back as [B·(T-1)] with zeros
 * elsewhere (a gather from [x; 0], so gradients flow back to the picked rows only, as the mask's
 * multiply sent them before). Every row is computed as on the full matrix, so the values are the
 * same. Null (the full computation runs) when under a quarter of the rows would be skipped, or
 * when the mask cannot be read synchronously (a tensor already on a GPU).
 */
export function targetRows(tm: tf.Tensor2D): { picked: tf.Tensor1D; spread: (x: tf.Tensor1D) => tf.Tensor1D } | null {
  let v: ArrayLike<number>;
  try {
    v = tm.dataSync();
  } catch {
    return null;
  }
  const n = v.length;
  const picked: number[] = [];
  for (let i = 0; i < n; i++) if (v[i] !== 0) picked.push(i);
  if (picked.length === 0 || picked.length > 0.75 * n) return null;
  const back = new Int32Array(n).fill(picked.length);
  picked.forEach((p, j) => (back[p] = j));
  return {
    picked: tf.tensor1d(picked, 'int32'),
    spread: (x) => tf.gather(tf.concat([x, tf.zeros([1])]), tf.tensor1d(back, 'int32')) as tf.Tensor1D,
  };
}

/**
 * log Σ_v exp(x[n, v]) for x [N, V], as [N], with its gradient written out: d/dx = softmax(x) · dy.
 * The max subtracted for stability is a constant to the gradient (the result does not depend on
 * it), so nothing flows through it; differentiating tf.logSumExp instead goes through its max,
 * which costs an Equal and more over the whole [N, V]. The forward's exp(x - max) and its row sums
 * are kept for the backward, which is then one multiply.
 */
const logSumExpRows = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
  const m = tf.max(x, 1, true);
  const e = tf.exp(tf.sub(x, m));
  const s = tf.sum(e, 1, true);
  save([e, s]);
  return {
    value: tf.add(tf.log(s), m).reshape([-1]) as tf.Tensor1D,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [es, ss] = saved as [tf.Tensor, tf.Tensor];
      return tf.mul(es, tf.div(dy.reshape([-1, 1]), ss));
    },
  };
}) as (x: tf.Tensor) => tf.Tensor1D;
