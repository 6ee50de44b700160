/**
 * Lower bounds (certificates of optimality) for one level of the L1-penalised quantile regression
 *
 *   P* = min_{w, b} (1/n) Σ_i rho_tau(y_i − w·x_i − b) + alpha ||w||_1,
 *
 * from its LP dual
 *
 *   D* = max (1/n) yᵀa   s.t.  a ∈ [tau − 1, tau]^n,  Σ_i a_i = 0,  |Σ_i x_ij a_i| ≤ n·alpha  (all j),
 *
 * (weak duality: every feasible a gives (1/n) yᵀa ≤ P*; the constraint Σ a = 0 makes Xᵀa invariant
 * to shifting the columns, so centred columns may be used for it).
 *
 * The first-order solver produces, at every iteration and for free, a point a_t = theta_t (psi_t − mean
 * psi_t) in the box with Σ a_t = 0 (psi_t the smoothed pinball's derivative at the iterate) together
 * with g_t = Xᵀa_t and c_t = (1/n) yᵀa_t. Such a point alone usually violates the L∞ constraint, and
 * scaling it down until it holds loses the same share of its value. The pool keeps the last few of
 * them and finds the best point of their convex hull with the origin,
 *
 *   max_λ Σ_t λ_t c_t   s.t.  λ ≥ 0,  Σ_t λ_t ≤ 1,  |Σ_t λ_t g_t|_∞ ≤ n·alpha,
 *
 * a small LP (pool-size variables; the d L∞ rows are added lazily, most violated first) solved with
 * the exact simplex of lp.ts. Every convex combination with Σ λ ≤ 1 stays in the box and sums to 0,
 * so any λ ≥ 0 gives the valid bound theta·Σλ_t c_t with theta = min(1, 1/Σλ, n·alpha·(1 − margin)/|Σλ_t g_t|_∞),
 * computed in float64 whatever the LP returned. This is the restricted master problem of the dual
 * (its columns are the solver's dual iterates; the classical weighted average of smoothing methods is
 * one feasible λ). The combination found becomes one column of the next pool, so the bound never
 * decreases. `margin` (default 1e-5) absorbs the float32 rounding of the products that gave g_t.
 */
import { solveBoundedLP, type LPResult } from './lp.js';

/**
 * Work done by the certificates, counted in a unit that does not depend on the clock: the tableau
 * cells a simplex touches, iterations · m · (N + m) per solve (an upper bound: a bound flip costs
 * less). A budget in this unit makes how much certification is done, and so every bound and every
 * decision taken on one, a function of the inputs alone (the same heads on a loaded machine). An
 * explicit wall-clock deadline can be added (opt-in: `deadline`, performance.now() time).
 */
export class WorkMeter {
  spent = 0;
  constructor(
    /** Cells after which no new simplex round starts (the last finished round is used). */
    public limit = Infinity,
    /** performance.now() after which no new round starts (Infinity: none, the default). */
    public deadline = Infinity,
  ) {}

  /** Counts one solve of an m-row, N-column LP. */
  count(res: Pick<LPResult, 'iterations'>, m: number, N: number): void {
    this.spent += res.iterations * m * (N + m);
  }

  get exhausted(): boolean {
    return this.spent > this.limit || (this.deadline !== Infinity && performance.now() > this.deadline);
  }
}

export class DualPool {
  /** Best certified lower bound so far. */
  best = -Infinity;
  private readonly g: Float64Array[] = [];
  private readonly c: number[] = [];
  /** L∞ rows active at the last solution: index j, sign (+1 / −1). */
  private rows: { j: number; s: number }[] = [];
  private readonly cap: number;

  constructor(
    private readonly d: number,
    /** n·alpha */
    capacity: number,
    private readonly size = 24,
    private readonly margin = 1e-5,
  ) {
    this.cap = capacity * (1 - margin);
  }

  /** Adds a box-feasible, zero-sum point by its g = Xᵀa (d) and c = (1/n) yᵀa; returns its own scaled bound. */
  add(g: Float64Array, c: number): number {
    const own = this.bound(g, 1, c);
    if (own > this.best) this.best = own;
    this.g.push(g);
    this.c.push(c);
    if (this.g.length > this.size) {
      // keep column 0 (the last combination) and drop the oldest iterate
      this.g.splice(1, 1);
      this.c.splice(1, 1);
    }
    return own;
  }

  /** theta · c for a point with Σλ = lam and Xᵀa = h. */
  private bound(h: Float64Array, lam: number, c: number): number {
    if (c <= 0) return 0; // the origin (a = 0) already gives 0
    let inf = 0;
    for (let j = 0; j < this.d; j++) inf = Math.max(inf, Math.abs(h[j]!));
    let theta = 1;
    if (lam > 1) theta = 1 / lam;
    if (inf > this.cap) theta = Math.min(theta, this.cap / inf);
    return theta * c;
  }

  /** Solves the master LP over the pool; updates and returns the best bound. No new round starts
   *  once `meter` is exhausted (the last solved round is used); its work is counted there. */
  improve(maxRounds = 20, addPerRound = 8, meter: WorkMeter = new WorkMeter()): number {
    const m = this.g.length;
    if (m === 0) return this.best;
    const d = this.d;
    const cap = this.cap;
    let lambda = new Float64Array(m);
    const h = new Float64Array(d);
    const rows = this.rows.slice();
    const have = new Set(rows.map((r) => r.j * 2 + (r.s > 0 ? 0 : 1)));
    let solved = false;
    for (let round = 0; round < maxRounds; round++) {
      if (round > 0 && meter.exhausted) break;
      const R = rows.length + 1;
      const N = m + R; // λ, then one slack per row
      const A = new Float64Array(R * N);
      const b = new Float64Array(R).fill(1);
      for (let t = 0; t < m; t++) A[t] = 1;
      A[m] = 1;
      for (let r = 0; r < rows.length; r++) {
        const { j, s } = rows[r]!;
        const base = (r + 1) * N;
        for (let t = 0; t < m; t++) A[base + t] = (s * this.g[t]![j]!) / cap;
        A[base + m + r + 1] = 1;
      }
      const cost = new Float64Array(N);
      for (let t = 0; t < m; t++) cost[t] = -this.c[t]!;
      const res = solveBoundedLP(
        { A, m: R, N, b, c: cost, lower: new Float64Array(N), upper: new Float64Array(N).fill(Infinity) },
        { maxIterations: 20 * (R + N) + 200 },
      );
      meter.count(res, R, N);
      if (res.status !== 'optimal') break;
      lambda = res.x.slice(0, m);
      solved = true;
      h.fill(0);
      for (let t = 0; t < m; t++) {
        const l = lambda[t]!;
        if (l === 0) continue;
        const gt = this.g[t]!;
        for (let j = 0; j < d; j++) h[j] += l * gt[j]!;
      }
      // the most violated L∞ rows not yet in the LP
      const viol: { j: number; s: number; v: number }[] = [];
      for (let j = 0; j < d; j++) {
        const v = Math.abs(h[j]!) / cap - 1;
        if (v > 1e-9) {
          const s = h[j]! > 0 ? 1 : -1;
          if (!have.has(j * 2 + (s > 0 ? 0 : 1))) viol.push({ j, s, v });
        }
      }
      if (viol.length === 0) break;
      viol.sort((p, q) => q.v - p.v);
      for (const r of viol.slice(0, addPerRound)) {
        rows.push({ j: r.j, s: r.s });
        have.add(r.j * 2 + (r.s > 0 ? 0 : 1));
      }
    }
    if (!solved) return this.best;
    let lam = 0;
    let c = 0;
    for (let t = 0; t < m; t++) {
      lam += lambda[t]!;
      c += lambda[t]! * this.c[t]!;
    }
    const value = this.bound(h, lam, c);
    if (value > this.best) this.best = value;
    // keep the rows that bind at this solution (a warm start for the next call)
    this.rows = rows.filter(({ j, s }) => s * h[j]! > cap * (1 - 1e-6));
    // the combination, as a point in the box (Σλ ≤ 1 after scaling), becomes column 0
    const scale = lam > 1 ? 1 / lam : 1;
    const gAgg = Float64Array.from(h, (v) => v * scale);
    const keep = Math.max(1, Math.floor(this.size / 2));
    const recent = this.g.length - keep;
    const gs = this.g.splice(Math.max(recent, 0));
    const cs = this.c.splice(Math.max(recent, 0));
    this.g.length = 0;
    this.c.length = 0;
    this.g.push(gAgg, ...gs);
    this.c.push(c * scale, ...cs);
    return this.best;
  }
}

/**
 * A dual point built from a near-optimal primal point (a crossover towards the LP's basis). At a
 * vertex optimum the LP dual has a_i = tau where the residual is positive and tau − 1 where it is
 * negative; only the points fitted exactly (about one per nonzero weight, plus one for the
 * intercept) take values inside the box, fixed by the constraints that bind. Here a_i is fixed that
 * way for all but the `free` points with the smallest |residual| (2·(|support| + 1) + 30 of them),
 * and those are chosen by the exact simplex of lp.ts on the restricted dual
 *
 *   max Σ_F y_i a_i  s.t.  a_F ∈ [tau − 1, tau],  Σ_F a_i = −Σ_N a_i,  |Σ_F x_ij a_i + Σ_N x_ij a_i| ≤ n·alpha,
 *
 * with the L∞ rows added lazily (the support's and the nearly binding ones first, then the most
 * violated). A feasible point of it is feasible for the full dual, so its value is a lower bound;
 * it becomes a pool column. `h0` is Xᵀa⁰ (centred columns) of the sign point a⁰ (tau where r > 0,
 * else tau − 1) over all d columns, from one product. (A square solve on the |S| + 1 smallest
 * residuals, tried first, was fast but put most of them outside the box: the basis is not simply
 * the smallest residuals of a first-order solution.) Cost: a dense simplex of about |S| rows and
 * 3|S| columns, seconds for |S| ≈ 200; null when the support exceeds `maxSupport` or the LP fails.
 */
export function basisDual(p: {
  x: Float32Array;
  n: number;
  d: number;
  y: ArrayLike<number>;
  tau: number;
  nAlpha: number;
  mean: Float64Array;
  live: Uint8Array;
  resid: Float64Array;
  weight: ArrayLike<number>;
  h0: Float64Array;
  maxSupport?: number;
  /** Where the work is counted; no new simplex round starts once it is exhausted (the last finished round is used). */
  meter?: WorkMeter;
}): { g: Float64Array; c: number } | null {
  const { x, n, d, y, tau, nAlpha, mean, live, resid, weight, h0 } = p;
  let support = 0;
  for (let j = 0; j < d; j++) if (live[j] && weight[j] !== 0) support++;
  if (support > (p.maxSupport ?? 400)) return null;
  const nF = Math.min(n, 2 * (support + 1) + 30);
  const absr = Float64Array.from(resid, Math.abs);
  const F = Array.from({ length: n }, (_, i) => i)
    .sort((i1, i2) => absr[i1]! - absr[i2]!)
    .slice(0, nF);
  const a0 = (i: number): number => (resid[i]! > 0 ? tau : tau - 1);
  const hN = Float64Array.from(h0); // Xcᵀa over the fixed points
  let sumN = 0;
  let valN = 0;
  for (let i = 0; i < n; i++) {
    sumN += a0(i);
    valN += a0(i) * y[i]!;
  }
  const xF = new Float64Array(nF * d); // centred rows of the free points
  for (let f = 0; f < nF; f++) {
    const i = F[f]!;
    const ai = a0(i);
    sumN -= ai;
    valN -= ai * y[i]!;
    for (let j = 0; j < d; j++) {
      if (!live[j]) continue;
      const v = x[i * d + j]! - mean[j]!;
      xF[f * d + j] = v;
      hN[j] -= v * ai;
    }
  }
  const lo = tau - 1; // u_f = a_f − lo ∈ [0, 1]
  const rows: { j: number; s: number }[] = [];
  const have = new Set<number>();
  const addRow = (j: number, s: number): void => {
    const key = 2 * j + (s > 0 ? 0 : 1);
    if (have.has(key)) return;
    have.add(key);
    rows.push({ j, s });
  };
  for (let j = 0; j < d; j++) if (live[j] && weight[j] !== 0) addRow(j, weight[j]! > 0 ? 1 : -1);
  for (let j = 0; j < d; j++) if (live[j] && Math.abs(h0[j]!) > 0.9 * nAlpha) addRow(j, h0[j]! > 0 ? 1 : -1);
  let best: Float64Array | null = null;
  const h = new Float64Array(d);
  for (let round = 0; round < 30; round++) {
    if (best && p.meter?.exhausted) break;
    const R = rows.length + 1;
    const N = nF + rows.length;
    const A = new Float64Array(R * N);
    const b = new Float64Array(R);
    for (let f = 0; f < nF; f++) A[f] = 1;
    b[0] = -sumN - nF * lo;
    rows.forEach(({ j, s }, r) => {
      const base = (r + 1) * N;
      let off = 0;
      for (let f = 0; f < nF; f++) {
        const v = xF[f * d + j]! / nAlpha;
        A[base + f] = s * v;
        off += v;
      }
      A[base + nF + r] = 1;
      b[r + 1] = 1 - s * (hN[j]! / nAlpha + lo * off);
    });
    const c = new Float64Array(N);
    for (let f = 0; f < nF; f++) c[f] = -y[F[f]!]!;
    const upper = new Float64Array(N).fill(Infinity);
    for (let f = 0; f < nF; f++) upper[f] = 1;
    // each free point starts at its sign value (or where the last round left it)
    const startAtUpper = new Uint8Array(N);
    for (let f = 0; f < nF; f++) startAtUpper[f] = best ? (best[f]! - lo > 0.5 ? 1 : 0) : resid[F[f]!]! > 0 ? 1 : 0;
    const res = solveBoundedLP({ A, m: R, N, b, c, lower: new Float64Array(N), upper }, { maxIterations: 20 * (R + N) + 500, startAtUpper });
    p.meter?.count(res, R, N);
    if (res.status !== 'optimal') return null;
    best = Float64Array.from(res.x.subarray(0, nF), (u) => Math.min(1, Math.max(0, u)) + lo);
    h.set(hN);
    for (let f = 0; f < nF; f++) {
      const af = best[f]!;
      for (let j = 0; j < d; j++) h[j] += xF[f * d + j]! * af;
    }
    const viol: { j: number; s: number; v: number }[] = [];
    for (let j = 0; j < d; j++) {
      if (!live[j]) continue;
      const v = Math.abs(h[j]!) - nAlpha * (1 - 1e-7);
      const s = h[j]! > 0 ? 1 : -1;
      if (v > 0 && !have.has(2 * j + (s > 0 ? 0 : 1))) viol.push({ j, s, v });
    }
    if (viol.length === 0) break;
    viol.sort((q1, q2) => q2.v - q1.v);
    for (const r of viol.slice(0, 64)) addRow(r.j, r.s);
  }
  if (!best) return null;
  let sum = sumN;
  let val = valN;
  for (let f = 0; f < nF; f++) {
    sum += best[f]!;
    val += best[f]! * y[F[f]!]!;
  }
  // the LP's equality holds to rounding: put the remainder on a free point with room for it
  for (let f = 0; f < nF && sum !== 0; f++) {
    const af = best[f]! - sum;
    if (af < lo || af > tau) continue;
    val -= sum * y[F[f]!]!;
    for (let j = 0; j < d; j++) h[j] -= xF[f * d + j]! * sum;
    best[f] = af;
    sum = 0;
  }
  if (sum !== 0 && Math.abs(sum) > 1e-9) return null;
  return { g: h, c: val / n };
}
