/**
 * The numbers of Figure 3's runs: per-tau means of estimated and true quantiles, seed means, the
 * QRM's mean absolute error, and the Markdown table of the final values.
 */

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

export interface RunSummary {
  final: { estimated: Q; true: Q };
  qrm_mae: Q;
  seeds: { seed: number; estimated: Q; true: Q; qrm_mae: Q; moves: Record<string, number> }[];
}

const fmt = (x: number) => (Number.isFinite(x) ? x.toFixed(4) : 'n/a');

/** The Markdown table of the final values: estimate and truth per run, and their differences. */
export function summaryMarkdown(runs: Record<string, RunSummary>, note: string): string {
  const names = Object.keys(runs);
  const lines: string[] = [];
  lines.push('# Figure 3: final values', '', note, '');
  lines.push(`| quantity | ${names.map((n) => `${n} (QRM estimate) | ${n} (true)`).join(' | ')} |`);
  lines.push(`|---|${names.map(() => '---:|---:').join('|')}|`);
  for (const key of SUMMARY_KEYS) {
    lines.push(`| ${key} | ${names.map((n) => `${fmt(runs[n]!.final.estimated[key])} | ${fmt(runs[n]!.final.true[key])}`).join(' | ')} |`);
  }
  lines.push('', '| QRM mean absolute error | ' + names.join(' | ') + ' |', `|---|${names.map(() => '---:').join('|')}|`);
  for (const key of SUMMARY_KEYS) lines.push(`| ${key} | ${names.map((n) => fmt(runs[n]!.qrm_mae[key])).join(' | ')} |`);
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
  lines.push('');
  return lines.join('\n');
}
