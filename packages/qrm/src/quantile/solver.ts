/**
 * The fast solver for the L1-penalised quantile regression of one attribute, all K levels at once:
 *
 *   min_{w_k, b_k}  (1/n) Σ_i rho_{tau_k}(y_i − w_k·x_i − b_k) + alpha ||w_k||_1,   k = 1..K
 *
 * (scikit-learn QuantileRegressor's objective: the intercept is not penalised).
 *
 * Method: accelerated proximal gradient (FISTA) on a smoothed pinball loss, with adaptive restart
 * and continuation on the smoothing, and a certificate of optimality at every iteration.
 *  - Smoothing: rho_tau is replaced by its Moreau envelope with parameter mu, whose derivative is
 *    psi(u) = clip(u / mu, tau − 1, tau) and which is within mu·max(tau, 1 − tau)²/2 of rho_tau.
 *  - Preconditioning that leaves the problem unchanged: columns are centred and scaled to unit
 *    variance inside the products (X stays untouched: Xc·v = X·(v/s) − (m·v/s)), the intercept
 *    absorbs the centring, and the L1 penalty becomes the weighted penalty Σ alpha/s_j |v_j| in the
 *    scaled coordinates, whose prox is a per-coordinate soft threshold.
 *  - All K levels share one product per direction: R = X·W ([n, d]·[d, K]) and G = Xᵀ·Psi
 *    ([d, n]·[n, K]), on tfjs (XNNPACK's fast path on wasm needs both operands plain, so Xᵀ is
 *    materialised once). Levels that have converged leave the products.
 *  - Certificate: at every evaluated point z the true (unsmoothed) objective P(z) is known from R,
 *    and a = theta·(psi − mean psi) is a feasible point of the LP dual
 *      max (1/n) yᵀa  s.t.  a ∈ [tau − 1, tau]^n, Σ a = 0, |Xᵀa|_∞ ≤ n alpha
 *    (theta ≤ 1 scales it into the box and the L∞ ball; Xᵀa comes from G at no extra cost), so
 *    the gap P_best − D_best bounds the distance to the exact optimum. A level stops when its
 *    relative gap is below `tolerance`; the smoothing shrinks when the gap is down to the
 *    smoothing error.
 *  - Finish: the best point's intercept is set to the exact tau-quantile of its residuals (the
 *    optimal intercept for those weights), and, when n·(d+1) is small enough, the exact LP (the
 *    dual simplex of lp.ts, warm-started from the first-order solution) makes the optimum exact.
 *  - Determinism: the result is a function of the inputs and options alone. How much work goes to
 *    the certificates is budgeted in counted units, not seconds: during the iterations the master
 *    LP is solved every `certifyEvery` iterations unless the simplex work so far (tableau cells,
 *    see WorkMeter) exceeds CERTIFY_SHARE per multiply-add of the first-order products (about a
 *    tenth of the time on the machines measured; it never binds on the Figure 3 fits, where the
 *    certificates take under 1 % of the time), and the final certificates stop after
 *    `certifyWork` cells. Earlier, both were wall-clock budgets, and a loaded machine skipped
 *    certificates that moved the smoothing schedule and the stopping iteration, so two runs of the
 *    same config gave different heads. `timeLimit` and `certifyTimeLimit` remain, as opt-in
 *    deadlines that make the result depend on the machine's speed.
 */
import * as tf from '@tensorflow/tfjs';
import { DualPool, WorkMeter, basisDual } from './certificate.js';
import { pinball, quantileLP } from './lp.js';

export interface SolveOptions {
  alpha: number;
  taus: ArrayLike<number>;
  /** Stop a level when (P_best − D_best) ≤ tolerance · P_best. Default 1e-4. */
  tolerance?: number;
  /** Maximal number of first-order iterations (each: two products). Default 3000. */
  maxIterations?: number;
  /** Wall-clock budget of the first-order phase, seconds. Default Infinity (none). Opt-in: with a
   *  limit the result depends on the machine's speed and load, not only on the inputs. */
  timeLimit?: number;
  /** Exact LP finish when n·(d+1) ≤ lpMaxCells (default 2e6); 0 disables it. */
  lpMaxCells?: number;
  /** A level also stops when its best objective improved by less than stallTolerance (relative,
   *  default 1e-6) over the last stallWindow (default 40) iterations. */
  stallTolerance?: number;
  stallWindow?: number;
  /** Solve the dual pool's master LP every this many iterations (default 20; see certificate.ts). */
  certifyEvery?: number;
  /** Work for the certificates at the end (the master LP and the crossover of certificate.ts), in
   *  simplex tableau cells (WorkMeter); default 3e8, about 10 s on the project's shared 2-core test machine. During the
   *  iterations the master LP is skipped whenever its work exceeds CERTIFY_SHARE of the products'. */
  certifyWork?: number;
  /** Opt-in wall-clock cap, seconds, on the certificates at the end (default: none, or
   *  timeLimit / 10 when a timeLimit is given); like timeLimit it makes the result machine-dependent. */
  certifyTimeLimit?: number;
  onProgress?: (info: { iteration: number; active: number; worstGap: number; products?: number; smoothing?: number; bestObjective?: number }) => void;
}

export interface SolveResult {
  /** [K, d] weights on the original (unscaled) features. */
  weight: Float64Array;
  bias: Float64Array;
  /** The true objective of the returned heads, per level. */
  objective: Float64Array;
  /** A certified lower bound of the optimum, per level (from the best dual point). */
  lowerBound: Float64Array;
  iterations: number;
  /** Per level: the first-order iterations it took part in. */
  levelIterations: Int32Array;
  /** Per level: 'lp' (exact LP finish), 'gap' (certified gap below tolerance), 'stall' (no more
   *  progress), 'limit' (iteration/time budget hit). */
  finish: ('lp' | 'gap' | 'stall' | 'limit')[];
}

/**
 * Simplex tableau cells (WorkMeter) allowed per multiply-add of the first-order products before the
 * master LP is skipped during the iterations. Measured on this machine (2 shared cores, wasm): a
 * cell costs ~30 ns and a product multiply-add, with the JS loops around it, ~3 ns, so 0.01 is about
 * a tenth of the time, the old wall-clock rule; the Figure 3 fits use 2.5e-4 to 6e-4 of it.
 */
export const CERTIFY_SHARE = 0.01;

/** x: [n, d] row-major float32 (the rows to fit); y: the n labels. */
export async function solveQuantileLevels(x: Float32Array, n: number, d: number, y: ArrayLike<number>, opts: SolveOptions): Promise<SolveResult> {
  const K = opts.taus.length;
  const taus = Float64Array.from(opts.taus);
  const alpha = opts.alpha;
  const tol = opts.tolerance ?? 1e-4;
  const maxIter = opts.maxIterations ?? 3000;
  const deadline = opts.timeLimit === undefined || opts.timeLimit === Infinity ? Infinity : performance.now() + 1000 * opts.timeLimit;
  const lpMaxCells = opts.lpMaxCells ?? 2e6;
  const stallTolerance = opts.stallTolerance ?? 1e-6;

  // ---- column statistics (float64) ----
  const mean = new Float64Array(d);
  const sd = new Float64Array(d);
  for (let i = 0; i < n; i++) {
    const row = i * d;
    for (let j = 0; j < d; j++) mean[j] += x[row + j]!;
  }
  for (let j = 0; j < d; j++) mean[j] /= n;
  for (let i = 0; i < n; i++) {
    const row = i * d;
    for (let j = 0; j < d; j++) {
      const v = x[row + j]! - mean[j]!;
      sd[j] += v * v;
    }
  }
  const live = new Uint8Array(d);
  const thresh = new Float64Array(d); // alpha / s_j
  for (let j = 0; j < d; j++) {
    sd[j] = Math.sqrt(sd[j]! / n);
    live[j] = sd[j]! > 1e-12 * (1 + Math.abs(mean[j]!)) ? 1 : 0;
    thresh[j] = live[j] ? alpha / sd[j]! : Infinity;
  }
  const yArr = Float64Array.from(y);
  let ySum = 0;
  for (let i = 0; i < n; i++) ySum += yArr[i]!;
  let yMin = Infinity;
  let yMax = -Infinity;
  for (let i = 0; i < n; i++) {
    yMin = Math.min(yMin, yArr[i]!);
    yMax = Math.max(yMax, yArr[i]!);
  }
  const yRange = Math.max(yMax - yMin, 1e-12);

  if (d === 0) {
    // no features: each head is an exact tau-quantile of y
    const bias = Float64Array.from(taus, (tau) => orderQuantile(yArr, tau));
    const objective = Float64Array.from(taus, (tau, k) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += pinball(yArr[i]! - bias[k]!, tau);
      return s / n;
    });
    return { weight: new Float64Array(0), bias, objective, lowerBound: objective.slice(), iterations: 0, levelIterations: new Int32Array(K), finish: Array.from(taus, () => "lp" as const) };
  }
  const X = tf.tensor2d(x, [n, d]);
  const XT = tf.tidy(() => tf.transpose(X));
  try {
    // ---- largest eigenvalue of Xcᵀ Xc / n (scaled columns), by block power iteration ----
    const lam = await powerIteration(X, XT, n, d, mean, sd, live);
    const lipschitzBase = Math.max(lam * 1.1, 1); // the intercept direction contributes 1 (centred)

    // ---- per-level state: scaled weights v (d), intercept c for centred columns, and the
    // predictions q = Xc·v + c of the current and previous iterates (the products are linear,
    // so the extrapolated point's predictions are the same combination: no extra product) ----
    const v = Array.from({ length: K }, () => new Float64Array(d));
    const vPrev = Array.from({ length: K }, () => new Float64Array(d));
    const c = new Float64Array(K);
    const cPrev = new Float64Array(K);
    const qv = Array.from({ length: K }, () => new Float64Array(n));
    const qvPrev = Array.from({ length: K }, () => new Float64Array(n));
    const tMom = new Float64Array(K).fill(1);
    const mu = new Float64Array(K);
    const Lk = new Float64Array(K);
    const bestP = new Float64Array(K).fill(Infinity);
    const bestD = new Float64Array(K).fill(-Infinity);
    const pools = Array.from({ length: K }, () => new DualPool(d, n * alpha));
    const levelIter = new Int32Array(K);
    const bestW = Array.from({ length: K }, () => new Float64Array(d));
    const bestB = new Float64Array(K);
    const done = new Uint8Array(K);
    const sinceShrink = new Int32Array(K);
    const stallWindow = opts.stallWindow ?? 40;
    const history = Array.from({ length: K }, () => [] as number[]);
    const stalled = new Uint8Array(K);
    const medY = orderQuantile(yArr, 0.5);
    let mad = 0;
    for (let i = 0; i < n; i++) mad += Math.abs(yArr[i]! - medY);
    const mu0 = 0.5 * Math.max(mad / n, 1e-9 * yRange);
    for (let k = 0; k < K; k++) {
      // start at w = 0 with the unconditional tau-quantile (the optimum among constant predictors)
      c[k] = cPrev[k] = orderQuantile(yArr, taus[k]!);
      qv[k]!.fill(c[k]!);
      qvPrev[k]!.fill(c[k]!);
      mu[k] = mu0;
      Lk[k] = lipschitzBase / mu0;
    }
    /** original-scale weights and intercept of a scaled point */
    const toOriginal = (vs: Float64Array, cs: number, out: Float32Array, stride: number, col: number): { b: number; l1: number } => {
      let mw = 0;
      let l1 = 0;
      for (let j = 0; j < d; j++) {
        const w = live[j] ? vs[j]! / sd[j]! : 0;
        out[j * stride + col] = w;
        mw += mean[j]! * w;
        l1 += Math.abs(w);
      }
      return { b: cs - mw, l1 };
    };
    const smooth = (u: number, tau: number, m: number): number =>
      u >= tau * m ? tau * u - (tau * tau * m) / 2 : u <= (tau - 1) * m ? (tau - 1) * u - ((tau - 1) * (tau - 1) * m) / 2 : (u * u) / (2 * m);

    const certEvery = opts.certifyEvery ?? 20;
    // the certificates' work during the iterations, against the products' multiply-adds (foWork)
    const certMeter = new WorkMeter(Infinity, deadline);
    let foWork = 0;
    let iter = 0;
    let totalTrials = 0;
    for (; iter < maxIter && (deadline === Infinity || performance.now() < deadline); iter++) {
      const active: number[] = [];
      for (let k = 0; k < K; k++) if (!done[k]) active.push(k);
      if (active.length === 0) break;
      const A = active.length;
      // extrapolated points z, their residuals, losses and psi
      const beta = new Float64Array(A);
      const Psi = new Float32Array(n * A);
      const zW = new Float32Array(d * A);
      const fz = new Float64Array(A);
      const psiSum = new Float64Array(A);
      const psiY = new Float64Array(A);
      const psiMax = new Float64Array(A).fill(-Infinity);
      const psiMin = new Float64Array(A).fill(Infinity);
      const zC = new Float64Array(A);
      const zS = Array.from({ length: A }, () => new Float64Array(d));
      for (let a = 0; a < A; a++) {
        const k = active[a]!;
        const tau = taus[k]!;
        const m = mu[k]!;
        const tNext = (1 + Math.sqrt(1 + 4 * tMom[k]! * tMom[k]!)) / 2;
        const bt = (tMom[k]! - 1) / tNext;
        beta[a] = bt;
        const vk = v[k]!;
        const vp = vPrev[k]!;
        const zs = zS[a]!;
        for (let j = 0; j < d; j++) zs[j] = vk[j]! + bt * (vk[j]! - vp[j]!);
        zC[a] = c[k]! + bt * (c[k]! - cPrev[k]!);
        const q1 = qv[k]!;
        const q0 = qvPrev[k]!;
        let loss = 0;
        let sm = 0;
        let ps = 0;
        let py = 0;
        let pmax = -Infinity;
        let pmin = Infinity;
        for (let i = 0; i < n; i++) {
          const qz = q1[i]! + bt * (q1[i]! - q0[i]!);
          const u = yArr[i]! - qz;
          loss += u >= 0 ? tau * u : (tau - 1) * u;
          sm += smooth(u, tau, m);
          let p = u / m;
          if (p > tau) p = tau;
          else if (p < tau - 1) p = tau - 1;
          Psi[i * A + a] = p;
          ps += p;
          py += p * yArr[i]!;
          if (p > pmax) pmax = p;
          if (p < pmin) pmin = p;
        }
        fz[a] = sm / n;
        psiSum[a] = ps;
        psiY[a] = py;
        psiMax[a] = pmax;
        psiMin[a] = pmin;
        const { b, l1 } = toOriginal(zs, zC[a]!, zW, A, a);
        const P = loss / n + alpha * l1;
        if (P < bestP[k]!) {
          bestP[k] = P;
          const bw = bestW[k]!;
          for (let j = 0; j < d; j++) bw[j] = zW[j * A + a]!;
          bestB[k] = b;
        }
      }
      const G = await matmulData(XT, Psi, n, A);
      foWork += n * d * A;
      // dual points and gradients
      const grad = Array.from({ length: A }, () => new Float64Array(d));
      let worstGap = 0;
      const improveNow = iter % certEvery === certEvery - 1 && certMeter.spent <= CERTIFY_SHARE * foWork;
      for (let a = 0; a < A; a++) {
        const k = active[a]!;
        const tau = taus[k]!;
        levelIter[k]!++;
        const pbar = psiSum[a]! / n;
        // a = theta (psi − pbar) is in the box and sums to 0; the pool handles the L∞ constraint
        const theta = boxScale(psiMax[a]!, psiMin[a]!, pbar, tau);
        const g = grad[a]!;
        const ga = new Float64Array(d);
        for (let j = 0; j < d; j++) {
          if (!live[j]) continue;
          const gj = G[j * A + a]! - mean[j]! * psiSum[a]!; // = Xᵀ(psi − pbar)_j
          ga[j] = theta * gj;
          g[j] = -gj / (sd[j]! * n);
        }
        pools[k]!.add(ga, (theta * (psiY[a]! - pbar * ySum)) / n);
        if (improveNow) pools[k]!.improve(20, 8, certMeter);
        bestD[k] = pools[k]!.best;
        const relGap = (bestP[k]! - bestD[k]!) / Math.max(bestP[k]!, 1e-12);
        worstGap = Math.max(worstGap, relGap);
        if (relGap <= tol) done[k] = 1;
        const h = history[k]!;
        h.push(bestP[k]!);
        if (h.length > stallWindow && h[h.length - 1 - stallWindow]! - bestP[k]! <= stallTolerance * bestP[k]!) {
          done[k] = 1;
          stalled[k] = 1;
        }
      }
      // prox-gradient steps with backtracking on L (per level), one product per trial
      let pending = [...Array(A).keys()].filter((a) => !done[active[a]!]);
      const newV = Array.from({ length: A }, () => new Float64Array(d));
      const newC = new Float64Array(A);
      let trials = 0;
      while (pending.length > 0) {
        const P = pending.length;
        const Wn = new Float32Array(d * P);
        const bn = new Float64Array(P);
        for (let p = 0; p < P; p++) {
          const a = pending[p]!;
          const k = active[a]!;
          const L = Lk[k]!;
          const zs = zS[a]!;
          const g = grad[a]!;
          const nv = newV[a]!;
          for (let j = 0; j < d; j++) {
            if (!live[j]) continue;
            const u = zs[j]! - g[j]! / L;
            const th = thresh[j]! / L;
            nv[j] = u > th ? u - th : u < -th ? u + th : 0;
          }
          newC[a] = zC[a]! + psiSum[a]! / n / L;
          bn[p] = toOriginal(nv, newC[a]!, Wn, P, p).b;
        }
        const Q = await matmulData(X, Wn, d, P);
        foWork += n * d * P;
        const failed: number[] = [];
        for (let p = 0; p < P; p++) {
          const a = pending[p]!;
          const k = active[a]!;
          const tau = taus[k]!;
          const m = mu[k]!;
          const L = Lk[k]!;
          // sufficient decrease: f(v) <= f(z) + g·(v − z) + L/2 ||v − z||²
          let lin = 0;
          let sq = 0;
          const zs = zS[a]!;
          const g = grad[a]!;
          const nv = newV[a]!;
          for (let j = 0; j < d; j++) {
            const dv = nv[j]! - zs[j]!;
            lin += g[j]! * dv;
            sq += dv * dv;
          }
          const dc = newC[a]! - zC[a]!;
          lin += (-psiSum[a]! / n) * dc;
          sq += dc * dc;
          let sm = 0;
          let loss = 0;
          const qn = qvPrev[k]!; // recycled as the buffer of the new predictions
          for (let i = 0; i < n; i++) {
            const q = Q[i * P + p]! + bn[p]!;
            qn[i] = q;
            const u = yArr[i]! - q;
            sm += smooth(u, tau, m);
            loss += u >= 0 ? tau * u : (tau - 1) * u;
          }
          let l1 = 0;
          for (let j = 0; j < d; j++) l1 += Math.abs(Wn[j * P + p]!);
          const Pv = loss / n + alpha * l1;
          if (Pv < bestP[k]!) {
            bestP[k] = Pv;
            const bw = bestW[k]!;
            for (let j = 0; j < d; j++) bw[j] = Wn[j * P + p]!;
            bestB[k] = bn[p]!;
          }
          // Sufficient decrease: f(v) <= f(z) + g·(v − z) + L/2 ||v − z||². The products are float32,
          // so f(v) and f(z) carry rounding noise (measured ~1e-8 relative); an excess that does not
          // shrink with the step (the quadratic term far below it) and is within 1e-5 of f is that
          // noise, not curvature: the step is accepted instead of doubling L (which would freeze the
          // iterate at a tiny step, the old 'stall').
          const excess = sm / n - (fz[a]! + lin + (L / 2) * sq);
          const noise = excess <= 1e-5 * Math.abs(fz[a]!) && (L / 2) * sq < 1e-2 * excess;
          if (excess > 1e-12 * Math.abs(fz[a]!) && !noise && trials < 30) {
            Lk[k] = L * 2;
            failed.push(a);
            continue;
          }
          // accepted: restart test, then shift the iterates
          let dot = (zC[a]! - newC[a]!) * (newC[a]! - c[k]!);
          const vk = v[k]!;
          for (let j = 0; j < d; j++) dot += (zs[j]! - nv[j]!) * (nv[j]! - vk[j]!);
          vPrev[k] = vk;
          v[k] = nv;
          cPrev[k] = c[k]!;
          c[k] = newC[a]!;
          qvPrev[k] = qv[k]!;
          qv[k] = qn;
          tMom[k] = (1 + Math.sqrt(1 + 4 * tMom[k]! * tMom[k]!)) / 2;
          sinceShrink[k]!++;
          let restart = dot > 0;
          // continuation: shrink the smoothing at a restart (the momentum has arrived) or once
          // the certified gap is down to the smoothing error
          const gap = bestP[k]! - bestD[k]!;
          const smoothErr = (m * Math.max(tau, 1 - tau) ** 2) / 2;
          if (((restart && sinceShrink[k]! >= 5) || gap < 3 * smoothErr) && m > 1e-7 * yRange) {
            mu[k] = m * 0.3;
            Lk[k] = Lk[k]! / 0.3;
            sinceShrink[k] = 0;
            restart = true;
          }
          if (restart) {
            tMom[k] = 1;
            vPrev[k]!.set(v[k]!);
            cPrev[k] = c[k]!;
            qvPrev[k]!.set(qv[k]!);
          }
          Lk[k] = Lk[k]! * 0.9; // let the step grow again
        }
        trials++;
        pending = failed;
      }
      totalTrials += trials;
      let muMax = 0;
      let pSum = 0;
      for (const k of active) {
        muMax = Math.max(muMax, mu[k]! / yRange);
        pSum += bestP[k]!;
      }
      opts.onProgress?.({ iteration: iter, active: A, worstGap, products: totalTrials, smoothing: muMax, bestObjective: pSum });
    }

    // ---- finish: exact intercept for the best weights, then the exact LP when affordable ----
    const weight = new Float64Array(K * d);
    const bias = new Float64Array(K);
    const objective = new Float64Array(K);
    const finish: ('lp' | 'gap' | 'stall' | 'limit')[] = [];
    const Wall = new Float32Array(d * K);
    for (let k = 0; k < K; k++) for (let j = 0; j < d; j++) Wall[j * K + k] = bestW[k]![j]!;
    const R = await matmulData(X, Wall, d, K);
    const resid = Array.from({ length: K }, () => new Float64Array(n));
    const obj0 = new Float64Array(K);
    const b0 = new Float64Array(K);
    for (let k = 0; k < K; k++) {
      const tau = taus[k]!;
      const r = resid[k]!;
      for (let i = 0; i < n; i++) r[i] = yArr[i]! - R[i * K + k]!;
      const b = orderQuantile(r, tau);
      let lossSum = 0;
      for (let i = 0; i < n; i++) {
        r[i] = r[i]! - b;
        lossSum += pinball(r[i]!, tau);
      }
      let l1 = 0;
      for (let j = 0; j < d; j++) l1 += Math.abs(bestW[k]![j]!);
      obj0[k] = lossSum / n + alpha * l1;
      b0[k] = b;
    }
    // last dual points, at the returned heads (the smoothed derivative of their residuals at three
    // smoothings: one product for all), then the pool's master LP once more
    const certSeconds = opts.certifyTimeLimit ?? (deadline === Infinity ? Infinity : Math.min(10, opts.timeLimit! / 10));
    const finalMeter = new WorkMeter(opts.certifyWork ?? 3e8, certSeconds === Infinity ? Infinity : performance.now() + 1000 * certSeconds);
    const uncertified: number[] = [];
    for (let k = 0; k < K; k++) if ((obj0[k]! - bestD[k]!) > tol * Math.max(obj0[k]!, 1e-12)) uncertified.push(k);
    if (uncertified.length > 0) {
      const mults = [0, 1, 10]; // 0: the sign point of basisDual
      const C = uncertified.length * mults.length;
      const Psi = new Float32Array(n * C);
      const stats: { k: number; theta: number; sum: number; c: number }[] = [];
      uncertified.forEach((k, u) => {
        const tau = taus[k]!;
        const r = resid[k]!;
        mults.forEach((f, q) => {
          const col = u * mults.length + q;
          const m = Math.max(mu[k]! * f, 1e-12 * yRange);
          if (f === 0) {
            let ps = 0;
            for (let i = 0; i < n; i++) {
              const p = r[i]! > 0 ? tau : tau - 1;
              Psi[i * C + col] = p;
              ps += p;
            }
            stats.push({ k, theta: 0, sum: ps, c: 0 });
            return;
          }
          let ps = 0;
          let py = 0;
          let pmax = -Infinity;
          let pmin = Infinity;
          for (let i = 0; i < n; i++) {
            let p = r[i]! / m;
            if (p > tau) p = tau;
            else if (p < tau - 1) p = tau - 1;
            Psi[i * C + col] = p;
            ps += p;
            py += p * yArr[i]!;
            if (p > pmax) pmax = p;
            if (p < pmin) pmin = p;
          }
          const pbar = ps / n;
          const theta = boxScale(pmax, pmin, pbar, tau);
          stats.push({ k, theta, sum: ps, c: (theta * (py - pbar * ySum)) / n });
        });
      });
      const G = await matmulData(XT, Psi, n, C);
      stats.forEach(({ k, theta, sum, c }, col) => {
        const ga = new Float64Array(d);
        if (theta === 0) {
          // the sign point: Xcᵀa⁰ for the crossover dual
          for (let j = 0; j < d; j++) if (live[j]) ga[j] = G[j * C + col]! - mean[j]! * sum;
          if (finalMeter.exhausted) return;
          const bd = basisDual({ x, n, d, y: yArr, tau: taus[k]!, nAlpha: n * alpha, mean, live, resid: resid[k]!, weight: bestW[k]!, h0: ga, meter: finalMeter });
          if (bd) pools[k]!.add(bd.g, bd.c);
          return;
        }
        for (let j = 0; j < d; j++) if (live[j]) ga[j] = theta * (G[j * C + col]! - mean[j]! * sum);
        pools[k]!.add(ga, c);
      });
      for (const k of uncertified) {
        pools[k]!.improve(20, 8, finalMeter);
        bestD[k] = pools[k]!.best;
      }
    }
    for (let k = 0; k < K; k++) {
      const tau = taus[k]!;
      let obj = obj0[k]!;
      let w: Float64Array = bestW[k]!;
      let bb = b0[k]!;
      let how: 'lp' | 'gap' | 'stall' | 'limit' = stalled[k] ? 'stall' : done[k] ? 'gap' : 'limit';
      if (how !== 'gap' && obj - bestD[k]! <= tol * Math.max(obj, 1e-12)) how = 'gap';
      if (lpMaxCells > 0 && n * (d + 1) <= lpMaxCells) {
        const lp = quantileLP(x, n, d, yArr, tau, alpha, { form: 'dual', start: { weight: w, bias: bb } });
        if (lp.objective <= obj) {
          w = lp.weight;
          bb = lp.bias;
          obj = lp.objective;
          how = 'lp';
          bestD[k] = Math.max(bestD[k]!, lp.lpObjective);
        }
      }
      weight.set(w, k * d);
      bias[k] = bb;
      objective[k] = obj;
      finish.push(how);
    }
    return { weight, bias, objective, lowerBound: bestD, iterations: iter, levelIterations: levelIter, finish };
  } finally {
    X.dispose();
    XT.dispose();
  }
}

/** The largest theta <= 1 with theta (psi_i − pbar) in the dual box [tau − 1, tau] for every i,
 *  given the largest and smallest psi_i and their mean pbar. */
function boxScale(pmax: number, pmin: number, pbar: number, tau: number): number {
  let theta = 1;
  if (pmax - pbar > tau) theta = Math.min(theta, tau / (pmax - pbar));
  if (pmin - pbar < tau - 1) theta = Math.min(theta, (tau - 1) / (pmin - pbar));
  return theta;
}

/** Returns M·B as plain data: M a resident [r, inner] tensor, B [inner, cols] row-major. */
async function matmulData(M: tf.Tensor2D, B: Float32Array, inner: number, cols: number): Promise<Float32Array> {
  // (the data is read outside tf.tidy: tidy would walk a returned typed array element by element)
  const P = tf.tidy(() => tf.matMul(M, tf.tensor2d(B, [inner, cols])));
  const data = (await P.data()) as Float32Array; // await: a GPU backend has no synchronous read
  P.dispose();
  return data;
}

/** The ceil(n·tau)-th smallest value: a tau-quantile, i.e. an exact minimiser of Σ rho_tau(r_i − b). */
export function orderQuantile(r: ArrayLike<number>, tau: number): number {
  const a = Float64Array.from(r);
  const k = Math.min(a.length - 1, Math.max(0, Math.ceil(a.length * tau) - 1));
  return quickselect(a, k);
}

function quickselect(a: Float64Array, k: number): number {
  let lo = 0;
  let hi = a.length - 1;
  while (lo < hi) {
    const pivot = a[(lo + hi) >> 1]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return a[k]!;
  }
  return a[k]!;
}

/** Largest eigenvalue of Xcᵀ Xc / n with Xc the centred, unit-variance columns (block power iteration). */
async function powerIteration(
  X: tf.Tensor2D,
  XT: tf.Tensor2D,
  n: number,
  d: number,
  mean: Float64Array,
  sd: Float64Array,
  live: Uint8Array,
): Promise<number> {
  const B = 4;
  let V = new Float64Array(d * B);
  let seed = 12345;
  for (let i = 0; i < V.length; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    V[i] = live[Math.floor(i / B)] ? seed / 2147483648 - 0.5 : 0;
  }
  let lam = 0;
  for (let it = 0; it < 8; it++) {
    orthonormalise(V, d, B);
    // y = Xc v = X (v/s) − 1 (m·v/s);  Xcᵀ y = (Xᵀ y − m Σy) / s
    const W = new Float32Array(d * B);
    const off = new Float64Array(B);
    for (let j = 0; j < d; j++) {
      if (!live[j]) continue;
      for (let b = 0; b < B; b++) {
        const w = V[j * B + b]! / sd[j]!;
        W[j * B + b] = w;
        off[b] += mean[j]! * w;
      }
    }
    const Yd = await matmulData(X, W, d, B);
    const sums = new Float64Array(B);
    for (let i = 0; i < n; i++) for (let b = 0; b < B; b++) {
      const v = Yd[i * B + b]! - off[b]!;
      Yd[i * B + b] = v;
      sums[b] += v;
    }
    const Z = await matmulData(XT, Yd, n, B);
    const next = new Float64Array(d * B);
    let best = 0;
    for (let b = 0; b < B; b++) {
      let num = 0;
      for (let j = 0; j < d; j++) {
        if (!live[j]) continue;
        const v = (Z[j * B + b]! - mean[j]! * sums[b]!) / (sd[j]! * n);
        next[j * B + b] = v;
        num += v * V[j * B + b]!;
      }
      best = Math.max(best, num); // Rayleigh quotient of the (unit) column b
    }
    lam = best;
    V = next;
  }
  return lam;
}

function orthonormalise(V: Float64Array, d: number, B: number): void {
  for (let b = 0; b < B; b++) {
    for (let p = 0; p < b; p++) {
      let dot = 0;
      for (let j = 0; j < d; j++) dot += V[j * B + b]! * V[j * B + p]!;
      for (let j = 0; j < d; j++) V[j * B + b] -= dot * V[j * B + p]!;
    }
    let nn = 0;
    for (let j = 0; j < d; j++) nn += V[j * B + b]! ** 2;
    nn = Math.sqrt(nn) || 1;
    for (let j = 0; j < d; j++) V[j * B + b] /= nn;
  }
}
