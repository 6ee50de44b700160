import test from 'ava';
import { QrlhfError, Rng, initBackend } from '@qrlhf/core';
import {
  DEFAULT_TAUS,
  fitQuantileHeads,
  predictAttributeQuantiles,
  taus,
  toLabelScale,
  type QuantileHeads,
} from '../src/quantile/index.js';
import { solveQuantileLevels } from '../src/quantile/solver.js';
import { pinball, quantileLP, quantileObjective } from '../src/quantile/lp.js';

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

type Noise = 'normal' | 'heavy' | 'bimodal' | 'skewed';
function noise(rng: Rng, kind: Noise): number {
  switch (kind) {
    case 'normal':
      return rng.normal();
    case 'heavy': // Student-t with 2 degrees of freedom: infinite variance
      return rng.normal() / Math.sqrt((rng.normal() ** 2 + rng.normal() ** 2) / 2);
    case 'bimodal':
      return rng.next() < 0.4 ? -1.5 + 0.4 * rng.normal() : 1 + 0.5 * rng.normal();
    case 'skewed':
      return -Math.log(1 - rng.next()) - 1; // exponential, shifted to mean 0
  }
}

/** y = 0.5 + x·beta + (0.2 + 0.15 x_0) · noise: the conditional quantiles are linear in x (x_0 > 0). */
function makeData(seed: string, n: number, d: number, kind: Noise, offset = 0) {
  const rng = new Rng(seed);
  const beta = Array.from({ length: d }, (_, j) => (j < 3 ? 0.3 * rng.normal() : 0));
  const x = new Float32Array(n * d);
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let mu = 0.5;
    for (let j = 0; j < d; j++) {
      const v = j === 0 ? 2 * rng.next() : rng.normal() + offset;
      x[i * d + j] = v;
      mu += beta[j]! * v;
    }
    y[i] = mu + (0.2 + 0.15 * x[i * d]!) * noise(rng, kind);
  }
  return { x, y };
}

test.serial('taus: k / (K + 1); the default has 19 levels 0.05 .. 0.95', async (t) => {
  t.deepEqual(Array.from(taus(3)), [0.25, 0.5, 0.75]);
  t.is(DEFAULT_TAUS.length, 19);
  t.true(Math.abs(DEFAULT_TAUS[0]! - 0.05) < 1e-7 && Math.abs(DEFAULT_TAUS[18]! - 0.95) < 1e-7);
  t.throws(() => taus(0), { instanceOf: QrlhfError });
});

test.serial('first-order solver alone (no LP finish) is within 0.1% of the exact LP optimum for every tau', async (t) => {
  const cases: [number, number, Noise, number][] = [
    [300, 2, 'normal', 0],
    [500, 6, 'heavy', 0],
    [400, 10, 'skewed', 3], // uncentred features
    [200, 4, 'bimodal', 0],
  ];
  for (const [n, d, kind, offset] of cases) {
    const { x, y } = makeData(`fo-${n}-${d}-${kind}`, n, d, kind, offset);
    const ts = Array.from(DEFAULT_TAUS);
    const fit = await solveQuantileLevels(x, n, d, y, { alpha: 0.003, taus: ts, lpMaxCells: 0 });
    let worst = 0;
    for (let k = 0; k < ts.length; k++) {
      const lp = quantileLP(x, n, d, y, ts[k]!, 0.003);
      // evaluate the returned heads independently, in float64
      const obj = quantileObjective(x, n, d, y, ts[k]!, 0.003, fit.weight.subarray(k * d, k * d + d), fit.bias[k]!);
      t.true(Math.abs(obj - fit.objective[k]!) <= 1e-6 * obj, 'reported objective is the objective of the returned heads');
      const rel = (obj - lp.objective) / lp.objective;
      worst = Math.max(worst, rel);
      t.true(rel >= -1e-9, `n ${n} d ${d} ${kind} tau ${ts[k]}: below the LP optimum?! ${obj} < ${lp.objective}`);
      t.true(rel <= 1e-3, `n ${n} d ${d} ${kind} tau ${ts[k]}: ${obj} vs LP ${lp.objective} (rel ${rel})`);
      t.true(fit.lowerBound[k]! <= lp.objective * (1 + 1e-9), 'the certified lower bound is a lower bound');
    }
    t.log(`n ${n} d ${d} ${kind}: worst relative excess over the LP optimum ${worst.toExponential(2)}, ${fit.iterations} iterations`);
  }
});

test.serial('with the LP finish (default for small problems) the heads are the exact optimum', async (t) => {
  const { x, y } = makeData('lpfinish', 300, 5, 'heavy');
  const ts = [0.05, 0.3, 0.5, 0.9];
  const fit = await solveQuantileLevels(x, 300, 5, y, { alpha: 0.003, taus: ts });
  for (let k = 0; k < ts.length; k++) {
    const ref = quantileLP(x, 300, 5, y, ts[k]!, 0.003, { form: 'primal' }); // the textbook form, cold start
    const obj = quantileObjective(x, 300, 5, y, ts[k]!, 0.003, fit.weight.subarray(k * 5, k * 5 + 5), fit.bias[k]!);
    t.is(fit.finish[k], 'lp');
    t.true(Math.abs(obj - ref.objective) <= 1e-9 * (1 + ref.objective), `tau ${ts[k]}: ${obj} vs ${ref.objective}`);
  }
});


test.serial('first-order solver on hidden-state-like features (low-rank signal, uncentred, unequal scales, a sparse optimum) is within 0.1% of the exact LP for every tau', async (t) => {
  // the benchmark's structure in miniature: x_j = m_j + s_j (z·A_j + noise); the rank-3 spike makes
  // the problem ill-conditioned, the float32 products make the backtracking see rounding noise
  const n = 600;
  const d = 30;
  const rng = new Rng('lowrank');
  const r = 3;
  const A = Array.from({ length: r * d }, () => rng.normal() / Math.sqrt(r));
  const m = Array.from({ length: d }, () => 3 * rng.normal());
  const s = Array.from({ length: d }, (_, j) => (j % 7 === 0 ? 10 : 0.5 + rng.next()));
  const x = new Float32Array(n * d);
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const z = [rng.normal(), rng.normal(), rng.normal()];
    for (let j = 0; j < d; j++) {
      let v = 0.5 * rng.normal();
      for (let k = 0; k < r; k++) v += z[k]! * A[k * d + j]!;
      x[i * d + j] = m[j]! + s[j]! * v;
    }
    y[i] = 0.5 + 0.1 * (z[0]! + 0.5 * z[1]!) + (0.05 + 0.03 * Math.abs(z[2]!)) * (-Math.log(1 - rng.next()) - 1);
  }
  const ts = Array.from(DEFAULT_TAUS);
  const fit = await solveQuantileLevels(x, n, d, y, { alpha: 0.003, taus: ts, lpMaxCells: 0 });
  let worst = 0;
  let zeros = 0;
  for (let k = 0; k < ts.length; k++) {
    const lp = quantileLP(x, n, d, y, ts[k]!, 0.003);
    const w = fit.weight.subarray(k * d, k * d + d);
    const obj = quantileObjective(x, n, d, y, ts[k]!, 0.003, w, fit.bias[k]!);
    const rel = (obj - lp.objective) / lp.objective;
    worst = Math.max(worst, rel);
    t.true(rel >= -1e-9 && rel <= 1e-3, `tau ${ts[k]}: ${obj} vs LP ${lp.objective} (rel ${rel})`);
    t.true(fit.lowerBound[k]! <= lp.objective * (1 + 1e-9), 'the certified lower bound is a lower bound');
    for (const v of lp.weight) if (v === 0) zeros++;
  }
  t.true(zeros > 0, 'the exact optimum is sparse somewhere (the L1 penalty is active)');
  t.log(`worst relative excess over the LP optimum ${worst.toExponential(2)}, ${fit.iterations} iterations, ${zeros} zero LP weights of ${d * ts.length}`);
});
test.serial('calibration on bimodal, skewed and heteroscedastic data: held-out coverage within 0.03 of every tau', async (t) => {
  const kinds: Noise[] = ['bimodal', 'skewed', 'heavy'];
  const nTrain = 4000;
  const nTest = 6000;
  const d = 4;
  const M = kinds.length;
  // one feature matrix, one column of labels per noise kind (same x, independent noise)
  const rng = new Rng('calib');
  const make = (n: number) => {
    const x = new Float32Array(n * d);
    const labels = new Float32Array(n * M);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < d; j++) x[i * d + j] = j === 0 ? 2 * rng.next() : rng.normal();
      for (let m = 0; m < M; m++) {
        const mu = 3 + 0.8 * x[i * d + 1]! - 0.5 * x[i * d + 2]!;
        labels[i * M + m] = 10 * (mu + (0.3 + 0.4 * x[i * d]!) * noise(rng, kinds[m]!)); // label units, not [0, 1]
      }
    }
    return { x, labels };
  };
  const train = make(nTrain);
  const test_ = make(nTest);
  const heads = await fitQuantileHeads(train.x, nTrain, d, train.labels, { attributes: kinds, rng: new Rng(1) });
  t.deepEqual(heads.attributes, kinds);
  t.is(heads.weight.length, M * 19 * d);
  const q = toLabelScale(heads, await predictAttributeQuantiles(heads, test_.x, nTest));
  for (let m = 0; m < M; m++) {
    for (let k = 0; k < 19; k++) {
      let under = 0;
      for (let i = 0; i < nTest; i++) if (test_.labels[i * M + m]! <= q[(i * M + m) * 19 + k]!) under++;
      const cov = under / nTest;
      t.true(Math.abs(cov - heads.taus[k]!) <= 0.03, `${kinds[m]} tau ${heads.taus[k]}: coverage ${cov}`);
    }
  }
});

test.serial('labels: min-max scaling per attribute is stored; predictions are on [0, 1]; toLabelScale inverts it', async (t) => {
  const n = 300;
  const { x, y } = makeData('scale', n, 3, 'normal');
  const labels = new Float32Array(n * 2);
  for (let i = 0; i < n; i++) {
    labels[i * 2] = 7 + 4 * y[i]!;
    labels[i * 2 + 1] = y[i]!;
  }
  const heads = await fitQuantileHeads(x, n, 3, labels, { attributes: ['a', 'b'], K: 5, alpha: 0 });
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    lo = Math.min(lo, labels[i * 2]!);
    hi = Math.max(hi, labels[i * 2]!);
  }
  t.is(heads.labelMin![0], Math.fround(lo));
  t.is(heads.labelMax![0], Math.fround(hi));
  // with alpha = 0 the problem is affine-equivariant: both attributes scale to the same y', same heads
  const q = await predictAttributeQuantiles(heads, x, n);
  for (let i = 0; i < n * 5; i++) {
    const p = Math.floor(i / 5) * 10 + (i % 5);
    t.true(Math.abs(q[p]! - q[p + 5]!) < 1e-4);
  }
  const back = toLabelScale(heads, q);
  for (let i = 0; i < n; i++) {
    const mid = back[i * 10 + 2]!; // the median of attribute a, in label units
    t.true(Number.isFinite(mid) && mid > lo - 1 && mid < hi + 1);
  }
  // 'none' requires labels already in [0, 1]
  await t.throwsAsync(() => fitQuantileHeads(x, n, 3, labels, { attributes: ['a', 'b'], K: 3, labelScale: 'none' }), {
    instanceOf: QrlhfError,
    message: /"a".*\[0, 1\]/,
  });
});

test.serial('NaN labels: rows are left out of that attribute only (same heads as fitting the labelled rows alone)', async (t) => {
  const n = 400;
  const d = 3;
  const { x, y } = makeData('nan', n, d, 'skewed');
  const labels = new Float32Array(n * 2);
  const keep: number[] = [];
  for (let i = 0; i < n; i++) {
    labels[i * 2] = y[i]!;
    const missing = i % 3 === 0;
    labels[i * 2 + 1] = missing ? NaN : y[i]!;
    if (!missing) keep.push(i);
  }
  const K = 5;
  const both = await fitQuantileHeads(x, n, d, labels, { attributes: ['full', 'partial'], K });
  const xs = new Float32Array(keep.length * d);
  const ls = new Float32Array(keep.length);
  keep.forEach((i, r) => {
    xs.set(x.subarray(i * d, i * d + d), r * d);
    ls[r] = y[i]!;
  });
  const sub = await fitQuantileHeads(xs, keep.length, d, ls, { attributes: ['partial'], K });
  const full = await fitQuantileHeads(x, n, d, Float32Array.from(y), { attributes: ['full'], K });
  for (let i = 0; i < K * d; i++) {
    t.true(Math.abs(both.weight[K * d + i]! - sub.weight[i]!) <= 1e-6);
    t.true(Math.abs(both.weight[i]! - full.weight[i]!) <= 1e-6);
  }
  // the partial attribute's heads differ from the full one's (they saw other rows)
  let diff = 0;
  for (let i = 0; i < K * d; i++) diff += Math.abs(both.weight[i]! - both.weight[K * d + i]!);
  t.true(diff > 1e-4);
  const allNan = new Float32Array(n).fill(NaN);
  await t.throwsAsync(() => fitQuantileHeads(x, n, d, allNan, { attributes: ['empty'], K }), { instanceOf: QrlhfError, message: /"empty".*no labelled row/ });
  const bad = Float32Array.from(y);
  bad[7] = Infinity;
  await t.throwsAsync(() => fitQuantileHeads(x, n, d, bad, { attributes: ['inf'], K }), { instanceOf: QrlhfError, message: /row 7/ });
});

test.serial('maxRows: a seeded uniform random subset of the labelled rows', async (t) => {
  // d = 0: each head is the tau-quantile of the subset's labels. Labels rise with the row index,
  // so a subset taken from the start of the file would give quantiles near 0.2·tau.
  const n = 1000;
  const labels = Float32Array.from({ length: n }, (_, i) => i / (n - 1));
  const fit = (seed: number, maxRows: number) =>
    fitQuantileHeads(new Float32Array(0), n, 0, labels, { attributes: ['u'], K: 9, maxRows, rng: new Rng(seed) });
  const a = await fit(1, 200);
  const b = await fit(1, 200);
  const c = await fit(2, 200);
  t.deepEqual(Array.from(a.bias), Array.from(b.bias), 'same seed, same subset');
  t.notDeepEqual(Array.from(a.bias), Array.from(c.bias), 'another seed, another subset');
  for (let k = 0; k < 9; k++) {
    // quantile of 200 uniform draws: sd ≈ sqrt(tau(1 − tau)/200) ≤ 0.036
    t.true(Math.abs(a.bias[k]! - a.taus[k]!) < 0.11, `tau ${a.taus[k]}: ${a.bias[k]}`);
    // each bias is one of the labels (an order statistic of the subset)
    t.true(Math.abs(a.bias[k]! * (n - 1) - Math.round(a.bias[k]! * (n - 1))) < 1e-3);
  }
  // without the cap, the heads are the exact order statistics ceil(n tau) of all rows
  const all = await fit(1, 60000);
  for (let k = 0; k < 9; k++) t.true(Math.abs(all.bias[k]! - (Math.ceil(n * all.taus[k]!) - 1) / (n - 1)) < 1e-6);
});

test.serial('non-crossing: predictions are sorted in tau, and sorting never raises the summed pinball loss', async (t) => {
  // heads built to cross: level slopes of alternating sign
  const d = 2;
  const K = 5;
  const heads: QuantileHeads = {
    weight: Float32Array.from({ length: K * d }, (_, i) => (i % 2 ? -1 : 1) * (1 + (i % 3))),
    bias: Float32Array.from({ length: K }, (_, k) => 0.1 * k),
    taus: taus(K),
    attributes: ['a'],
    d,
  };
  const rng = new Rng('cross');
  const n = 500;
  const x = Float32Array.from({ length: n * d }, () => rng.normal());
  const q = await predictAttributeQuantiles(heads, x, n);
  let crossedRaw = 0;
  for (let i = 0; i < n; i++) {
    const raw = Array.from({ length: K }, (_, k) => {
      let v = heads.bias[k]!;
      for (let j = 0; j < d; j++) v += heads.weight[k * d + j]! * x[i * d + j]!;
      return v;
    });
    const out = Array.from(q.subarray(i * K, i * K + K));
    for (let k = 1; k < K; k++) t.true(out[k]! >= out[k - 1]!);
    if (raw.some((v, k) => k > 0 && v < raw[k - 1]!)) crossedRaw++;
    const sorted = [...raw].sort((a, b) => a - b);
    t.true(out.every((v, k) => Math.abs(v - sorted[k]!) < 1e-4), 'the output is the sorted raw predictions');
    for (let r = 0; r < 5; r++) {
      const y = 3 * rng.normal();
      const lossRaw = raw.reduce((s, v, k) => s + pinball(y - v, heads.taus[k]!), 0);
      const lossSorted = out.reduce((s, v, k) => s + pinball(y - v, heads.taus[k]!), 0);
      t.true(lossSorted <= lossRaw + 1e-5);
    }
  }
  t.true(crossedRaw > n / 2, 'the raw heads really cross');
  // fitted heads, predicted far outside the training range, also come out sorted
  const { x: xt, y } = makeData('far', 300, 3, 'heavy');
  const fitted = await fitQuantileHeads(xt, 300, 3, Float32Array.from(y), { attributes: ['h'] });
  const far = Float32Array.from({ length: 200 * 3 }, () => 50 * rng.normal());
  const pf = await predictAttributeQuantiles(fitted, far, 200);
  for (let i = 0; i < 200; i++) for (let k = 1; k < 19; k++) t.true(pf[i * 19 + k]! >= pf[i * 19 + k - 1]!);
});

test.serial('bad input shapes and options are QrlhfErrors', async (t) => {
  const x = new Float32Array(6);
  await t.throwsAsync(() => fitQuantileHeads(x, 3, 3, new Float32Array(3), { attributes: ['a'] }), { instanceOf: QrlhfError, message: /features/ });
  await t.throwsAsync(() => fitQuantileHeads(x, 3, 2, new Float32Array(4), { attributes: ['a'] }), { instanceOf: QrlhfError, message: /labels/ });
  await t.throwsAsync(() => fitQuantileHeads(x, 3, 2, new Float32Array(3), { attributes: ['a'], alpha: -1 }), { instanceOf: QrlhfError, message: /alpha/ });
});
