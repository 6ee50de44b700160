/**
 * Confidence intervals for Figure 3's numbers: a two-level percentile bootstrap over RL seeds and
 * evaluation prompts.
 *
 * Data of one statistic: x[s][p] for seed s = 1..S and evaluation prompt p = 1..P (every seed answers
 * the same P prompts), e.g. the true q0.05 of the response the risk-aware policy of seed s wrote to
 * prompt p minus that of the risk-neutral policy of seed s (the two runs, and the SFT policy, answer
 * the same prompts: differences are taken per prompt, paired).
 *
 *   estimate      θ = (1/S) Σ_s m_s,          m_s = (1/P) Σ_p x[s][p]
 *   resample b    seeds s*_1 … s*_S drawn from 1..S with replacement; for each i, prompts
 *                 p*_i1 … p*_iP drawn from 1..P with replacement;
 *                 θ*_b = (1/S) Σ_i (1/P) Σ_j x[s*_i][p*_ij]
 *   interval      [θ*_(α/2), θ*_(1−α/2)]: the empirical quantiles of θ*_1 … θ*_B (type 7, linear
 *                 between order statistics), α = 1 − level.
 *
 * Under this scheme the resampled means have the exact variance
 *
 *   Var*(θ*) = (1/S) [ (1/S) Σ_s (m_s − θ)² + (1/S) Σ_s v_s / P ],   v_s = (1/P) Σ_p (x[s][p] − m_s)²
 *
 * (one seed's draw is a uniform seed, then a mean of P draws from it: the between-seed variance plus
 * the mean within-seed variance of that mean), which the tests check the Monte Carlo against.
 *
 * Why two levels: the RL seed (one training trajectory) is the unit the runs were replicated over,
 * and the prompts are a sample of the prompt distribution too; resampling seeds alone would take the
 * P prompts as fixed, resampling prompts alone would take the S trajectories as the only possible
 * ones. With few seeds the seed level underestimates the between-seed variance by (S − 1)/S, and with
 * one seed it is absent (the interval is then the prompts' alone).
 *
 * Several statistics share each resample's indices, so intervals of related quantities (a run's
 * final value, its gain over SFT, the difference between runs) come from the same draws. The indices
 * come from a seeded generator: the same data give the same intervals.
 */
import { QrlhfError, Rng } from '@qrlhf/core';

export interface BootstrapOptions {
  /** Number of resamples B. */
  resamples: number;
  /** Coverage of the interval, e.g. 0.95. */
  level: number;
  /** Seed of the index generator. */
  seed: string;
}

export const BOOTSTRAP_DEFAULTS: BootstrapOptions = { resamples: 10_000, level: 0.95, seed: 'figure3-bootstrap' };

/** θ for each statistic: the mean over seeds of the per-seed means. `stats[k][s]` holds x[s][·] of statistic k. */
export function seedPromptMean(x: readonly ArrayLike<number>[]): number {
  let t = 0;
  for (const row of x) {
    let m = 0;
    for (let p = 0; p < row.length; p++) m += row[p]!;
    t += m / row.length;
  }
  return t / x.length;
}

/**
 * θ*_1 … θ*_B of every statistic, all from one sequence of resampled indices. `stats[k][s][p]`:
 * statistic k, seed s, prompt p; every statistic has the same S seeds and every seed the same P.
 */
export function bootstrapResamples(stats: readonly (readonly ArrayLike<number>[])[], opts: Pick<BootstrapOptions, 'resamples' | 'seed'>): Float64Array[] {
  const K = stats.length;
  const S = stats[0]?.length ?? 0;
  const P = stats[0]?.[0]?.length ?? 0;
  if (S === 0 || P === 0) throw new QrlhfError('bootstrap: no data (each statistic needs at least one seed with at least one prompt)');
  for (const [k, x] of stats.entries()) {
    if (x.length !== S || x.some((row) => row.length !== P)) throw new QrlhfError(`bootstrap: statistic ${k} is not ${S} seeds × ${P} prompts like statistic 0`);
  }
  const B = opts.resamples;
  const rng = new Rng(opts.seed);
  const out = Array.from({ length: K }, () => new Float64Array(B));
  const acc = new Float64Array(K);
  for (let b = 0; b < B; b++) {
    acc.fill(0);
    for (let i = 0; i < S; i++) {
      const s = rng.int(S);
      for (let j = 0; j < P; j++) {
        const p = rng.int(P);
        for (let k = 0; k < K; k++) acc[k]! += stats[k]![s]![p]!;
      }
    }
    for (let k = 0; k < K; k++) out[k]![b] = acc[k]! / (S * P);
  }
  return out;
}

/** The empirical q-quantile of xs (type 7: linear between the order statistics at (n − 1) q). */
export function quantileType7(xs: ArrayLike<number>, q: number): number {
  const v = Float64Array.from(xs).sort();
  if (v.length === 0) return NaN;
  const h = (v.length - 1) * q;
  const lo = Math.floor(h);
  const hi = Math.min(lo + 1, v.length - 1);
  return v[lo]! + (h - lo) * (v[hi]! - v[lo]!);
}

export interface Interval {
  /** θ, the point estimate (mean over seeds of the per-seed means over prompts). */
  value: number;
  /** [lower, upper] percentile bounds. */
  ci: [number, number];
}

/** θ and its percentile interval for every statistic (see the header). */
export function bootstrapIntervals(stats: readonly (readonly ArrayLike<number>[])[], opts: BootstrapOptions = BOOTSTRAP_DEFAULTS): Interval[] {
  if (!(opts.level > 0 && opts.level < 1)) throw new QrlhfError(`bootstrap: level ${opts.level} is not in (0, 1)`);
  const draws = bootstrapResamples(stats, opts);
  const a = (1 - opts.level) / 2;
  return stats.map((x, k) => ({ value: seedPromptMean(x), ci: [quantileType7(draws[k]!, a), quantileType7(draws[k]!, 1 - a)] }));
}

/** The exact variance of the resampled θ* under the two-level scheme (the header's formula). */
export function twoLevelBootstrapVariance(x: readonly ArrayLike<number>[]): number {
  const S = x.length;
  const P = x[0]!.length;
  const m = x.map((row) => seedPromptMean([row]));
  const theta = m.reduce((a, b) => a + b, 0) / S;
  let between = 0;
  let within = 0;
  x.forEach((row, s) => {
    between += (m[s]! - theta) ** 2 / S;
    let v = 0;
    for (let p = 0; p < P; p++) v += (row[p]! - m[s]!) ** 2 / P;
    within += v / P / S;
  });
  return (between + within) / S;
}
