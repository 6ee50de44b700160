/**
 * One RLOO step in memory (SPEC §6), without files: rollouts → reward quantiles → utility → KL to
 * the reference (the same model with its LoRA adapter off) → leave-one-out advantages → REINFORCE
 * (or PPO-clipped) gradient of the adapter → AdamW. runRloo wraps this with data, logging and
 * checkpoints; tests drive it directly.
 */
import * as tf from '@tensorflow/tfjs';
import {
  AdamW,
  QrlhfError,
  accumulateGradients,
  applyGradients,
  checkField,
  quantileMetric,
  sequenceLogProbs,
  tokenLogProbsAndEntropy,
  withLoraDisabled,
  type LlamaModel,
  type Metrics,
  type Rng,
  type Tokenizer,
} from '@qrlhf/core';
import type { Utility } from '@qrlhf/qrm';
import { leaveOneOutAdvantages, ppoClipLoss, ppoStatSums, reinforceLoss, rlooRewards, sequenceKl, type KlEstimator } from './objective.js';
import { RLOO_SCHEMA, type RlooConfig } from './config.js';
import type { RlPrompt } from './prompts.js';
import { checkQuantiles, type RewardSource } from './reward.js';
import { localEngine, type RolloutEngine } from './engine.js';

/** The RLOO settings one step uses: a view of the run's config (RLOO_SCHEMA holds their defaults, bounds and docs). */
export type RlooSettings = Pick<
  RlooConfig,
  'k' | 'betaKl' | 'klEstimator' | 'missingEosPenalty' | 'maxNewTokens' | 'temperature' | 'topP' | 'topK' | 'ppoEpochs' |
  'clipRange' | 'microBatchSize' | 'generationBatchSize' | 'gradClip'
>;

/** One batch of rollouts with everything the update needs; row g*k + j is response j of prompt g. */
export interface RolloutBatch {
  prompts: RlPrompt[];
  k: number;
  /** New tokens of each response, EOS included when drawn. */
  responses: number[][];
  eos: boolean[];
  /** Decoded responses (no EOS, no special tokens): what the reward source scored. */
  texts: string[];
  quantiles: Float32Array[];
  utilities: Float64Array;
  /** Per response token: log pi_old (the policy that sampled) and log pi_ref. */
  logp: Float32Array[];
  logpRef: Float32Array[];
  /** Per row: sum over its tokens of the policy's entropy. */
  entropySum: Float64Array;
  /** Per row: sum_t kl_t with the configured estimator. */
  kl: Float64Array;
  penalties: Float64Array;
  rewards: Float64Array;
  advantages: Float64Array;
}

type Decoder = Pick<Tokenizer, 'eosId' | 'decode'>;

export interface RlooLearnerOptions {
  model: LlamaModel;
  tokenizer: Decoder;
  reward: RewardSource;
  utility: Utility;
  settings: RlooSettings;
  /** Every random draw (sampling; LoRA dropout takes the adapter's own). */
  rng: Rng;
  /** AdamW over the adapter's variables (the learner does not own it). */
  optimizer: AdamW;
  /** Where rollouts are sampled (default: in this process, on `model`). */
  engine?: RolloutEngine;
}

interface SeqTensors {
  ids: tf.Tensor2D;
  attn: tf.Tensor2D;
  /** [n, T-1], 1 at response targets. */
  targets: tf.Tensor2D;
  rows: number[];
  /** per row: index of its first response target in the [T-1] axis, and its count */
  start: number[];
  len: number[];
  T: number;
}

function seqTensors(batch: Pick<RolloutBatch, 'prompts' | 'k' | 'responses'>, rows: number[], pad: number): SeqTensors {
  const seqs = rows.map((r) => [...batch.prompts[Math.floor(r / batch.k)]!.ids, ...batch.responses[r]!]);
  const T = Math.max(...seqs.map((s) => s.length));
  const n = rows.length;
  const ids = new Int32Array(n * T).fill(pad);
  const attn = new Float32Array(n * T);
  const tgt = new Float32Array(n * (T - 1));
  const start: number[] = [];
  const len: number[] = [];
  rows.forEach((r, i) => {
    const s = seqs[i]!;
    ids.set(s, i * T);
    attn.fill(1, i * T, i * T + s.length);
    const p = batch.prompts[Math.floor(r / batch.k)]!.ids.length;
    const L = batch.responses[r]!.length;
    // target column t predicts ids[t + 1]: response token j sits at ids[p + j], column p + j - 1
    tgt.fill(1, i * (T - 1) + p - 1, i * (T - 1) + p - 1 + L);
    start.push(p - 1);
    len.push(L);
  });
  return {
    ids: tf.tensor2d(ids, [n, T], 'int32'),
    attn: tf.tensor2d(attn, [n, T]),
    targets: tf.tensor2d(tgt, [n, T - 1]),
    rows,
    start,
    len,
    T,
  };
}

function disposeSeq(s: SeqTensors): void {
  tf.dispose([s.ids, s.attn, s.targets]);
}

/** Rows in micro-batches of similar total length (less padding); a fixed order. */
function microBatches(batch: Pick<RolloutBatch, 'prompts' | 'k' | 'responses'>, size: number): number[][] {
  const n = batch.responses.length;
  const lenOf = (r: number) => batch.prompts[Math.floor(r / batch.k)]!.ids.length + batch.responses[r]!.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => lenOf(a) - lenOf(b) || a - b);
  const out: number[][] = [];
  for (let i = 0; i < n; i += size) out.push(order.slice(i, i + size));
  return out;
}

/** PPO diagnostics summed over response tokens (objective.ts: ppoStatSums). */
export interface PpoStats {
  /** Tokens whose ratio was clipped. */
  clipped: number;
  /** Sum of (rho - 1) - log rho. */
  approxKlSum: number;
  /** Response tokens counted. */
  tokens: number;
}

export interface StepResult {
  batch: RolloutBatch;
  /** The step's metrics (without step, lr and time, which the caller adds). */
  metrics: Metrics;
}

export class RlooLearner {
  readonly model: LlamaModel;
  readonly tokenizer: Decoder;
  readonly reward: RewardSource;
  readonly utility: Utility;
  readonly settings: RlooSettings;
  rng: Rng;
  readonly optimizer: AdamW;
  readonly engine: RolloutEngine;
  private readonly pad: number;

  constructor(o: RlooLearnerOptions) {
    this.model = o.model;
    this.tokenizer = o.tokenizer;
    this.reward = o.reward;
    this.utility = o.utility;
    this.settings = { ...o.settings };
    this.rng = o.rng;
    this.optimizer = o.optimizer;
    this.engine = o.engine ?? localEngine(o.model, o.settings.generationBatchSize);
    this.pad = o.model.config.padTokenId ?? o.model.config.eosTokenId;
    if (!o.model.lora) throw new QrlhfError('RlooLearner: the policy needs a LoRA adapter (the RL adapter; off, it is the reference)');
    // the schema's bounds (a learner may be driven without a config file, as the tests do)
    for (const k of ['k', 'temperature'] as const) checkField(RLOO_SCHEMA[k], this.settings[k], `RLOO: ${k}`);
    truncationGuard(this.settings.topP, this.settings.topK, 'RLOO');
  }

  /**
   * Samples k responses per prompt on the engine. One seed per prompt comes from this.rng, so the
   * draws of a prompt do not depend on the engine, its batching or which server answered.
   */
  async rollout(prompts: RlPrompt[]): Promise<{ responses: number[][]; eos: boolean[] }> {
    const seeds = prompts.map(() => this.rng.seed32());
    const s = this.settings;
    const r = await this.engine.generate(prompts.map((p) => p.ids), s.k, seeds, {
      maxNewTokens: s.maxNewTokens,
      temperature: s.temperature,
      topP: s.topP,
      topK: s.topK,
      eosId: this.tokenizer.eosId,
    });
    const V = this.model.config.vocabSize;
    const n = prompts.length * s.k;
    if (r.responses.length !== n || r.eos.length !== n) throw new QrlhfError(`rollout engine ${this.engine.kind}: ${r.responses.length} responses for ${n} rows`);
    r.responses.forEach((t, i) => {
      if (t.length > s.maxNewTokens + 1 || t.some((x) => !Number.isInteger(x) || x < 0 || x >= V)) {
        throw new QrlhfError(`rollout engine ${this.engine.kind}: response ${i} is not ${s.maxNewTokens} or fewer token ids below ${V}: ${JSON.stringify(t.slice(0, 20))}`);
      }
    });
    return r;
  }

  /** Rollouts, rewards, KL and advantages for these prompts (no update). */
  async collect(prompts: RlPrompt[]): Promise<RolloutBatch> {
    const { k } = this.settings;
    const { responses, eos } = await this.rollout(prompts);
    const eosId = this.tokenizer.eosId;
    const texts = responses.map((r) => this.tokenizer.decode(r.length && r[r.length - 1] === eosId ? r.slice(0, -1) : r, { skipSpecial: true }));
    const items = texts.map((response, i) => ({ prompt: prompts[Math.floor(i / k)]!.text, response }));
    const taus = this.reward.taus;
    const quantiles = await this.reward.quantiles(items);
    checkQuantiles(quantiles, items.length, taus.length, items);
    const utilities = Float64Array.from(quantiles, (q) => this.utility(q, taus));
    const partial = { prompts, k, responses };
    const n = responses.length;
    const logp: Float32Array[] = new Array<Float32Array>(n);
    const logpRef: Float32Array[] = new Array<Float32Array>(n);
    const entropySum = new Float64Array(n);
    for (const mb of microBatches(partial, this.settings.microBatchSize)) {
      const s = seqTensors(partial, mb, this.pad);
      const pol = tokenLogProbsAndEntropy(this.model, s.ids, s.attn, s.targets, { temperature: this.settings.temperature });
      const ref = withLoraDisabled(this.model, () => tf.tidy(() => sequenceLogProbs(this.model, s.ids, s.attn, s.targets, { temperature: this.settings.temperature })));
      const [lpA, entA, refA] = (await Promise.all([pol.logp.data(), pol.entropy.data(), ref.data()])) as Float32Array[];
      tf.dispose([pol.logp, pol.entropy, ref]);
      disposeSeq(s);
      mb.forEach((r, i) => {
        const a = i * (s.T - 1) + s.start[i]!;
        logp[r] = lpA!.slice(a, a + s.len[i]!);
        logpRef[r] = refA!.slice(a, a + s.len[i]!);
        let e = 0;
        for (let t = 0; t < s.len[i]!; t++) e += entA![a + t]!;
        entropySum[r] = e;
      });
    }
    const kl = Float64Array.from(logp, (lp, i) => sequenceKl(lp, logpRef[i]!, this.settings.klEstimator));
    const penalties = Float64Array.from(eos, (e) => (e ? 0 : this.settings.missingEosPenalty));
    const rewards = rlooRewards(utilities, kl, this.settings.betaKl, penalties);
    const advantages = leaveOneOutAdvantages(rewards, k);
    return { prompts, k, responses, eos, texts, quantiles, utilities, logp, logpRef, entropySum, kl, penalties, rewards, advantages };
  }

  /**
   * The gradient of the batch's loss with respect to the adapter's variables (keyed like
   * adapter.variables), summed over micro-batches (core's accumulateGradients); `ppo` uses the
   * clipped-ratio loss against the batch's sampling log-probs, and then also returns its
   * diagnostics (objective.ts: the clipped tokens and the sum of the k3 approximate KL over the
   * batch's response tokens, from the same forward pass). The caller disposes the gradients.
   */
  async gradients(
    batch: RolloutBatch,
    opts: { ppo?: boolean; training?: boolean } = {},
  ): Promise<{ grads: Record<string, tf.Tensor>; loss: number; ppo?: PpoStats }> {
    const N = batch.responses.length;
    const sums: tf.Tensor1D[] = [];
    const stats: PpoStats = { clipped: 0, approxKlSum: 0, tokens: 0 };
    const r = await accumulateGradients(microBatches(batch, this.settings.microBatchSize), (mb) => {
      const s = seqTensors(batch, mb, this.pad);
      const adv = tf.tensor1d(mb.map((r) => batch.advantages[r]!), 'float32');
      const lp = sequenceLogProbs(this.model, s.ids, s.attn, s.targets, { training: opts.training ?? true, temperature: this.settings.temperature });
      if (!opts.ppo) return reinforceLoss(lp, adv, N);
      const o = new Float32Array(mb.length * (s.T - 1));
      mb.forEach((r, i) => o.set(batch.logp[r]!, i * (s.T - 1) + s.start[i]!));
      const old = tf.tensor2d(o, [mb.length, s.T - 1]);
      sums.push(tf.keep(ppoStatSums(lp, old, s.targets, this.settings.clipRange)));
      stats.tokens += mb.reduce((a, r) => a + batch.responses[r]!.length, 0);
      return ppoClipLoss(lp, old, s.targets, adv, N, this.settings.clipRange);
    }, this.model.lora!.variables);
    if (!opts.ppo) return r;
    for (const t of sums) {
      const [c, k] = (await t.data()) as Float32Array;
      stats.clipped += c!;
      stats.approxKlSum += k!;
    }
    tf.dispose(sums);
    return { ...r, ppo: stats };
  }

  /** One optimiser update from a batch's gradient; returns the loss, the gradient norm (before clipping) and, for ppo, its diagnostics. */
  async update(batch: RolloutBatch, lr: number, ppo: boolean): Promise<{ loss: number; gradNorm: number; ppo?: PpoStats }> {
    const { grads, loss, ppo: stats } = await this.gradients(batch, { ppo });
    const norm = await applyGradients(this.optimizer, grads, lr, this.settings.gradClip);
    if (!Number.isFinite(norm) || !Number.isFinite(loss)) {
      throw new QrlhfError(`rloo: the loss or the gradient is not finite (loss ${loss}, grad norm ${norm}); lower lr or betaKl, or check the reward source`);
    }
    return stats ? { loss, gradNorm: norm, ppo: stats } : { loss, gradNorm: norm };
  }

  /**
   * A whole step: collect, then one REINFORCE update or ppoEpochs clipped ones. train/loss and
   * train/grad_norm are those of the first update; ppo/clipfrac and ppo/approx_kl are over the
   * response tokens of every epoch's forward pass (each measured before that epoch's update, so the
   * first epoch's ratio is 1 and only later epochs can clip).
   */
  async step(prompts: RlPrompt[], lr: number): Promise<StepResult> {
    const batch = await this.collect(prompts);
    const epochs = Math.max(1, this.settings.ppoEpochs);
    let loss = 0;
    let gradNorm = 0;
    const ppo: PpoStats = { clipped: 0, approxKlSum: 0, tokens: 0 };
    for (let e = 0; e < epochs; e++) {
      const u = await this.update(batch, lr, this.settings.ppoEpochs > 0);
      if (e === 0) {
        loss = u.loss;
        gradNorm = u.gradNorm;
      }
      if (u.ppo) {
        ppo.clipped += u.ppo.clipped;
        ppo.approxKlSum += u.ppo.approxKlSum;
        ppo.tokens += u.ppo.tokens;
      }
    }
    const extra: Record<string, number> = { 'train/loss': loss, 'train/grad_norm': gradNorm };
    if (this.settings.ppoEpochs > 0) {
      extra['ppo/clipfrac'] = ppo.tokens ? ppo.clipped / ppo.tokens : 0;
      extra['ppo/approx_kl'] = ppo.tokens ? ppo.approxKlSum / ppo.tokens : 0;
    }
    return { batch, metrics: batchMetrics(batch, this.reward.taus, extra) };
  }
}

/**
 * Refuses truncated sampling (issue 13, item 8). With top-p < 1 or top-k > 0 the responses come
 * from the truncated, renormalised distribution while the loss and the KL use log-probs of the
 * full one: the REINFORCE estimate is then biased, and the KL is not the KL of the policy that
 * sampled. Taking both on the truncated distribution is not a fix either: the reference's own
 * truncated support can miss a sampled token (log pi_ref = -inf, an infinite KL). So the learner
 * samples from the full distribution at `temperature`, and says so.
 */
export function truncationGuard(topP: number, topK: number, where: string): void {
  const parts = [topP < 1 ? `topP ${topP} (must be 1)` : '', topK > 0 ? `topK ${topK} (must be 0)` : ''].filter(Boolean);
  if (parts.length > 0) {
    throw new QrlhfError(
      `${where}: ${parts.join(' and ')}: RLOO samples from the full distribution at "temperature", because its loss and KL use the full distribution's log-probs ` +
        '(truncated sampling would bias the gradient); lower "temperature" instead to sharpen sampling',
    );
  }
}

/** The key of a quantile level in samples.jsonl: 'q' + tau with two decimals (q0.05, q0.10, ...); its metric is reward/q0.05 (quantileMetric). */
export function quantileKey(tau: number): string {
  return `q${tau.toFixed(2)}`;
}

/**
 * SPEC §6 metrics of a batch under the names of core's names.ts: batch means of each quantile and
 * the expectation (reward/…), of the utility, KL, RLHF reward and |advantage| (objective/…), the
 * entropy per token, response length and EOS rate (policy/…); `extra` is merged in as given.
 */
export function batchMetrics(b: RolloutBatch, taus: Float32Array, extra: Record<string, number> = {}): Metrics {
  const n = b.responses.length;
  const K = taus.length;
  const m: Metrics = {};
  const qMean = new Float64Array(K);
  let expectation = 0;
  for (const q of b.quantiles) {
    let s = 0;
    for (let j = 0; j < K; j++) {
      qMean[j]! += q[j]!;
      s += q[j]!;
    }
    expectation += s / K;
  }
  for (let j = 0; j < K; j++) m[quantileMetric('reward', taus[j]!)] = qMean[j]! / n;
  const mean = (xs: ArrayLike<number>) => {
    let s = 0;
    for (let i = 0; i < xs.length; i++) s += xs[i]!;
    return s / xs.length;
  };
  const tokens = b.responses.reduce((a, r) => a + r.length, 0);
  const entropy = b.entropySum.reduce((a, x) => a + x, 0);
  m['reward/expectation'] = expectation / n;
  m['objective/utility'] = mean(b.utilities);
  m['objective/kl'] = mean(b.kl);
  m['objective/rlhf_reward'] = mean(b.rewards);
  m['objective/advantage_abs'] = mean(Array.from(b.advantages, Math.abs));
  m['policy/entropy'] = tokens ? entropy / tokens : 0;
  m['policy/response_length'] = tokens / n;
  m['policy/eos_rate'] = b.eos.filter(Boolean).length / n;
  for (const [key, v] of Object.entries(extra)) m[key] = v;
  return m;
}
