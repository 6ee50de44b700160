/**
 * Finite mixtures of uniform distributions: the exact law of every attribute and of the reward
 * in the synthetic world (a rater type picks the component, the rater's own leniency is uniform
 * noise inside it). Their CDF is piecewise linear, so quantiles are found by bisection to
 * machine-level precision and the mean is closed-form.
 */

export interface UniformComponent {
  /** mixture weight (the rater type's probability); weights of a mixture sum to 1 */
  weight: number;
  lo: number;
  hi: number;
}

export type UniformMixture = UniformComponent[];

/** P(X <= x). */
export function mixtureCdf(mix: UniformMixture, x: number): number {
  let f = 0;
  for (const c of mix) {
    if (x >= c.hi) f += c.weight;
    else if (x > c.lo) f += (c.weight * (x - c.lo)) / (c.hi - c.lo);
  }
  return f;
}

export function mixtureMean(mix: UniformMixture): number {
  let m = 0;
  for (const c of mix) m += c.weight * 0.5 * (c.lo + c.hi);
  return m;
}

/**
 * The tau-quantile inf{x : F(x) >= tau}, by bisection on the support until the bracket is
 * narrower than `tol` (default 1e-12; float64 CDF sums limit the agreement with tau to ~1e-15).
 */
export function mixtureQuantile(mix: UniformMixture, tau: number, tol = 1e-12): number {
  let lo = Infinity;
  let hi = -Infinity;
  for (const c of mix) {
    if (c.weight <= 0) continue;
    lo = Math.min(lo, c.lo);
    hi = Math.max(hi, c.hi);
  }
  if (tau <= 0) return lo;
  if (tau >= 1) return hi;
  // invariant: F(lo) < tau <= F(hi), up to the case F(lo) >= tau at the bottom of the support
  if (mixtureCdf(mix, lo) >= tau) return lo;
  for (let it = 0; it < 200 && hi - lo > tol; it++) {
    const mid = 0.5 * (lo + hi);
    if (mixtureCdf(mix, mid) >= tau) hi = mid;
    else lo = mid;
  }
  return hi;
}

export function mixtureQuantiles(mix: UniformMixture, taus: ArrayLike<number>): Float32Array {
  const out = new Float32Array(taus.length);
  for (let k = 0; k < taus.length; k++) out[k] = mixtureQuantile(mix, taus[k]!);
  return out;
}

/** Float64 quantiles (for tests and reports that need more than float32). */
export function mixtureQuantiles64(mix: UniformMixture, taus: ArrayLike<number>): Float64Array {
  const out = new Float64Array(taus.length);
  for (let k = 0; k < taus.length; k++) out[k] = mixtureQuantile(mix, taus[k]!);
  return out;
}
