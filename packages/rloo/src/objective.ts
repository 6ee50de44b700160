/**
 * The RLOO arithmetic of SPEC §6, in plain numbers (no tensors), and the two policy losses as
 * tensors.
 *
 *   kl_t  = k1: d_t                       with d_t = log pi(y_t) - log pi_ref(y_t)
 *           k3: exp(-d_t) - 1 + d_t        (= (r - 1) - log r with r = pi_ref / pi; >= 0, unbiased for KL(pi || pi_ref))
 *   R_i   = U(y_i) - beta * sum_t kl_t - penalty_i
 *   A_i   = R_i - (1 / (k - 1)) * sum_{j != i} R_j       (within the k responses of one prompt)
 *   loss  = -(1/N) sum_i A_i sum_t log pi(y_{i,t})        (REINFORCE; A_i constants)
 *   PPO:    -(1/N) sum_i sum_t min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i),  rho_t = pi / pi_old
 *
 * PPO diagnostics (logged as ppo/clipfrac and ppo/approx_kl), over the M response tokens of a batch:
 *   clipfrac  = (1/M) sum_t [ |rho_t - 1| > eps ]               (share of tokens whose ratio is clipped)
 *   approx_kl = (1/M) sum_t (rho_t - 1) - log rho_t             (Schulman's k3 estimate of KL(pi_old || pi):
 *                                                                >= 0 per token, unbiased under pi_old's samples)
 */
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '@qrlhf/core';

export type KlEstimator = 'k1' | 'k3';

/** The per-token KL estimate from d = log pi - log pi_ref. */
export function klToken(d: number, estimator: KlEstimator): number {
  return estimator === 'k1' ? d : Math.exp(-d) - 1 + d;
}

/** sum_t kl_t over one response's tokens, from its per-token log-probs under the policy and the reference. */
export function sequenceKl(logp: ArrayLike<number>, logpRef: ArrayLike<number>, estimator: KlEstimator): number {
  if (logp.length !== logpRef.length) throw new QrlhfError(`sequenceKl: ${logp.length} policy log-probs, ${logpRef.length} reference ones`);
  let s = 0;
  for (let t = 0; t < logp.length; t++) s += klToken(logp[t]! - logpRef[t]!, estimator);
  return s;
}

/**
 * Leave-one-out advantages: rewards are grouped by prompt, k consecutive entries per prompt
 * (entry g*k + j is response j of prompt g).
 */
export function leaveOneOutAdvantages(rewards: ArrayLike<number>, k: number): Float64Array {
  if (!Number.isInteger(k) || k < 2) throw new QrlhfError(`RLOO needs k >= 2 responses per prompt, got ${k}`);
  if (rewards.length % k !== 0) throw new QrlhfError(`leaveOneOutAdvantages: ${rewards.length} rewards is not a multiple of k = ${k}`);
  const out = new Float64Array(rewards.length);
  for (let g = 0; g < rewards.length; g += k) {
    let sum = 0;
    for (let j = 0; j < k; j++) sum += rewards[g + j]!;
    for (let j = 0; j < k; j++) {
      const r = rewards[g + j]!;
      out[g + j] = r - (sum - r) / (k - 1);
    }
  }
  return out;
}

/** R_i = U_i - beta * KL_i - penalty_i. */
export function rlooRewards(utilities: ArrayLike<number>, klSums: ArrayLike<number>, beta: number, penalties?: ArrayLike<number>): Float64Array {
  const out = new Float64Array(utilities.length);
  for (let i = 0; i < out.length; i++) out[i] = utilities[i]! - beta * klSums[i]! - (penalties ? penalties[i]! : 0);
  return out;
}

/**
 * REINFORCE loss of one micro-batch: -(1/N) sum_i A_i sum_t logp[i, t]. `logp` [n, T] is zero at
 * non-response positions (sequenceLogProbs' mask); `adv` [n]; N is the whole batch's size.
 */
export function reinforceLoss(logp: tf.Tensor2D, adv: tf.Tensor1D, N: number): tf.Scalar {
  return tf.tidy(() => tf.div(tf.neg(tf.sum(tf.mul(tf.sum(logp, 1), adv))), N) as tf.Scalar);
}

/**
 * PPO-clipped loss of one micro-batch: -(1/N) sum_i sum_t mask * min(rho A_i, clip(rho) A_i).
 * `logp` (differentiable), `logpOld`, `mask` [n, T]; `adv` [n]. At rho = 1 its gradient is
 * REINFORCE's.
 */
export function ppoClipLoss(
  logp: tf.Tensor2D,
  logpOld: tf.Tensor2D,
  mask: tf.Tensor2D,
  adv: tf.Tensor1D,
  N: number,
  clipRange: number,
): tf.Scalar {
  return tf.tidy(() => {
    const ratio = tf.exp(tf.sub(logp, logpOld));
    const a = adv.reshape([-1, 1]);
    const unclipped = tf.mul(ratio, a);
    const clipped = tf.mul(tf.clipByValue(ratio, 1 - clipRange, 1 + clipRange), a);
    const surrogate = tf.mul(tf.minimum(unclipped, clipped), mask);
    return tf.div(tf.neg(tf.sum(surrogate)), N) as tf.Scalar;
  });
}

/**
 * The PPO diagnostics of one micro-batch as sums over its response tokens (the caller divides by
 * the token count of the whole batch): [sum_t [|rho_t - 1| > eps], sum_t (rho_t - 1) - log rho_t]
 * with log rho_t = logp - logpOld. `mask` [n, T] is 1 on response tokens.
 */
export function ppoStatSums(logp: tf.Tensor2D, logpOld: tf.Tensor2D, mask: tf.Tensor2D, clipRange: number): tf.Tensor1D {
  return tf.tidy(() => {
    const logRatio = tf.sub(logp, logpOld);
    const ratio = tf.exp(logRatio);
    const clipped = tf.mul(tf.cast(tf.greater(tf.abs(tf.sub(ratio, 1)), clipRange), 'float32'), mask);
    const k3 = tf.mul(tf.sub(tf.sub(ratio, 1), logRatio), mask);
    return tf.stack([tf.sum(clipped), tf.sum(k3)]) as tf.Tensor1D;
  });
}
