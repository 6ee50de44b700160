/**
 * An exact, dense, float64 linear-programming solver: the bounded-variable primal simplex on a
 * full tableau, with a phase 1 on artificial variables. It is the reference the fast quantile
 * solver is checked against, and the exact "polish" for problems small enough to afford it.
 *
 *   minimise cᵀx  subject to  A x = b,  lower ≤ x ≤ upper   (lower finite, upper may be +∞)
 *
 * Pricing is Dantzig's rule (largest reduced cost); after a run of degenerate steps it switches to
 * Bland's rule (smallest index), which cannot cycle, and back after the next non-degenerate step.
 * A step either flips the entering variable to its other bound (no pivot, O(m)) or pivots
 * (O(m · (N + m))). Memory is m · (N + m) doubles.
 */

export interface BoundedLP {
  /** Constraint matrix, row-major [m, N]. */
  A: ArrayLike<number>;
  m: number;
  N: number;
  b: ArrayLike<number>;
  c: ArrayLike<number>;
  /** Finite lower bounds [N]. */
  lower: ArrayLike<number>;
  /** Upper bounds [N]; Infinity allowed. */
  upper: ArrayLike<number>;
}

export type LPStatus = 'optimal' | 'infeasible' | 'unbounded' | 'iteration-limit';

export interface LPResult {
  status: LPStatus;
  x: Float64Array;
  objective: number;
  /** Multipliers π of the rows (reduced costs are c − Aᵀπ). */
  duals: Float64Array;
  /** Pivots plus bound flips, both phases. */
  iterations: number;
}

export interface LPOptions {
  /** Nonbasic starting position per variable: 1 = at its upper bound (must be finite), 0 = lower. */
  startAtUpper?: Uint8Array;
  maxIterations?: number;
  tolerance?: number;
}

export function solveBoundedLP(lp: BoundedLP, opts: LPOptions = {}): LPResult {
  const { m, N } = lp;
  const tol = opts.tolerance ?? 1e-9;
  const maxIter = opts.maxIterations ?? 50 * (m + N) + 1000;
  const W = N + m; // tableau width: structural + artificial columns
  const T = new Float64Array(m * W);
  const lo = new Float64Array(W);
  const hi = new Float64Array(W);
  const x = new Float64Array(W);
  for (let j = 0; j < N; j++) {
    lo[j] = lp.lower[j]!;
    hi[j] = lp.upper[j]!;
    if (!Number.isFinite(lo[j]!)) throw new Error(`solveBoundedLP: lower bound ${j} must be finite`);
    if (hi[j]! < lo[j]!) throw new Error(`solveBoundedLP: bounds of ${j} are inverted`);
    x[j] = opts.startAtUpper?.[j] && Number.isFinite(hi[j]!) ? hi[j]! : lo[j]!;
  }
  // Residual of the start point decides each artificial's sign; row k is multiplied by sigma_k so
  // that the artificial basis is the identity and its values are |r_k| >= 0.
  const sigma = new Float64Array(m);
  const basis = new Int32Array(m);
  const isBasic = new Uint8Array(W);
  for (let i = 0; i < m; i++) {
    let r = lp.b[i]!;
    for (let j = 0; j < N; j++) r -= lp.A[i * N + j]! * x[j]!;
    const s = r < 0 ? -1 : 1;
    sigma[i] = s;
    const row = i * W;
    for (let j = 0; j < N; j++) T[row + j] = s * lp.A[i * N + j]!;
    T[row + N + i] = 1;
    basis[i] = N + i;
    isBasic[N + i] = 1;
    x[N + i] = s * r;
    lo[N + i] = 0;
    hi[N + i] = Infinity;
  }
  const cost = new Float64Array(W);
  const d = new Float64Array(W); // reduced costs
  let iterations = 0;

  const computeReducedCosts = (): void => {
    for (let j = 0; j < W; j++) d[j] = cost[j]!;
    for (let i = 0; i < m; i++) {
      const cb = cost[basis[i]!]!;
      if (cb === 0) continue;
      const row = i * W;
      for (let j = 0; j < W; j++) d[j] -= cb * T[row + j]!;
    }
  };

  /** Runs the simplex on the current cost; returns the phase's status. */
  const run = (): LPStatus => {
    let degenerateRun = 0;
    const col = new Float64Array(m);
    for (;;) {
      if (iterations >= maxIter) return 'iteration-limit';
      const bland = degenerateRun > 50;
      // Pricing.
      let q = -1;
      let best = 0;
      for (let j = 0; j < W; j++) {
        if (isBasic[j] || hi[j] === lo[j]) continue;
        const dj = d[j]!;
        let score = 0;
        if (x[j] === lo[j] && dj < -tol) score = -dj;
        else if (x[j] === hi[j] && dj > tol) score = dj;
        else continue;
        if (bland) {
          q = j;
          break;
        }
        if (score > best) {
          best = score;
          q = j;
        }
      }
      if (q < 0) return 'optimal';
      const dir = x[q] === lo[q] ? 1 : -1; // the entering variable increases (1) or decreases (-1)
      for (let i = 0; i < m; i++) col[i] = T[i * W + q]!;
      // Ratio test: x_B(i) changes by -dir * t * col[i].
      let tMax = hi[q]! - lo[q]!; // a bound flip
      let r = -1;
      let rToUpper = false;
      for (let i = 0; i < m; i++) {
        const a = dir * col[i]!;
        if (Math.abs(a) <= 1e-11) continue;
        const bi = basis[i]!;
        let t: number;
        let toUpper: boolean;
        if (a > 0) {
          t = (x[bi]! - lo[bi]!) / a;
          toUpper = false;
        } else {
          if (!Number.isFinite(hi[bi]!)) continue;
          t = (hi[bi]! - x[bi]!) / -a;
          toUpper = true;
        }
        if (t < 0) t = 0;
        if (t < tMax || (t === tMax && r >= 0 && Math.abs(a) > Math.abs(dir * col[r]!))) {
          tMax = t;
          r = i;
          rToUpper = toUpper;
        }
      }
      if (!Number.isFinite(tMax)) return 'unbounded';
      iterations++;
      degenerateRun = tMax <= 1e-12 ? degenerateRun + 1 : 0;
      // Move the basic variables.
      for (let i = 0; i < m; i++) x[basis[i]!] -= dir * tMax * col[i]!;
      if (r < 0) {
        x[q] = dir > 0 ? hi[q]! : lo[q]!; // bound flip: the basis is unchanged
        continue;
      }
      const leave = basis[r]!;
      x[q] = x[q]! + dir * tMax;
      x[leave] = rToUpper ? hi[leave]! : lo[leave]!;
      // Pivot on (r, q).
      const rowR = r * W;
      const piv = T[rowR + q]!;
      for (let j = 0; j < W; j++) T[rowR + j] /= piv;
      for (let i = 0; i < m; i++) {
        if (i === r) continue;
        const f = T[i * W + q]!;
        if (f === 0) continue;
        const row = i * W;
        for (let j = 0; j < W; j++) T[row + j] -= f * T[rowR + j]!;
        T[row + q] = 0;
      }
      const dq = d[q]!;
      if (dq !== 0) for (let j = 0; j < W; j++) d[j] -= dq * T[rowR + j]!;
      d[q] = 0;
      basis[r] = q;
      isBasic[q] = 1;
      isBasic[leave] = 0;
    }
  };

  // Phase 1: minimise the sum of the artificials.
  for (let k = 0; k < m; k++) cost[N + k] = 1;
  computeReducedCosts();
  let status = run();
  let infeas = 0;
  for (let k = 0; k < m; k++) infeas += x[N + k]!;
  let scale = 1;
  for (let i = 0; i < m; i++) scale += Math.abs(lp.b[i]!);
  if (status === 'iteration-limit') return finish('iteration-limit');
  if (infeas > 1e-7 * scale) return finish('infeasible');
  // Artificials are now fixed at zero; those still basic stay there harmlessly (redundant rows).
  for (let k = 0; k < m; k++) {
    cost[N + k] = 0;
    hi[N + k] = 0;
    if (!isBasic[N + k]) x[N + k] = 0;
  }
  for (let j = 0; j < N; j++) cost[j] = lp.c[j]!;
  computeReducedCosts();
  status = run();
  return finish(status);

  function finish(st: LPStatus): LPResult {
    const xs = x.slice(0, N);
    let obj = 0;
    for (let j = 0; j < N; j++) obj += lp.c[j]! * xs[j]!;
    // With phase-2 cost 0 on artificial k (column sigma_k e_k in the original system):
    // d_k = -sigma_k pi_k.
    const duals = new Float64Array(m);
    for (let k = 0; k < m; k++) duals[k] = -sigma[k]! * d[N + k]!;
    return { status: st, x: xs, objective: obj, duals, iterations };
  }
}

/** The pinball loss rho_tau(u) = u (tau - 1[u < 0]). */
export function pinball(u: number, tau: number): number {
  return u >= 0 ? tau * u : (tau - 1) * u;
}

/** (1/n) Σ rho_tau(y_i − w·x_i − b) + alpha ||w||_1 in float64: scikit-learn's QuantileRegressor objective. */
export function quantileObjective(
  x: ArrayLike<number>,
  n: number,
  d: number,
  y: ArrayLike<number>,
  tau: number,
  alpha: number,
  weight: ArrayLike<number>,
  bias: number,
): number {
  let loss = 0;
  for (let i = 0; i < n; i++) {
    let q = bias;
    for (let j = 0; j < d; j++) q += x[i * d + j]! * weight[j]!;
    loss += pinball(y[i]! - q, tau);
  }
  let l1 = 0;
  for (let j = 0; j < d; j++) l1 += Math.abs(weight[j]!);
  return loss / n + alpha * l1;
}

export interface QuantileLPResult {
  weight: Float64Array;
  bias: number;
  /** The objective evaluated directly from (weight, bias) in float64. */
  objective: number;
  /** The LP's own optimal value divided by n (equal to objective up to rounding). */
  lpObjective: number;
  iterations: number;
}

/**
 * Solves one quantile regression head exactly:
 *   min (1/n) Σ rho_tau(y − Xw − b) + alpha ||w||_1.
 * 'primal' is the textbook LP (scikit-learn's): variables w⁺, w⁻, b⁺, b⁻, u⁺, u⁻ ≥ 0 with
 * Xw⁺ − Xw⁻ + b⁺ − b⁻ + u⁺ − u⁻ = y, cost n·alpha on w±, tau on u⁺, 1 − tau on u⁻; n rows, so only
 * for small n. 'dual' (the default) is its LP dual, d + 1 rows and n + d bounded variables:
 *   max yᵀa  s.t.  a_i ∈ [tau − 1, tau],  Σ a_i = 0,  |Σ_i x_ij a_i| ≤ n·alpha,
 * whose row multipliers are (−w, −b). `start` warm-starts the dual from an approximate solution
 * (a_i starts at tau where its residual is positive, else at tau − 1).
 */
export function quantileLP(
  x: ArrayLike<number>,
  n: number,
  d: number,
  y: ArrayLike<number>,
  tau: number,
  alpha: number,
  opts: { form?: 'primal' | 'dual'; start?: { weight: ArrayLike<number>; bias: number }; maxIterations?: number } = {},
): QuantileLPResult {
  const form = opts.form ?? 'dual';
  let weight = new Float64Array(d);
  let bias = 0;
  let res: LPResult;
  if (form === 'primal') {
    const N = 2 * d + 2 + 2 * n;
    const A = new Float64Array(n * N);
    const c = new Float64Array(N);
    for (let j = 0; j < 2 * d; j++) c[j] = n * alpha;
    for (let i = 0; i < n; i++) {
      const row = i * N;
      for (let j = 0; j < d; j++) {
        A[row + j] = x[i * d + j]!;
        A[row + d + j] = -x[i * d + j]!;
      }
      A[row + 2 * d] = 1;
      A[row + 2 * d + 1] = -1;
      A[row + 2 * d + 2 + i] = 1;
      A[row + 2 * d + 2 + n + i] = -1;
      c[2 * d + 2 + i] = tau;
      c[2 * d + 2 + n + i] = 1 - tau;
    }
    res = solveBoundedLP(
      { A, m: n, N, b: y, c, lower: new Float64Array(N), upper: new Float64Array(N).fill(Infinity) },
      { maxIterations: opts.maxIterations },
    );
    for (let j = 0; j < d; j++) weight[j] = res.x[j]! - res.x[d + j]!;
    bias = res.x[2 * d]! - res.x[2 * d + 1]!;
  } else {
    const m = d + 1;
    const N = n + d;
    const A = new Float64Array(m * N);
    const c = new Float64Array(N);
    const lower = new Float64Array(N);
    const upper = new Float64Array(N);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < d; j++) A[j * N + i] = x[i * d + j]!;
      A[d * N + i] = 1;
      c[i] = -y[i]!;
      lower[i] = tau - 1;
      upper[i] = tau;
    }
    for (let j = 0; j < d; j++) {
      A[j * N + n + j] = -1;
      lower[n + j] = -n * alpha;
      upper[n + j] = n * alpha;
    }
    let startAtUpper: Uint8Array | undefined;
    if (opts.start) {
      startAtUpper = new Uint8Array(N);
      const w0 = opts.start.weight;
      for (let i = 0; i < n; i++) {
        let q = opts.start.bias;
        for (let j = 0; j < d; j++) q += x[i * d + j]! * w0[j]!;
        startAtUpper[i] = y[i]! - q > 0 ? 1 : 0;
      }
      for (let j = 0; j < d; j++) startAtUpper[n + j] = w0[j]! > 0 ? 1 : 0;
    }
    res = solveBoundedLP({ A, m, N, b: new Float64Array(m), c, lower, upper }, { startAtUpper, maxIterations: opts.maxIterations });
    for (let j = 0; j < d; j++) weight[j] = -res.duals[j]!;
    bias = -res.duals[d]!;
  }
  if (res.status !== 'optimal') throw new Error(`quantileLP (${form}, tau ${tau}): the simplex ended ${res.status}`);
  const lpObjective = (form === 'primal' ? res.objective : -res.objective) / n;
  if (d === 0) weight = new Float64Array(0);
  return { weight, bias, objective: quantileObjective(x, n, d, y, tau, alpha, weight, bias), lpObjective, iterations: res.iterations };
}
