/**
 * Stage 1 of the QRM (SPEC §4): per attribute, K linear quantile heads fitted with scikit-learn
 * QuantileRegressor's objective, and their non-crossing predictions.
 *
 * Label scale. Each attribute's labels are min-max scaled to [0, 1] over that attribute's labelled
 * rows (all of them, before any subsampling): y' = (y − min) / (max − min) (an attribute whose
 * labels are all equal gets y' = 0). The heads are fitted on y' and predict on that [0, 1] scale,
 * which is the scale the QRM mixes and debiases; `labelMin`/`labelMax` keep the map so that
 * `toLabelScale` gives predictions in the caller's label units. With `labelScale: 'none'` the
 * labels are used as given and must already lie in [0, 1].
 *
 * Non-crossing. `predictAttributeQuantiles` sorts each row's K predictions of an attribute
 * (the monotone rearrangement of Chernozhukov, Fernández-Val and Galichon, 2010). What it costs:
 *  - nothing in fit: for every single observation y, Σ_k rho_{tau_k}(y − q_k) equals
 *    Σ_k (q_k − y)_+ − Σ_k tau_k (q_k − y) (tau-free first part) and by the rearrangement inequality
 *    the second part is smallest when the q_k are sorted like the tau_k; so sorting never raises
 *    the pinball loss summed over the levels, on any data (a single level's loss can go up);
 *  - the sorted level-k curve is no longer one linear function of x but piecewise linear: the
 *    stored weights are the unsorted heads, so every consumer must predict through this function;
 *  - compute: an insertion sort of K numbers per row and attribute, O(K²) worst case, negligible
 *    next to the K·d products (K = 19, d = 4096).
 */
import type { FeatureProvenance } from '../provenance.js';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError, Rng, check, firstNonFinite } from '@qrlhf/core';
import { solveQuantileLevels } from './solver.js';

export interface QuantileHeads {
  /** [M, K, d] float32 */
  weight: Float32Array;
  /** [M, K] float32 */
  bias: Float32Array;
  taus: Float32Array;
  attributes: string[];
  d: number;
  /** [M] per-attribute label minimum and maximum of the min-max scaling (absent: labels were used as given). */
  labelMin?: Float32Array;
  labelMax?: Float32Array;
  /** How the features the heads were fitted on were made (see provenance.ts; null/absent: not recorded). */
  provenance?: FeatureProvenance | null;
  /** The features file they were fitted on (for messages). */
  featuresFile?: string | null;
}

/** How far one level's fit is from the optimum (all on the [0, 1] label scale the heads are fitted on). */
export interface QuantileLevelReport {
  tau: number;
  /** (1/n) Σ rho_tau(y − w·x − b) + alpha ||w||_1 of the returned head (float64 weights). */
  objective: number;
  /** A certified lower bound of the optimum: the value of a feasible point of the LP dual. */
  lowerBound: number;
  /** (objective − lowerBound) / objective: the returned head is at most this far above the optimum. */
  gap: number;
  /** First-order iterations this level took part in. */
  iterations: number;
  /** 'lp': exact LP finish; 'gap': certified gap ≤ tolerance; 'stall': no more progress; 'limit': iteration/time budget. */
  finish: 'lp' | 'gap' | 'stall' | 'limit';
}

export interface QuantileAttributeReport {
  attribute: string;
  /** Labelled rows fitted (after maxRows). */
  rows: number;
  seconds: number;
  /** First-order iterations of the attribute's solve (all levels together). */
  iterations: number;
  levels: QuantileLevelReport[];
}

export interface QuantileFitReport {
  alpha: number;
  taus: number[];
  attributes: QuantileAttributeReport[];
}

/** fitQuantileHeads' result: the heads and, per attribute and level, how converged they are. */
export interface FittedQuantileHeads extends QuantileHeads {
  report: QuantileFitReport;
}

export interface FitQuantileHeadsOptions {
  attributes: string[];
  /** Number of levels; tau_k = k / (K + 1). Default 19. */
  K?: number;
  /** L1 penalty of QuantileRegressor's objective. Default 0.003. */
  alpha?: number;
  /** At most this many labelled rows per attribute (a seeded random subset). Default 60000. */
  maxRows?: number;
  /** For the subsampling. Default new Rng(0). */
  rng?: Rng;
  /** 'minmax' (default): scale each attribute's labels to [0, 1]; 'none': labels must be in [0, 1]. */
  labelScale?: 'minmax' | 'none';
  /** Solver knobs (see solver.ts): relative tolerance, iteration budget and opt-in time limit per attribute, LP finish size. */
  tolerance?: number;
  maxIterations?: number;
  timeLimit?: number;
  lpMaxCells?: number;
  /** Opt-in seconds per attribute for the certificates at the end (default: none; see solver.ts). */
  certifyTimeLimit?: number;
  /** Work per attribute for the certificates at the end, in simplex tableau cells (default 3e8; see solver.ts). */
  certifyWork?: number;
  onProgress?: (info: { attribute: string; index: number; iteration: number; active: number; worstGap: number }) => void;
}

/** tau_k = k / (K + 1), k = 1..K. */
export function taus(K: number): Float32Array {
  check(Number.isInteger(K) && K >= 1, `quantiles: expected an integer K >= 1, got ${K}`);
  return Float32Array.from({ length: K }, (_, k) => (k + 1) / (K + 1));
}

export const DEFAULT_TAUS: Float32Array = taus(19);

export async function fitQuantileHeads(
  x: Float32Array,
  n: number,
  d: number,
  labels: Float32Array,
  opts: FitQuantileHeadsOptions,
): Promise<FittedQuantileHeads> {
  const attributes = opts.attributes;
  const M = attributes.length;
  const K = opts.K ?? 19;
  const alpha = opts.alpha ?? 0.003;
  const maxRows = opts.maxRows ?? 60000;
  const rng = opts.rng ?? new Rng(0);
  const scaleMode = opts.labelScale ?? 'minmax';
  check(M >= 1, 'fitQuantileHeads: attributes must name at least one attribute');
  check(Number.isInteger(n) && n >= 1 && Number.isInteger(d) && d >= 0, `fitQuantileHeads: bad shape n=${n}, d=${d}`);
  check(x.length === n * d, `fitQuantileHeads: features have ${x.length} values, expected n·d = ${n}·${d}`);
  check(labels.length === n * M, `fitQuantileHeads: labels have ${labels.length} values, expected n·M = ${n}·${M}`);
  check(alpha >= 0 && Number.isFinite(alpha), `fitQuantileHeads: alpha must be a finite number >= 0, got ${alpha}`);
  check(Number.isInteger(maxRows) && maxRows >= 1, `fitQuantileHeads: maxRows must be a positive integer, got ${maxRows}`);
  // Up front, before any attribute is solved: a NaN feature turns every objective NaN and the
  // heads all zero without a word, and an attribute with no rating fails only after the others.
  const badX = firstNonFinite(x);
  if (badX >= 0) {
    throw new QrlhfError(`features: row ${Math.floor(badX / d)}, column ${badX % d} is ${x[badX]} (from 0): features must be finite`);
  }
  const rated = new Array<number>(M).fill(0);
  for (let i = 0; i < n * M; i++) {
    const v = labels[i]!;
    if (Number.isNaN(v)) continue;
    if (!Number.isFinite(v)) throw new QrlhfError(`labels: row ${Math.floor(i / M)}, attribute "${attributes[i % M]}": expected a finite number or NaN, got ${v}`);
    rated[i % M]!++;
  }
  const unrated = attributes.filter((_, m) => rated[m] === 0);
  if (unrated.length) throw new QrlhfError(`labels: attribute${unrated.length > 1 ? 's' : ''} ${unrated.map((a) => `"${a}"`).join(', ')} ha${unrated.length > 1 ? 've' : 's'} no labelled row (all NaN)`);
  const ts = taus(K);
  const weight = new Float32Array(M * K * d);
  const bias = new Float32Array(M * K);
  const labelMin = new Float32Array(M);
  const labelMax = new Float32Array(M);
  const report: QuantileFitReport = { alpha, taus: Array.from(ts), attributes: [] };

  for (let m = 0; m < M; m++) {
    const name = attributes[m]!;
    let rows: number[] = [];
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = labels[i * M + m]!;
      if (Number.isNaN(v)) continue;
      if (!Number.isFinite(v)) throw new QrlhfError(`labels: row ${i}, attribute "${name}": expected a finite number or NaN, got ${v}`);
      rows.push(i);
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (rows.length === 0) throw new QrlhfError(`labels: attribute "${name}" has no labelled row (all NaN)`);
    if (scaleMode === 'none') {
      check(lo >= 0 && hi <= 1, `labels: attribute "${name}" has values in [${lo}, ${hi}]; labelScale 'none' needs them in [0, 1]`);
      labelMin[m] = 0;
      labelMax[m] = 1;
    } else {
      labelMin[m] = lo;
      labelMax[m] = hi;
    }
    if (rows.length > maxRows) {
      // partial Fisher-Yates: a uniform random subset of maxRows rows, kept in file order
      for (let i = 0; i < maxRows; i++) {
        const j = i + rng.int(rows.length - i);
        const t = rows[i]!;
        rows[i] = rows[j]!;
        rows[j] = t;
      }
      rows = rows.slice(0, maxRows).sort((a, b) => a - b);
    }
    const ns = rows.length;
    const scaleLo = scaleMode === 'none' ? 0 : lo;
    const span = scaleMode === 'none' ? 1 : hi > lo ? hi - lo : 1;
    const y = new Float64Array(ns);
    let xs: Float32Array;
    if (ns === n) xs = x;
    else {
      xs = new Float32Array(ns * d);
      for (let r = 0; r < ns; r++) xs.set(x.subarray(rows[r]! * d, rows[r]! * d + d), r * d);
    }
    for (let r = 0; r < ns; r++) y[r] = (labels[rows[r]! * M + m]! - scaleLo) / span;
    const t0 = performance.now();
    const res = await solveQuantileLevels(xs, ns, d, y, {
      alpha,
      taus: ts,
      tolerance: opts.tolerance,
      maxIterations: opts.maxIterations,
      timeLimit: opts.timeLimit,
      lpMaxCells: opts.lpMaxCells,
      certifyTimeLimit: opts.certifyTimeLimit,
      certifyWork: opts.certifyWork,
      onProgress: opts.onProgress ? (p) => opts.onProgress!({ attribute: name, index: m, ...p }) : undefined,
    });
    for (let k = 0; k < K; k++) {
      for (let j = 0; j < d; j++) weight[(m * K + k) * d + j] = res.weight[k * d + j]!;
      bias[m * K + k] = res.bias[k]!;
    }
    report.attributes.push({
      attribute: name,
      rows: ns,
      seconds: (performance.now() - t0) / 1000,
      iterations: res.iterations,
      levels: Array.from(ts, (tau, k) => {
        const objective = res.objective[k]!;
        const lowerBound = Math.min(objective, Math.max(res.lowerBound[k]!, 0)); // 0: the objective is never negative
        return { tau, objective, lowerBound, gap: objective > 0 ? (objective - lowerBound) / objective : 0, iterations: res.levelIterations[k]!, finish: res.finish[k]! };
      }),
    });
  }
  const heads: FittedQuantileHeads = { weight, bias, taus: ts, attributes: [...attributes], d, report };
  if (scaleMode === 'minmax') {
    heads.labelMin = labelMin;
    heads.labelMax = labelMax;
  }
  return heads;
}

/** The report as a plain-text table per attribute: tau, objective, lower bound, gap %, iterations, finish. */
export function formatFitReport(report: QuantileFitReport): string {
  const lines: string[] = [];
  for (const a of report.attributes) {
    const worst = Math.max(...a.levels.map((l) => l.gap));
    lines.push(`${a.attribute}: ${a.rows} rows, ${a.iterations} iterations, ${a.seconds.toFixed(1)} s, worst certified gap ${(100 * worst).toFixed(3)} %`);
    lines.push('  tau    objective     lower bound   gap %     iters  finish');
    for (const l of a.levels) {
      lines.push(
        `  ${l.tau.toFixed(3)}  ${l.objective.toExponential(6)}  ${l.lowerBound.toExponential(6)}  ${(100 * l.gap).toFixed(4).padStart(8)}  ${String(l.iterations).padStart(5)}  ${l.finish}`,
      );
    }
  }
  return lines.join('\n');
}

/**
 * Quantiles [n, M, K] on the heads' [0, 1] scale, non-decreasing in tau (rows sorted: see the file
 * comment). `rearrange: false` keeps each row in level order as the heads give it (the released
 * QRM's code does not sort).
 */
export async function predictAttributeQuantiles(heads: QuantileHeads, x: Float32Array, n: number, opts: { rearrange?: boolean } = {}): Promise<Float32Array> {
  const rearrange = opts.rearrange ?? true;
  const { d } = heads;
  const M = heads.attributes.length;
  const K = heads.taus.length;
  check(x.length === n * d, `predictAttributeQuantiles: features have ${x.length} values, expected n·d = ${n}·${d}`);
  check(heads.weight.length === M * K * d && heads.bias.length === M * K, 'predictAttributeQuantiles: heads have inconsistent shapes');
  const out = new Float32Array(n * M * K);
  if (n === 0) return out;
  let raw: Float32Array;
  if (d === 0) raw = new Float32Array(n * M * K);
  else {
    // Wᵀ made explicit so the product takes the plain (fast) matmul path; read outside tf.tidy
    const P = tf.tidy(() => tf.matMul(tf.tensor2d(x, [n, d]), tf.transpose(tf.tensor2d(heads.weight, [M * K, d]))));
    raw = (await P.data()) as Float32Array;
    P.dispose();
  }
  for (let i = 0; i < n; i++) {
    for (let m = 0; m < M; m++) {
      const base = (i * M + m) * K;
      for (let k = 0; k < K; k++) {
        const v = raw[base + k]! + heads.bias[m * K + k]!;
        if (!rearrange) {
          out[base + k] = v;
          continue;
        }
        // insertion sort: the K values arrive almost sorted
        let p = k;
        while (p > 0 && out[base + p - 1]! > v) {
          out[base + p] = out[base + p - 1]!;
          p--;
        }
        out[base + p] = v;
      }
    }
  }
  return out;
}

/** Maps [.., M, K] quantiles on the [0, 1] scale back to each attribute's label units. */
export function toLabelScale(heads: QuantileHeads, q: Float32Array): Float32Array {
  const M = heads.attributes.length;
  const K = heads.taus.length;
  const out = new Float32Array(q.length);
  for (let p = 0; p < q.length; p++) {
    const m = Math.floor(p / K) % M;
    const lo = heads.labelMin?.[m] ?? 0;
    const hi = heads.labelMax?.[m] ?? 1;
    out[p] = lo + (hi > lo ? hi - lo : 1) * q[p]!;
  }
  return out;
}
