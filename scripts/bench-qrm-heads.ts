/**
 * Benchmark of the stage-1 quantile heads solver (packages/qrm/src/quantile).
 *   node --conditions=source --import=tsx scripts/bench-qrm-heads.ts [--sizes small|big|all] [--time-limit S]
 *     [--reference-time S] [--json FILE]
 * For each size: fits K levels of one attribute on synthetic hidden-state-like features (a low-rank
 * signal with uncentred, unequally scaled columns plus noise; skewed, heteroscedastic labels in
 * [0, 1]) and prints n, d, K, seconds, peak RSS and, per tau, the objective; where an exact LP is
 * affordable the LP optimum and the relative excess, else the certified lower bound.
 * Where no LP is affordable, `--reference-time S` (default 0: off) also runs the solver for S seconds
 * with a tight stall rule and reports the timed fit's excess over that longer run's objective: a
 * lower bound of the true excess over the optimum (the longer run is not the optimum either).
 * Run the big size under `flock /tmp/cpu.lock`.
 */
import { writeFileSync } from 'node:fs';
import { Rng, initBackend } from '@qrlhf/core';
import { quantileLP, solveQuantileLevels, taus as makeTaus } from '@qrlhf/qrm';

interface Row {
  n: number;
  d: number;
  K: number;
  seconds: number;
  firstOrderIterations: number;
  peakRssGB: number;
  taus: number[];
  objective: number[];
  lpObjective: (number | null)[];
  lowerBound: number[];
  nonzeroWeights: number[];
  finish: string[];
  lpSeconds: number | null;
  referenceObjective: (number | null)[];
  referenceSeconds: number | null;
}

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const which = opt('--sizes') ?? 'all';
const timeLimit = Number(opt('--time-limit') ?? 45);
const jsonOut = opt('--json');
const referenceTime = Number(opt('--reference-time') ?? 0);

/** Synthetic features: x = mean_j + scale_j · (z·A + 0.5 e), labels from z with skewed heteroscedastic noise. */
function makeData(n: number, d: number, seed: string): { x: Float32Array; y: Float64Array } {
  const rng = new Rng(seed);
  const r = 8;
  const A = Float64Array.from({ length: r * d }, () => rng.normal() / Math.sqrt(r));
  const mean = Float64Array.from({ length: d }, () => 2 * rng.normal());
  const scale = Float64Array.from({ length: d }, (_, j) => (j % 97 === 0 ? 10 : 0.5 + rng.next()));
  // the bulk noise comes from a xorshift stream seeded by the Rng (hundreds of millions of draws)
  let s = rng.seed32() | 1;
  const unif = (): number => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
  const x = new Float32Array(n * d);
  const yRaw = new Float64Array(n);
  const z = new Float64Array(r);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < r; k++) z[k] = rng.normal();
    const row = i * d;
    for (let j = 0; j < d; j++) {
      let v = 0;
      for (let k = 0; k < r; k++) v += z[k]! * A[k * d + j]!;
      const e = unif() + unif() + unif() - 1.5; // roughly normal, sd 0.5
      x[row + j] = mean[j]! + scale[j]! * (v + e);
    }
    const eps = -Math.log(1 - rng.next()) - 1; // skewed
    yRaw[i] = z[0]! + 0.5 * z[1]! + (0.5 + 0.3 * Math.abs(z[2]!)) * eps;
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of yRaw) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  return { x, y: yRaw.map((v) => (v - lo) / (hi - lo)) };
}

function peakRssGB(): number {
  return process.resourceUsage().maxRSS / 1024 / 1024; // maxRSS is in kilobytes
}

async function main(): Promise<void> {
  await initBackend('wasm');
  const sizes: [number, number, number][] = [];
  if (which === 'small' || which === 'all') sizes.push([500, 8, 19], [2000, 16, 19], [10000, 32, 19], [20000, 256, 19]);
  if (which === 'big' || which === 'all') sizes.push([60000, 4096, 19]);
  const custom = /^(\d+)x(\d+)(?:x(\d+))?$/.exec(which);
  if (custom) sizes.push([Number(custom[1]), Number(custom[2]), Number(custom[3] ?? 19)]);
  if (sizes.length === 0) throw new Error(`--sizes: expected small, big, all or NxD[xK], got ${which}`);
  const rows: Row[] = [];
  for (const [n, d, K] of sizes) {
    const { x, y } = makeData(n, d, `bench-${n}-${d}`);
    const ts = Array.from(makeTaus(K));
    const t0 = performance.now();
    // first-order phase only (lpMaxCells 0), so the comparison with the LP below is meaningful
    const res = await solveQuantileLevels(x, n, d, y, {
      alpha: 0.003,
      taus: ts,
      lpMaxCells: 0,
      timeLimit,
      onProgress: (p) => {
        if (p.iteration % 10 === 0) process.stderr.write(`  n ${n} d ${d}: iteration ${p.iteration}, ${p.active} levels active, ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    const rss = peakRssGB();
    const lpFeasible = n * (d + 1) <= 400000;
    const lpObjective: (number | null)[] = [];
    const l0 = performance.now();
    for (let k = 0; k < K; k++) lpObjective.push(lpFeasible ? quantileLP(x, n, d, y, ts[k]!, 0.003).objective : null);
    let referenceObjective: (number | null)[] = ts.map(() => null);
    let referenceSeconds: number | null = null;
    if (!lpFeasible && referenceTime > 0) {
      const r0 = performance.now();
      const ref = await solveQuantileLevels(x, n, d, y, { alpha: 0.003, taus: ts, lpMaxCells: 0, timeLimit: referenceTime, tolerance: 1e-6, stallTolerance: 1e-8, stallWindow: 60 });
      referenceObjective = Array.from(ref.objective);
      referenceSeconds = (performance.now() - r0) / 1000;
      process.stderr.write(`  reference run: ${ref.iterations} iterations, ${referenceSeconds.toFixed(1)} s\n`);
    }
    const nonzero = ts.map((_, k) => {
      let c = 0;
      for (let j = 0; j < d; j++) if (res.weight[k * d + j] !== 0) c++;
      return c;
    });
    rows.push({
      n,
      d,
      K,
      seconds,
      firstOrderIterations: res.iterations,
      peakRssGB: rss,
      taus: ts,
      objective: Array.from(res.objective),
      lpObjective,
      lowerBound: Array.from(res.lowerBound),
      nonzeroWeights: nonzero,
      finish: [...res.finish],
      lpSeconds: lpFeasible ? (performance.now() - l0) / 1000 : null,
      referenceObjective,
      referenceSeconds,
    });
    printRow(rows[rows.length - 1]!);
  }
  console.log('\nsummary');
  console.log('| n | d | K | seconds | iterations | peak RSS GB | worst rel. excess over LP | worst excess over longer run | worst certified gap |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const ex = r.lpObjective.every((v) => v !== null)
      ? Math.max(...r.objective.map((o, k) => (o - r.lpObjective[k]!) / r.lpObjective[k]!)).toExponential(2)
      : 'LP not run';
    const refEx = r.referenceObjective.every((v) => v !== null)
      ? `${Math.max(...r.objective.map((o, k) => (o - r.referenceObjective[k]!) / r.referenceObjective[k]!)).toExponential(2)} (${r.referenceSeconds!.toFixed(0)} s run)`
      : '-';
    const gap = Math.max(...r.objective.map((o, k) => (o - r.lowerBound[k]!) / o)).toExponential(2);
    console.log(`| ${r.n} | ${r.d} | ${r.K} | ${r.seconds.toFixed(1)} | ${r.firstOrderIterations} | ${r.peakRssGB.toFixed(2)} | ${ex} | ${refEx} | ${gap} |`);
  }
  if (jsonOut) writeFileSync(jsonOut, JSON.stringify(rows, null, 2));
}

function printRow(r: Row): void {
  console.log(`\nn ${r.n}  d ${r.d}  K ${r.K}: ${r.seconds.toFixed(1)} s, ${r.firstOrderIterations} first-order iterations, peak RSS ${r.peakRssGB.toFixed(2)} GB` +
    (r.lpSeconds !== null ? ` (LP reference: ${r.lpSeconds.toFixed(1)} s for all levels)` : ''));
  console.log('| tau | objective | LP optimum | rel. excess | longer run | excess over it | certified lower bound | certified gap | finish | nonzero w |');
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  r.taus.forEach((tau, k) => {
    const lp = r.lpObjective[k];
    const ref = r.referenceObjective[k];
    console.log(
      `| ${tau.toFixed(2)} | ${r.objective[k]!.toPrecision(7)} | ${lp === null || lp === undefined ? '-' : lp.toPrecision(7)} | ` +
        `${lp === null || lp === undefined ? '-' : ((r.objective[k]! - lp) / lp).toExponential(2)} | ` +
        `${ref === null || ref === undefined ? '-' : ref.toPrecision(7)} | ${ref === null || ref === undefined ? '-' : ((r.objective[k]! - ref) / ref).toExponential(2)} | ` +
        `${r.lowerBound[k]!.toPrecision(7)} | ${((r.objective[k]! - r.lowerBound[k]!) / r.objective[k]!).toExponential(2)} | ${r.finish[k]} | ${r.nonzeroWeights[k]} |`,
    );
  });
}

await main();
