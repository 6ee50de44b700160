import test from 'ava';
import { Rng, initBackend } from '@qrlhf/core';
import { DEFAULT_TAUS, fitQuantileHeads, formatFitReport, taus } from '../src/quantile/index.js';
import { solveQuantileLevels } from '../src/quantile/solver.js';
import { DualPool, basisDual } from '../src/quantile/certificate.js';
import { quantileLP, quantileObjective } from '../src/quantile/lp.js';

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

/** Uncentred, unequally scaled features with a low-rank signal; skewed heteroscedastic labels. */
function makeData(seed: string, n: number, d: number): { x: Float32Array; y: Float64Array } {
  const rng = new Rng(seed);
  const A = Array.from({ length: 2 * d }, () => rng.normal());
  const m = Array.from({ length: d }, () => 2 * rng.normal());
  const s = Array.from({ length: d }, (_, j) => (j % 5 === 0 ? 5 : 0.5 + rng.next()));
  const x = new Float32Array(n * d);
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const z = [rng.normal(), rng.normal()];
    for (let j = 0; j < d; j++) x[i * d + j] = m[j]! + s[j]! * (z[0]! * A[j]! + z[1]! * A[d + j]! + 0.5 * rng.normal());
    y[i] = 0.5 + 0.1 * z[0]! + (0.05 + 0.03 * Math.abs(z[1]!)) * (-Math.log(1 - rng.next()) - 1);
  }
  return { x, y };
}

test.serial('DualPool: the master LP over random dual points gives a bound below the exact LP optimum that never decreases', async (t) => {
  const n = 200;
  const d = 6;
  const alpha = 0.01;
  const tau = 0.3;
  const { x, y } = makeData('pool', n, d);
  const lp = quantileLP(x, n, d, y, tau, alpha);
  const rng = new Rng('pool-points');
  const pool = new DualPool(d, n * alpha, 8);
  const points: Float64Array[] = [];
  let last = -Infinity;
  for (let t2 = 0; t2 < 20; t2++) {
    // a random point of the box shifted to sum 0 and scaled back into the box
    const a = Float64Array.from({ length: n }, () => tau - rng.next());
    let mean = 0;
    for (const v of a) mean += v / n;
    let theta = 1;
    for (const v of a) {
      const u = v - mean;
      if (u > tau) theta = Math.min(theta, tau / u);
      if (u < tau - 1) theta = Math.min(theta, (tau - 1) / u);
    }
    for (let i = 0; i < n; i++) a[i] = theta * (a[i]! - mean);
    points.push(a);
    const g = new Float64Array(d);
    for (let j = 0; j < d; j++) for (let i = 0; i < n; i++) g[j] += x[i * d + j]! * a[i]!;
    let c = 0;
    for (let i = 0; i < n; i++) c += (y[i]! * a[i]!) / n;
    pool.add(g, c);
    if (t2 % 3 === 2) pool.improve();
    t.true(pool.best >= last, 'monotone');
    last = pool.best;
    t.true(pool.best <= lp.objective * (1 + 1e-9), `pool bound ${pool.best} above the LP optimum ${lp.objective}`);
  }
  t.true(pool.best > 0, 'random points give a positive bound here');
});

test.serial('basisDual: at the exact LP optimum the crossover point is dual feasible (float64 check) and its value is the optimum', async (t) => {
  const n = 300;
  const d = 8;
  const alpha = 0.003;
  const { x, y } = makeData('basis', n, d);
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j] += x[i * d + j]! / n;
  const live = new Uint8Array(d).fill(1);
  for (const tau of [0.05, 0.5, 0.9]) {
    const lp = quantileLP(x, n, d, y, tau, alpha);
    const resid = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let q = lp.bias;
      for (let j = 0; j < d; j++) q += x[i * d + j]! * lp.weight[j]!;
      resid[i] = y[i]! - q;
    }
    // h0 = Xcᵀa⁰ of the sign point, in float64 here
    const h0 = new Float64Array(d);
    for (let i = 0; i < n; i++) {
      const a0 = resid[i]! > 0 ? tau : tau - 1;
      for (let j = 0; j < d; j++) h0[j] += (x[i * d + j]! - mean[j]!) * a0;
    }
    const bd = basisDual({ x, n, d, y, tau, nAlpha: n * alpha, mean, live, resid, weight: lp.weight, h0 });
    t.truthy(bd);
    const pool = new DualPool(d, n * alpha);
    pool.add(bd!.g, bd!.c);
    t.true(pool.best <= lp.objective * (1 + 1e-9), `tau ${tau}: bound ${pool.best} above the optimum ${lp.objective}`);
    t.true((lp.objective - pool.best) / lp.objective < 1e-4, `tau ${tau}: bound ${pool.best} vs optimum ${lp.objective}`);
    // g is Xᵀa of a point in the box with sum 0: its L∞ norm is within n·alpha
    let inf = 0;
    for (let j = 0; j < d; j++) inf = Math.max(inf, Math.abs(bd!.g[j]!) / (n * alpha));
    t.true(inf <= 1 + 1e-7, `tau ${tau}: |Xᵀa|∞ / n alpha = ${inf}`);
  }
});

test.serial('solver certificates: every lower bound is below the exact LP optimum, and the gap closes (< 1e-3) when run to convergence', async (t) => {
  for (const [n, d] of [[400, 6], [600, 20]] as const) {
    const { x, y } = makeData(`conv-${n}-${d}`, n, d);
    const ts = Array.from(DEFAULT_TAUS);
    const fit = await solveQuantileLevels(x, n, d, y, { alpha: 0.003, taus: ts, lpMaxCells: 0, tolerance: 1e-5, stallTolerance: 1e-9, stallWindow: 100, certifyEvery: 5, certifyWork: Infinity });
    let worst = 0;
    for (let k = 0; k < ts.length; k++) {
      const lp = quantileLP(x, n, d, y, ts[k]!, 0.003);
      t.true(fit.lowerBound[k]! <= lp.objective * (1 + 1e-9), `n ${n} d ${d} tau ${ts[k]}: bound ${fit.lowerBound[k]} > LP ${lp.objective}`);
      t.true(fit.objective[k]! >= lp.objective * (1 - 1e-9));
      const gap = (fit.objective[k]! - fit.lowerBound[k]!) / fit.objective[k]!;
      worst = Math.max(worst, gap);
      t.true(gap < 1e-3, `n ${n} d ${d} tau ${ts[k]}: certified gap ${gap} (${fit.finish[k]})`);
      t.true(fit.levelIterations[k]! <= fit.iterations && fit.levelIterations[k]! > 0);
    }
    t.log(`n ${n} d ${d}: worst certified gap ${worst.toExponential(2)} after ${fit.iterations} iterations`);
  }
});

test.serial('fitQuantileHeads report: objective = pinball + L1 recomputed in float64 from the returned float32 heads on the scaled labels; bound below the LP; gap consistent', async (t) => {
  const n = 300;
  const d = 5;
  const M = 2;
  const { x, y } = makeData('report', n, d);
  const rng = new Rng('labels');
  const labels = new Float32Array(n * M);
  for (let i = 0; i < n; i++) {
    labels[i * M] = 3 + 4 * y[i]!; // not in [0, 1]: min-max scaled by the fit
    labels[i * M + 1] = i % 7 === 0 ? NaN : y[i]! + 0.1 * rng.normal();
  }
  const K = 5;
  const heads = await fitQuantileHeads(x, n, d, labels, { attributes: ['a', 'b'], K, lpMaxCells: 0 });
  const rep = heads.report;
  t.is(rep.attributes.length, M);
  t.deepEqual(rep.taus, Array.from(taus(K)));
  for (let m = 0; m < M; m++) {
    const ar = rep.attributes[m]!;
    const rows = [...Array(n).keys()].filter((i) => !Number.isNaN(labels[i * M + m]!));
    t.is(ar.rows, rows.length);
    let lo = Infinity;
    let hi = -Infinity;
    for (const i of rows) {
      lo = Math.min(lo, labels[i * M + m]!);
      hi = Math.max(hi, labels[i * M + m]!);
    }
    const xs = new Float32Array(rows.length * d);
    rows.forEach((i, r) => xs.set(x.subarray(i * d, i * d + d), r * d));
    const ys = rows.map((i) => (labels[i * M + m]! - lo) / (hi - lo));
    for (let k = 0; k < K; k++) {
      const lv = ar.levels[k]!;
      const w = heads.weight.subarray((m * K + k) * d, (m * K + k + 1) * d);
      const obj = quantileObjective(xs, rows.length, d, ys, lv.tau, 0.003, w, heads.bias[m * K + k]!);
      t.true(Math.abs(obj - lv.objective) <= 1e-5 * obj, `${ar.attribute} tau ${lv.tau}: report ${lv.objective} vs recomputed ${obj}`);
      const lp = quantileLP(xs, rows.length, d, ys, lv.tau, 0.003);
      t.true(lv.lowerBound <= lp.objective * (1 + 1e-9), 'the lower bound is below the exact optimum');
      t.true(lv.lowerBound <= lv.objective);
      t.true(Math.abs(lv.gap - (lv.objective - lv.lowerBound) / lv.objective) < 1e-12);
      t.true(lv.gap >= (lv.objective - lp.objective) / lv.objective - 1e-9, 'the gap bounds the true excess');
      t.true(['lp', 'gap', 'stall', 'limit'].includes(lv.finish));
      t.true(lv.iterations >= 1 && lv.iterations <= ar.iterations);
    }
  }
  const text = formatFitReport(rep);
  t.regex(text, /^a: 300 rows/m);
  t.is(text.split('\n').filter((l) => /^\s+0\.\d{3}\s/.test(l)).length, M * K);
});
