import test from 'ava';
import { Rng } from '@qrlhf/core';
import { solveBoundedLP, quantileLP, quantileObjective } from '../src/quantile/lp.js';

// ---- references written independently of the simplex ----

/** The optimum of a convex piecewise-linear function over R^(d+1) lies at a vertex of the
 *  arrangement of the hyperplanes {r_i = 0} and {w_j = 0}: enumerate every (d+1)-subset. */
function bruteForceQR(x: number[], n: number, d: number, y: number[], tau: number, alpha: number): number {
  // hyperplanes in the unknowns z = (w_1..w_d, b): rows of [coef | rhs]
  const planes: number[][] = [];
  for (let i = 0; i < n; i++) planes.push([...x.slice(i * d, i * d + d), 1, y[i]!]);
  for (let j = 0; j < d; j++) {
    const p = new Array<number>(d + 2).fill(0);
    p[j] = 1;
    planes.push(p);
  }
  const k = d + 1;
  let best = Infinity;
  const idx: number[] = [];
  const rec = (start: number): void => {
    if (idx.length === k) {
      const z = solveSquare(idx.map((i) => planes[i]!), k);
      if (z) best = Math.min(best, quantileObjective(x, n, d, y, tau, alpha, z.slice(0, d), z[d]!));
      return;
    }
    for (let i = start; i < planes.length; i++) {
      idx.push(i);
      rec(i + 1);
      idx.pop();
    }
  };
  rec(0);
  return best;
}

/** Gaussian elimination with partial pivoting on [k, k+1] augmented rows; null if singular. */
function solveSquare(rows: number[][], k: number): number[] | null {
  const M = rows.map((r) => r.slice());
  for (let c = 0; c < k; c++) {
    let p = c;
    for (let r = c + 1; r < k; r++) if (Math.abs(M[r]![c]!) > Math.abs(M[p]![c]!)) p = r;
    if (Math.abs(M[p]![c]!) < 1e-12) return null;
    [M[c], M[p]] = [M[p]!, M[c]!];
    for (let r = 0; r < k; r++) {
      if (r === c) continue;
      const f = M[r]![c]! / M[c]![c]!;
      for (let cc = c; cc <= k; cc++) M[r]![cc]! -= f * M[c]![cc]!;
    }
  }
  return M.map((r, i) => r[k]! / r[i]!);
}

function sortedQuantileObjective(y: number[], tau: number): number {
  // min over b of the mean pinball loss: attained at a data point; scan them all
  let best = Infinity;
  for (const b of y) best = Math.min(best, quantileObjective([], y.length, 0, y, tau, 0, [], b));
  return best;
}

function randomProblem(seed: string, n: number, d: number, heavy = false) {
  const rng = new Rng(seed);
  const x: number[] = [];
  const y: number[] = [];
  const beta = Array.from({ length: d }, () => rng.normal());
  for (let i = 0; i < n; i++) {
    let mu = 0.3;
    for (let j = 0; j < d; j++) {
      const v = rng.normal();
      x.push(v);
      mu += 0.2 * beta[j]! * v;
    }
    const e = heavy ? rng.normal() / Math.max(0.05, Math.abs(rng.normal())) : rng.normal();
    y.push(mu + 0.3 * e * (1 + Math.abs(x[i * d] ?? 0)));
  }
  return { x, y };
}

// ---- the generic simplex on LPs solved by hand ----

test('bounded simplex: a 2-variable LP solved by hand, with and without an upper bound', (t) => {
  // min -x1 - x2  s.t. x1 + 2 x2 + s1 = 4, 3 x1 + x2 + s2 = 6, all >= 0  -> x = (1.6, 1.2), -2.8
  const A = [1, 2, 1, 0, 3, 1, 0, 1];
  const lp = { A, m: 2, N: 4, b: [4, 6], c: [-1, -1, 0, 0], lower: [0, 0, 0, 0], upper: [Infinity, Infinity, Infinity, Infinity] };
  const r = solveBoundedLP(lp);
  t.is(r.status, 'optimal');
  t.true(Math.abs(r.objective + 2.8) < 1e-12);
  t.true(Math.abs(r.x[0]! - 1.6) < 1e-12 && Math.abs(r.x[1]! - 1.2) < 1e-12);
  // duals: both constraints binding; pi solves [1 3; 2 1] pi = [-1 -1] -> pi = (-0.4, -0.2)
  t.true(Math.abs(r.duals[0]! + 0.4) < 1e-12 && Math.abs(r.duals[1]! + 0.2) < 1e-12);
  // x1 <= 1 makes the optimum (1, 1.5), -2.5: reached through a bound, not a pivot
  const r2 = solveBoundedLP({ ...lp, upper: [1, Infinity, Infinity, Infinity] });
  t.true(Math.abs(r2.objective + 2.5) < 1e-12);
  t.true(Math.abs(r2.x[0]! - 1) < 1e-12 && Math.abs(r2.x[1]! - 1.5) < 1e-12);
});

test('bounded simplex: infeasible and unbounded problems are recognised', (t) => {
  // x1 + x2 = -1 with x >= 0 is infeasible
  t.is(solveBoundedLP({ A: [1, 1], m: 1, N: 2, b: [-1], c: [1, 1], lower: [0, 0], upper: [Infinity, Infinity] }).status, 'infeasible');
  // min -x1 s.t. x1 - x2 = 0, x >= 0: unbounded
  t.is(solveBoundedLP({ A: [1, -1], m: 1, N: 2, b: [0], c: [-1, 0], lower: [0, 0], upper: [Infinity, Infinity] }).status, 'unbounded');
  // the same with x2 <= 3 is bounded at -3
  const r = solveBoundedLP({ A: [1, -1], m: 1, N: 2, b: [0], c: [-1, 0], lower: [0, 0], upper: [Infinity, 3] });
  t.is(r.status, 'optimal');
  t.true(Math.abs(r.objective + 3) < 1e-12);
});

// ---- the quantile-regression LP ----

test('quantile LP, d = 0: the intercept is a tau-quantile of y and the objective the brute-force minimum', (t) => {
  const rng = new Rng('d0');
  const y = Array.from({ length: 101 }, () => Math.exp(rng.normal()));
  const sorted = [...y].sort((a, b) => a - b);
  for (const tau of [0.05, 0.25, 0.5, 0.8, 0.95]) {
    for (const form of ['primal', 'dual'] as const) {
      const r = quantileLP([], y.length, 0, y, tau, 0.003, { form });
      const ref = sortedQuantileObjective(y, tau);
      t.true(Math.abs(r.objective - ref) <= 1e-12 * (1 + ref), `${form} tau ${tau}: ${r.objective} vs ${ref}`);
      // n*tau is not an integer here, so the tau-quantile is unique: the ceil(n tau)-th order statistic
      t.true(Math.abs(r.bias - sorted[Math.ceil(y.length * tau) - 1]!) < 1e-9, `${form} tau ${tau} bias`);
    }
  }
});

test('quantile LP, d = 1 and 2: matches vertex enumeration of the arrangement, both forms', (t) => {
  for (const [d, n] of [
    [1, 30],
    [2, 18],
  ] as const) {
    for (const heavy of [false, true]) {
      const { x, y } = randomProblem(`bf${d}${heavy}`, n, d, heavy);
      for (const tau of [0.1, 0.5, 0.9]) {
        for (const alpha of [0, 0.003, 0.05]) {
          const ref = bruteForceQR(x, n, d, y, tau, alpha);
          for (const form of ['primal', 'dual'] as const) {
            const r = quantileLP(x, n, d, y, tau, alpha, { form });
            t.true(Math.abs(r.objective - ref) <= 1e-10 * (1 + ref), `d ${d} ${form} tau ${tau} alpha ${alpha}: ${r.objective} vs ${ref}`);
            t.true(Math.abs(r.objective - r.lpObjective) <= 1e-10 * (1 + ref));
          }
        }
      }
    }
  }
});

test('quantile LP: primal and dual forms agree (strong duality) on larger random problems; warm start agrees', (t) => {
  for (const [n, d, heavy] of [
    [120, 5, false],
    [150, 8, true],
  ] as const) {
    const { x, y } = randomProblem(`pd${n}`, n, d, heavy);
    for (const tau of [0.05, 0.5, 0.95]) {
      const p = quantileLP(x, n, d, y, tau, 0.003, { form: 'primal' });
      const q = quantileLP(x, n, d, y, tau, 0.003, { form: 'dual' });
      t.true(Math.abs(p.objective - q.objective) <= 1e-10 * (1 + p.objective), `tau ${tau}: ${p.objective} vs ${q.objective}`);
      const w = quantileLP(x, n, d, y, tau, 0.003, { form: 'dual', start: { weight: q.weight.map((v) => v * 0.9), bias: q.bias } });
      t.true(Math.abs(w.objective - q.objective) <= 1e-10 * (1 + q.objective));
      // optimality is a property of the point: any perturbation of the LP solution is no better
      const rng = new Rng(`pert${tau}`);
      for (let k = 0; k < 20; k++) {
        const wp = Array.from(q.weight, (v) => v + 0.01 * rng.normal());
        t.true(quantileObjective(x, n, d, y, tau, 0.003, wp, q.bias + 0.01 * rng.normal()) >= q.objective - 1e-12);
      }
    }
  }
});
