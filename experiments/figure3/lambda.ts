/**
 * The risk aversion λ of the risk-aware run, chosen without looking at the truth (config key
 * `lambdaRule`):
 *
 *   'fixed'    λ = rloo.lambda as configured.
 *   'ce-q25'   λ such that the certainty equivalent of the exponential utility of the QRM's
 *              *estimated* reward distribution of the SFT policy's responses on RL prompts equals
 *              their mean estimated q0.25:
 *
 *                CE(λ) = −(1/λ) ln( (1/NK) Σ_i Σ_k exp(−λ q̂_ik) )  =  (1/N) Σ_i q̂_i(0.25)
 *
 *              q̂_ik: the QRM's (normalised) quantile τ_k of response i; the pooled N·K values are
 *              one distribution. CE falls from the pooled mean (λ → 0) towards the pooled minimum
 *              (λ → ∞), continuously and strictly unless every q̂ is equal, so the root is unique
 *              when min < target < mean; found by bisection on ln λ.
 *
 * In words: the risk-aware policy values the SFT policy's reward as if it were its lower quartile,
 * the scale on which the paper's Figure 3 reads tail gains. Only QRM estimates of responses to RL
 * prompts enter: never the world's truth, never the evaluation prompts.
 */
import { QrlhfError } from '@qrlhf/core';
import { certaintyEquivalent } from '@qrlhf/qrm';

export const LAMBDA_RULES = ['fixed', 'ce-q25'] as const;
export type LambdaRule = (typeof LAMBDA_RULES)[number];

/** The pooled certainty equivalent CE(λ) of the header. */
export function pooledCertaintyEquivalent(quantiles: readonly Float32Array[], lambda: number): number {
  const all = new Float32Array(quantiles.reduce((a, q) => a + q.length, 0));
  let o = 0;
  for (const q of quantiles) {
    all.set(q, o);
    o += q.length;
  }
  return certaintyEquivalent(all, lambda);
}

/** λ with CE(λ) = target by bisection on ln λ over [lo, hi] (the header's rule; throws if the target is out of reach). */
export function lambdaForCertaintyEquivalent(quantiles: readonly Float32Array[], target: number, opts: { lo?: number; hi?: number; iterations?: number } = {}): number {
  const lo0 = opts.lo ?? 1e-3;
  const hi0 = opts.hi ?? 1e3;
  const f = (l: number) => pooledCertaintyEquivalent(quantiles, l) - target;
  let min = Infinity;
  let max = -Infinity;
  for (const q of quantiles) for (const v of q) [min, max] = [Math.min(min, v), Math.max(max, v)];
  if (!(max > min)) throw new QrlhfError(`lambdaRule: every estimated quantile is ${min}: the QRM's estimates have no spread, no lambda reaches the target ${target.toFixed(4)}`);
  if (!(f(lo0) > 0)) throw new QrlhfError(`lambdaRule: the target ${target.toFixed(4)} is not below the certainty equivalent at lambda ${lo0} (${(f(lo0) + target).toFixed(4)}): the QRM's estimates have no spread`);
  if (!(f(hi0) < 0)) throw new QrlhfError(`lambdaRule: the certainty equivalent stays above the target ${target.toFixed(4)} up to lambda ${hi0}`);
  let a = Math.log(lo0);
  let b = Math.log(hi0);
  for (let i = 0; i < (opts.iterations ?? 60); i++) {
    const m = (a + b) / 2;
    if (f(Math.exp(m)) > 0) a = m;
    else b = m;
  }
  return Math.exp((a + b) / 2);
}

/** The 'ce-q25' rule: λ from the QRM's quantile vectors (levels `taus`) of the SFT policy's responses. */
export function ceQ25Lambda(quantiles: readonly Float32Array[], taus: ArrayLike<number>): { lambda: number; target: number; meanEstimate: number } {
  let k25 = -1;
  for (let k = 0; k < taus.length; k++) if (Math.abs(taus[k]! - 0.25) < 1e-6) k25 = k;
  if (k25 < 0) throw new QrlhfError("lambdaRule 'ce-q25': the QRM has no quantile level 0.25");
  const target = quantiles.reduce((a, q) => a + q[k25]!, 0) / quantiles.length;
  const meanEstimate = quantiles.reduce((a, q) => a + q.reduce((x, y) => x + y, 0) / q.length, 0) / quantiles.length;
  return { lambda: lambdaForCertaintyEquivalent(quantiles, target), target, meanEstimate };
}
