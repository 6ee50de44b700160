/**
 * The numbers of Figure 3's runs: per-tau means of estimated and true quantiles, seed means, the
 * QRM's mean absolute error, bootstrap intervals (stats.ts) of every final value, of each run's gain
 * over the SFT policy and of the difference between the runs, the paper's claims checked on them,
 * and the Markdown of it all.
 *
 * Claims (each PASS/FAIL from the intervals, nothing chosen by hand):
 *   (a) both runs raise the true expectation over SFT: lower bound of final − start > 0, each run;
 *   (b) risk-aware ends with a higher true q0.05 and q0.10: lower bound of (aware − neutral) > 0, both;
 *   (c) the final true expectations agree: |aware − neutral| / neutral ≤ 0.03.
 * Then one line per other level (q0.15 … q0.25, the expectation, and the upper levels q0.50, q0.75,
 * q0.95): the difference with its interval, read as higher / lower / no clear difference.
 */
import { bootstrapIntervals, type BootstrapOptions, type Interval } from './stats.js';

export const SUMMARY_KEYS = ['q0.05', 'q0.10', 'q0.15', 'q0.20', 'q0.25', 'expectation'] as const;
export type SummaryKey = (typeof SUMMARY_KEYS)[number];
export type Q = Record<SummaryKey, number>;

/** The key of a quantile level in metrics and summaries: 'q' and two decimals. */
export function tauKey(tau: number): string {
  return `q${tau.toFixed(2)}`;
}

/**
 * Per-key mean of the rows (quantile vectors of K values over the same taus), plus the
 * expectation: the mean of each row's K quantiles (the QRM's definition), or `expectations[i]`
 * when given (the world's exact expectation).
 */
export function meanQuantiles(rows: Float32Array[] | Float64Array[], taus: ArrayLike<number>, expectations?: ArrayLike<number>): Q {
  const out = {} as Q;
  const K = taus.length;
  for (const key of SUMMARY_KEYS) {
    let s = 0;
    for (let i = 0; i < rows.length; i++) {
      const r = rows[i]!;
      if (key === 'expectation') {
        if (expectations) {
          s += expectations[i]!;
          continue;
        }
        let e = 0;
        for (let k = 0; k < K; k++) e += r[k]!;
        s += e / K;
      } else {
        const k = indexOfTau(taus, key);
        s += r[k]!;
      }
    }
    out[key] = rows.length ? s / rows.length : NaN;
  }
  return out;
}

/** Per-key mean absolute error between estimated and true quantile vectors, row by row (the
 *  expectation: the mean of the estimated quantiles against `trueExpectations[i]`). */
export function meanAbsError(est: Float32Array[], truth: Float32Array[] | Float64Array[], taus: ArrayLike<number>, trueExpectations: ArrayLike<number>): Q {
  const out = {} as Q;
  const K = taus.length;
  for (const key of SUMMARY_KEYS) {
    let s = 0;
    for (let i = 0; i < est.length; i++) {
      if (key === 'expectation') {
        let a = 0;
        for (let k = 0; k < K; k++) a += est[i]![k]!;
        s += Math.abs(a / K - trueExpectations[i]!);
      } else {
        const k = indexOfTau(taus, key);
        s += Math.abs(est[i]![k]! - truth[i]![k]!);
      }
    }
    out[key] = est.length ? s / est.length : NaN;
  }
  return out;
}

function indexOfTau(taus: ArrayLike<number>, key: string): number {
  for (let k = 0; k < taus.length; k++) if (tauKey(taus[k]!) === key) return k;
  throw new Error(`no quantile level ${key} among the QRM's taus`);
}

/** The mean over seeds of per-seed summaries. */
export function meanOver(qs: Q[]): Q {
  const out = {} as Q;
  for (const key of SUMMARY_KEYS) out[key] = qs.reduce((a, q) => a + q[key], 0) / qs.length;
  return out;
}

export interface EvalMeans {
  estimated: Q;
  true: Q;
  qrm_mae: Q;
  moves: Record<string, number>;
}

type Sides<T> = { true: Record<string, T>; estimated: Record<string, T> };

export interface RunSummary {
  final: { estimated: Q; true: Q };
  /** The SFT policy (step 0) evaluated the same way, mean over the same seeds' evaluation draws. */
  start: { estimated: Q; true: Q };
  qrm_mae: Q;
  qrm_mae_start: Q;
  seeds: (EvalMeans & { seed: number; start: EvalMeans })[];
  ci: {
    /** Interval of each final value. */
    final: Sides<[number, number]>;
    /** final − start, with its interval. */
    gain: Sides<Interval>;
  };
}

/** Per-prompt values of one policy's evaluation for one seed: key → values over the prompts. */
export type PromptValues = { true: Record<string, Float64Array>; estimated: Record<string, Float64Array> };

/** The levels summarised beyond SUMMARY_KEYS (the upper quantiles a risk-aware policy may give up), where the QRM has them. */
export const UPPER_KEYS = ['q0.50', 'q0.75', 'q0.95'] as const;

/** Per-prompt values of the keys from evaluation records (quantile vectors over `taus`; the true expectation exact, the estimated one the mean of the quantiles). */
export function promptValues(records: { estimated: number[]; true: number[]; trueExpectation: number }[], taus: ArrayLike<number>, keys: readonly string[]): PromptValues {
  const out: PromptValues = { true: {}, estimated: {} };
  for (const key of keys) {
    if (key === 'expectation') {
      out.true[key] = Float64Array.from(records, (r) => r.trueExpectation);
      out.estimated[key] = Float64Array.from(records, (r) => r.estimated.reduce((a, b) => a + b, 0) / r.estimated.length);
    } else {
      const k = indexOfTau(taus, key);
      out.true[key] = Float64Array.from(records, (r) => r.true[k]!);
      out.estimated[key] = Float64Array.from(records, (r) => r.estimated[k]!);
    }
  }
  return out;
}

export interface Comparison {
  /** The two runs compared: [a, b] for a − b. */
  runs: [string, string];
  true: Record<string, Interval>;
  estimated: Record<string, Interval>;
}

export interface Claim {
  id: string;
  pass: boolean | null;
  text: string;
}

/**
 * The intervals of the summary, all from one two-level bootstrap (stats.ts; the seeds are resampled
 * together across runs, the prompts together across runs and the SFT policy: every comparison paired).
 * `final[run][s]` and `start[s]`: per-prompt values of seed s (same seeds in the same order everywhere).
 */
export function summaryIntervals(
  final: Record<string, PromptValues[]>,
  start: PromptValues[],
  pair: [string, string],
  keys: readonly string[],
  opts: BootstrapOptions,
): { final: Record<string, Sides<[number, number]>>; gain: Record<string, Sides<Interval>>; difference: Comparison } {
  const sides = ['true', 'estimated'] as const;
  const stats: Float64Array[][] = [];
  const slot: ((r: Interval[]) => void)[] = [];
  const diff = (a: Float64Array, b: Float64Array) => a.map((v, i) => v - b[i]!);
  const res = {
    final: {} as Record<string, Sides<[number, number]>>,
    gain: {} as Record<string, Sides<Interval>>,
    difference: { runs: pair, true: {}, estimated: {} } as Comparison,
  };
  let n = 0;
  const add = (x: Float64Array[], put: (iv: Interval) => void) => {
    const i = n++;
    stats.push(x);
    slot.push((r) => put(r[i]!));
  };
  for (const [run, perSeed] of Object.entries(final)) {
    res.final[run] = { true: {}, estimated: {} };
    res.gain[run] = { true: {}, estimated: {} };
    for (const side of sides) {
      for (const key of keys) {
        add(perSeed.map((v) => v[side][key]!), (iv) => (res.final[run]![side][key] = iv.ci));
        add(perSeed.map((v, s) => diff(v[side][key]!, start[s]![side][key]!)), (iv) => (res.gain[run]![side][key] = iv));
      }
    }
  }
  for (const side of sides) {
    for (const key of keys) add(final[pair[0]]!.map((v, s) => diff(v[side][key]!, final[pair[1]]![s]![side][key]!)), (iv) => (res.difference[side][key] = iv));
  }
  const r = bootstrapIntervals(stats, opts);
  for (const put of slot) put(r);
  return res;
}

const f4 = (x: number) => (x >= 0 ? '+' : '') + x.toFixed(4);
const ivText = (iv: Interval) => `${f4(iv.value)} [${f4(iv.ci[0])}, ${f4(iv.ci[1])}]`;

/** The paper's claims and the other levels' lines, computed from the intervals (see the header). */
export function checkClaims(
  runs: Record<string, { final: { true: Q } }>,
  gain: Record<string, Sides<Interval>>,
  difference: Comparison,
  level: number,
): Claim[] {
  const [a, b] = difference.runs;
  const pct = `${Math.round(level * 100)} %`;
  const claims: Claim[] = [];
  const gains = Object.entries(gain).map(([run, g]) => ({ run, iv: g.true['expectation']! }));
  claims.push({
    id: 'a',
    pass: gains.every((g) => g.iv.ci[0] > 0),
    text: `(a) both runs raise the true expectation over SFT (final − start, ${pct} interval above 0): ${gains.map((g) => `${g.run} ${ivText(g.iv)}`).join('; ')}`,
  });
  const tail = ['q0.05', 'q0.10'].map((k) => ({ k, iv: difference.true[k]! }));
  claims.push({
    id: 'b',
    pass: tail.every((x) => x.iv.ci[0] > 0),
    text: `(b) ${a} ends with a higher true q0.05 and q0.10 (${a} − ${b}, ${pct} interval above 0): ${tail.map((x) => `${x.k} ${ivText(x.iv)}`).join('; ')}`,
  });
  const dE = difference.true['expectation']!;
  const base = runs[b]!.final.true.expectation;
  const rel = Math.abs(dE.value) / base;
  claims.push({
    id: 'c',
    pass: rel <= 0.03,
    text: `(c) the final true expectations are within 3 % of each other: ${a} − ${b} ${ivText(dE)}, |difference| / ${b} = ${(rel * 100).toFixed(2)} %`,
  });
  for (const key of Object.keys(difference.true)) {
    if (key === 'q0.05' || key === 'q0.10') continue;
    const iv = difference.true[key]!;
    const rb = runs[b]!.final.true[key as SummaryKey];
    const share = rb !== undefined && rb > 0 ? ` (${((iv.value / rb) * 100).toFixed(1)} % of ${b}'s)` : '';
    const verdict = iv.ci[0] > 0 ? `${a} higher` : iv.ci[1] < 0 ? `${a} lower: it gives up ${Math.abs(iv.value).toFixed(4)}${share}` : `no clear difference (the interval contains 0)`;
    claims.push({ id: `true ${key}`, pass: null, text: `true ${key}: ${a} − ${b} ${ivText(iv)}: ${verdict}` });
  }
  return claims;
}

const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : 'n/a');

/** The Markdown of the summary: final and start values, intervals, the QRM's error, the moves, and the claims last. */
export function summaryMarkdown(runs: Record<string, RunSummary>, difference: Comparison, claims: Claim[], note: string): string {
  const names = Object.keys(runs);
  const first = runs[names[0]!]!;
  const lines: string[] = [];
  const ci = (c: [number, number]) => `[${fmt(c[0])}, ${fmt(c[1])}]`;
  lines.push('# Figure 3: final values', '', note, '');
  lines.push(`| quantity | SFT (QRM estimate) | SFT (true) | ${names.map((n) => `${n} (QRM estimate) | ${n} (true)`).join(' | ')} |`);
  lines.push(`|---|---:|---:|${names.map(() => '---:|---:').join('|')}|`);
  for (const key of SUMMARY_KEYS) {
    lines.push(
      `| ${key} | ${fmt(first.start.estimated[key])} | ${fmt(first.start.true[key])} | ${names
        .map((n) => `${fmt(runs[n]!.final.estimated[key])} | ${fmt(runs[n]!.final.true[key])} ${ci(runs[n]!.ci.final.true[key]!)}`)
        .join(' | ')} |`,
    );
  }
  const [a, b] = difference.runs;
  lines.push('', `| true value | ${names.map((n) => `${n} − SFT`).join(' | ')} | ${a} − ${b} | ${a} − ${b} (QRM estimate) |`, `|---|${names.map(() => '---:').join('|')}|---:|---:|`);
  for (const key of Object.keys(difference.true)) {
    const iv = (x: Interval | undefined) => (x ? `${fmt(x.value)} ${ci(x.ci)}` : 'n/a');
    lines.push(`| ${key} | ${names.map((n) => iv(runs[n]!.ci.gain.true[key])).join(' | ')} | ${iv(difference.true[key])} | ${iv(difference.estimated[key])} |`);
  }
  lines.push('', `| QRM mean absolute error | SFT | ${names.join(' | ')} |`, `|---|---:|${names.map(() => '---:').join('|')}|`);
  for (const key of SUMMARY_KEYS) lines.push(`| ${key} | ${fmt(first.qrm_mae_start[key])} | ${names.map((n) => fmt(runs[n]!.qrm_mae[key])).join(' | ')} |`);
  lines.push('', '| share of final responses with the move | ' + names.join(' | ') + ' |', `|---|${names.map(() => '---:').join('|')}|`);
  const moves = [...new Set(names.flatMap((n) => runs[n]!.seeds.flatMap((s) => Object.keys(s.moves))))].sort();
  for (const m of moves) {
    lines.push(
      `| ${m} | ${names
        .map((n) => {
          const ss = runs[n]!.seeds;
          return fmt(ss.reduce((a, s) => a + (s.moves[m] ?? 0), 0) / ss.length);
        })
        .join(' | ')} |`,
    );
  }
  lines.push('', '## Claims', '');
  for (const c of claims) lines.push(`- ${c.pass === null ? '' : c.pass ? 'PASS ' : 'FAIL '}${c.text}`);
  lines.push('');
  return lines.join('\n');
}
