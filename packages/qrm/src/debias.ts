/**
 * Verbosity debiasing, ArmoRM's rule (SPEC §4). Long answers tend to score higher on every
 * attribute; ArmoRM removes that by subtracting a share p_j of the verbosity score from each
 * attribute j, with p_j the smallest value on a fixed grid that brings the Spearman correlation
 * between the adjusted attribute and verbosity down to the threshold. QRM applies the same p_j to
 * every quantile level: Q'_j(tau) = Q_j(tau) − p_j Q_v(tau).
 */
import { QrlhfError } from '@qrlhf/core';

/** The penalty grid: 0, .01, .025, .05, .075, .1, .125, .15, .2, .25, then .3 … .95 by .05. */
export const DEBIAS_GRID: readonly number[] = Object.freeze([
  0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25,
  ...Array.from({ length: 14 }, (_, i) => Math.round((0.3 + 0.05 * i) * 1000) / 1000),
]);
export const DEBIAS_THRESHOLD = 0.03;

/**
 * Ranks 1..n with ties given the average of the ranks they span (the "average" method), as used
 * by Spearman's coefficient.
 */
export function averageRanks(x: ArrayLike<number>): Float64Array {
  const n = x.length;
  const idx = Array.from({ length: n }, (_, i) => i);
  idx.sort((a, b) => x[a]! - x[b]!);
  const r = new Float64Array(n);
  let i = 0;
  while (i < n) {
    let j = i;
    while (j + 1 < n && x[idx[j + 1]!] === x[idx[i]!]) j++;
    const avg = (i + j) / 2 + 1; // ranks i+1 .. j+1
    for (let k = i; k <= j; k++) r[idx[k]!] = avg;
    i = j + 1;
  }
  return r;
}

function pearson(a: Float64Array, b: Float64Array): number {
  const n = a.length;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i]!;
    mb += b[i]!;
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const da = a[i]! - ma;
    const db = b[i]! - mb;
    sab += da * db;
    saa += da * da;
    sbb += db * db;
  }
  if (saa === 0 || sbb === 0) return NaN;
  return sab / Math.sqrt(saa * sbb);
}

/**
 * Spearman's rank correlation: Pearson's correlation of the average ranks. NaN when either input
 * is constant (the coefficient is undefined there). NaN inputs are not allowed.
 */
export function spearman(x: ArrayLike<number>, y: ArrayLike<number>): number {
  if (x.length !== y.length) throw new QrlhfError(`spearman: lengths differ (${x.length} vs ${y.length})`);
  if (x.length < 2) return NaN;
  for (let i = 0; i < x.length; i++) {
    if (Number.isNaN(x[i]!) || Number.isNaN(y[i]!)) throw new QrlhfError(`spearman: NaN at index ${i}`);
  }
  return pearson(averageRanks(x), averageRanks(y));
}

export interface DebiasResult {
  /** p_j per attribute; 1 for verbosity itself and for attributes that never reach the threshold. */
  penalties: number[];
  /** The correlation at the chosen penalty (or the smallest seen when none reached it). */
  correlations: number[];
}

/**
 * ArmoRM's verbosity penalties. `expected` is [n, M] (row-major): each attribute's expected reward
 * (mean over the quantile levels) for n reference responses. For each attribute j != v, p_j is the
 * first grid value p with spearman(V_j − p V_v, V_v) <= threshold; verbosity itself and
 * attributes that never get there get 1.
 *
 * Degenerate cases (scipy would give NaN and ArmoRM's loop would then assign 1): when V_v is
 * constant there is no verbosity signal to remove and every penalty is 0; when V_j − p V_v is
 * constant its correlation with anything is taken as 0.
 */
export function debiasPenalties(
  expected: ArrayLike<number>,
  n: number,
  M: number,
  verbosityIndex: number,
  opts: { threshold?: number; grid?: readonly number[] } = {},
): DebiasResult {
  const threshold = opts.threshold ?? DEBIAS_THRESHOLD;
  const grid = [...(opts.grid ?? DEBIAS_GRID)].sort((a, b) => a - b);
  if (expected.length !== n * M) {
    throw new QrlhfError(`debiasPenalties: expected ${n}x${M} = ${n * M} values, got ${expected.length}`);
  }
  if (!Number.isInteger(verbosityIndex) || verbosityIndex < 0 || verbosityIndex >= M) {
    throw new QrlhfError(`debiasPenalties: verbosity index ${verbosityIndex} is not one of the ${M} attributes`);
  }
  if (n < 2) throw new QrlhfError(`debiasPenalties: need at least 2 reference rows, got ${n}`);
  const col = (j: number): Float64Array => {
    const c = new Float64Array(n);
    for (let i = 0; i < n; i++) c[i] = expected[i * M + j]!;
    return c;
  };
  const vv = col(verbosityIndex);
  const penalties = new Array<number>(M).fill(1);
  const correlations = new Array<number>(M).fill(1);
  const rv = averageRanks(vv);
  const vConstant = rv.every((r) => r === rv[0]);
  for (let j = 0; j < M; j++) {
    if (j === verbosityIndex) continue;
    if (vConstant) {
      penalties[j] = 0;
      correlations[j] = 0;
      continue;
    }
    const vj = col(j);
    const adj = new Float64Array(n);
    let best = Infinity;
    for (const p of grid) {
      for (let i = 0; i < n; i++) adj[i] = vj[i]! - p * vv[i]!;
      let c = pearson(averageRanks(adj), rv);
      if (Number.isNaN(c)) c = 0;
      if (c <= threshold) {
        penalties[j] = p;
        best = c;
        break;
      }
      best = Math.min(best, c);
    }
    correlations[j] = best;
  }
  return { penalties, correlations };
}

/** Per-attribute expected rewards [n, M] = mean over k of attribute quantiles [n, M, K]. */
export function expectedRewards(q: Float32Array, n: number, M: number, K: number): Float64Array {
  if (q.length !== n * M * K) throw new QrlhfError(`expectedRewards: expected ${n * M * K} values, got ${q.length}`);
  const out = new Float64Array(n * M);
  for (let i = 0; i < n * M; i++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += q[i * K + k]!;
    out[i] = s / K;
  }
  return out;
}

/**
 * Applies the penalties to every level: Q'_j(tau) = Q_j(tau) − p_j Q_v(tau), on [n, M, K].
 * A difference of two non-decreasing functions need not be non-decreasing, so each attribute's
 * K values are then sorted (the monotone rearrangement: it leaves the mean over levels, and hence
 * every expectation the gate is trained on, unchanged). verbosityIndex < 0 means no debiasing.
 */
export function applyDebias(
  q: Float32Array,
  n: number,
  M: number,
  K: number,
  penalties: readonly number[],
  verbosityIndex: number,
): Float32Array {
  if (verbosityIndex < 0) return q.slice();
  if (penalties.length !== M) throw new QrlhfError(`applyDebias: ${penalties.length} penalties for ${M} attributes`);
  const out = new Float32Array(q.length);
  const row = new Float64Array(K);
  for (let i = 0; i < n; i++) {
    const base = i * M * K;
    const vBase = base + verbosityIndex * K;
    for (let j = 0; j < M; j++) {
      const p = penalties[j]!;
      for (let k = 0; k < K; k++) row[k] = q[base + j * K + k]! - p * q[vBase + k]!;
      row.sort();
      for (let k = 0; k < K; k++) out[base + j * K + k] = row[k]!;
    }
  }
  return out;
}
