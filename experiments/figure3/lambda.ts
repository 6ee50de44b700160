/**
 * The risk aversion λ of the risk-aware run, chosen without looking at the truth (config key
 * `lambdaRule`):
 *
 *   'fixed'        λ = rloo.lambda as configured.
 *   'mean-budget'  the largest λ whose choice among the SFT policy's own samples keeps the mean:
 *                  n samples y_i1 … y_in for each of N RL prompts, the QRM's (normalised)
 *                  quantiles q̂_ij,k (levels τ_k, K of them), and
 *
 *                    μ̂_ij    = (1/K) Σ_k q̂_ij,k                           (estimated mean)
 *                    U_λ(ij)  = (1/K) Σ_k −exp(−λ q̂_ij,k)                 (SPEC §5's utility)
 *                    a_i      = argmax_j μ̂_ij,   b_i(λ) = argmax_j U_λ(ij)   (first index on ties)
 *                    loss(λ)  = Σ_i (μ̂_{i a_i} − μ̂_{i b_i(λ)}) / Σ_i μ̂_{i a_i}
 *
 *                  λ = the largest grid value 2^(g/4), g = 0 … 28 (1 … 128), with loss ≤ budget
 *                  there and at every smaller grid value. In words: the best-of-n response by the
 *                  utility gives up at most `lambdaBudget` of the estimated mean of the best-of-n
 *                  response by the mean. The budget's default, 3 %, is the paper's "similar expected
 *                  reward" as claim (c) reads it; best-of-n on the SFT policy's samples stands in for
 *                  what RL can choose between.
 *   'ce-q25'       λ such that the certainty equivalent of the exponential utility of the QRM's
 *                  *estimated* reward distribution of the SFT policy's responses on RL prompts
 *                  equals their mean estimated q0.25:
 *
 *                    CE(λ) = −(1/λ) ln( (1/NK) Σ_i Σ_k exp(−λ q̂_ik) )  =  (1/N) Σ_i q̂_i(0.25)
 *
 *                  q̂_ik: the QRM's (normalised) quantile τ_k of response i; the pooled N·K values
 *                  are one distribution. CE falls from the pooled mean (λ → 0) towards the pooled
 *                  minimum (λ → ∞), continuously and strictly unless every q̂ is equal, so the root
 *                  is unique when min < target < mean; found by bisection on ln λ. (It valued the
 *                  SFT policy's reward as if it were its lower quartile: a strong aversion, λ 10.8
 *                  to 11.5 in the runs of issue 13, where every claim failed.)
 *
 * Only QRM estimates of responses to RL prompts enter: never the world's truth, never the
 * evaluation prompts.
 */
import { QrlhfError } from '@qrlhf/core';
import { certaintyEquivalent, expectationUtility, exponentialUtility } from '@qrlhf/qrm';

export const LAMBDA_RULES = ['fixed', 'mean-budget', 'ce-q25'] as const;
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

/** The 'mean-budget' rule's grid: 2^(g/4) for g = 0 … 28, from 1 to 128. */
export const MEAN_BUDGET_GRID: readonly number[] = Array.from({ length: 29 }, (_, g) => 2 ** (g / 4));

/** One grid point of the 'mean-budget' rule: the utility's best-of-n choice and what it gives up. */
export interface MeanBudgetPoint {
  lambda: number;
  /** loss(λ) of the header: the share of the estimated mean the utility's choice gives up */
  loss: number;
  /** share of prompts where the utility chooses another sample than the mean does */
  switched: number;
}

/**
 * The 'mean-budget' rule (header): `groups[i]` holds the QRM's quantile vectors of the n samples of
 * prompt i. Returns λ, the budget and the whole curve (kept in summary.json so a reader sees how
 * the choice was made).
 */
export function meanBudgetLambda(groups: readonly (readonly Float32Array[])[], budget: number, grid: readonly number[] = MEAN_BUDGET_GRID): { lambda: number; budget: number; curve: MeanBudgetPoint[]; meanOfBest: number } {
  if (!(budget > 0 && budget < 1)) throw new QrlhfError(`lambdaRule 'mean-budget': lambdaBudget must lie in (0, 1), got ${budget}`);
  if (groups.length === 0 || groups.some((g) => g.length < 2)) throw new QrlhfError("lambdaRule 'mean-budget': every prompt needs at least 2 samples to choose between (lambdaSamples ≥ 2)");
  const means = groups.map((g) => g.map(expectationUtility));
  const best = means.map((m) => argmax(m));
  const meanOfBest = means.reduce((a, m, i) => a + m[best[i]!]!, 0);
  if (!(meanOfBest > 0)) throw new QrlhfError(`lambdaRule 'mean-budget': the estimated means of the best samples sum to ${meanOfBest}; a relative budget needs a positive mean`);
  const curve = grid.map((lambda): MeanBudgetPoint => {
    let lost = 0;
    let switched = 0;
    groups.forEach((g, i) => {
      const b = argmax(g.map((q) => exponentialUtility(q, lambda)));
      lost += means[i]![best[i]!]! - means[i]![b]!;
      if (b !== best[i]) switched++;
    });
    return { lambda, loss: lost / meanOfBest, switched: switched / groups.length };
  });
  let k = -1;
  while (k + 1 < curve.length && curve[k + 1]!.loss <= budget) k++;
  if (k < 0) throw new QrlhfError(`lambdaRule 'mean-budget': already at lambda ${grid[0]} the utility's choice gives up ${(100 * curve[0]!.loss).toFixed(2)} % of the estimated mean, more than the budget ${(100 * budget).toFixed(2)} %`);
  return { lambda: curve[k]!.lambda, budget, curve, meanOfBest: meanOfBest / groups.length };
}

function argmax(v: readonly number[]): number {
  let b = 0;
  for (let j = 1; j < v.length; j++) if (v[j]! > v[b]!) b = j;
  return b;
}
