/**
 * The paper's Figure 3 as a grid of line panels: one panel per metric (the left-tail quantiles and
 * the expectation) against the RL step, one line per run (mean over seeds) with a band of the seeds'
 * spread, `band`:
 *   'sd'       mean ± s, s the sample standard deviation over the S seeds (the default);
 *   'min-max'  from the lowest to the highest seed curve at each step;
 *   't95'      mean ± t_{0.975, S−1} s / √S, the 95 % t-interval of the seed mean.
 * With one seed every band is the line itself. Pure string SVG; PNG through resvg.
 */

export type BandKind = 'sd' | 'min-max' | 't95';
export const BAND_KINDS: readonly BandKind[] = ['sd', 'min-max', 't95'];

/** t_{0.975, df} for df = 1 … 30 (table values), then the normal 1.96. */
const T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06, 2.056, 2.052, 2.048, 2.045, 2.042];
export function t975(df: number): number {
  return df >= 1 ? (T975[df - 1] ?? 1.96) : NaN;
}

const BAND_LEGEND: Record<BandKind, string> = { sd: 'band ±1 sd', 'min-max': 'band min–max of seeds', t95: 'band 95 % t-interval of the mean' };

/** The six quantities of the panels. */
export const FIGURE3_QUANTITIES = ['q0.05', 'q0.10', 'q0.15', 'q0.20', 'q0.25', 'expectation'] as const;

/** Their metric names in a namespace: 'reward' (the QRM's estimate, every RLOO run) or 'truth' (figure3's exact ones). */
export function figure3Keys(namespace: string): string[] {
  return FIGURE3_QUANTITIES.map((k) => `${namespace}/${k}`);
}

/** The default panels: the reward model's estimates (reward/q0.05 … reward/expectation). */
export const FIGURE3_KEYS: readonly string[] = figure3Keys('reward');

export interface RunSeries {
  /** Shown in the legend, e.g. "risk-neutral". */
  label: string;
  /** One metrics table per seed: rows with a numeric `step` and the plotted keys (old flat names are read too: core's names.ts). */
  seeds: Record<string, unknown>[][];
}

export interface Aggregate {
  steps: number[];
  mean: number[];
  lo: number[];
  hi: number[];
}

export { readMetricsFile } from '@qrlhf/core';
import { upgradeMetricRow } from '@qrlhf/core';

/** Trailing moving average over `window` points (window 1 leaves the series as it is). */
export function movingAverage(xs: number[], window: number): number[] {
  const out: number[] = [];
  let sum = 0;
  for (let i = 0; i < xs.length; i++) {
    sum += xs[i]!;
    if (i >= window) sum -= xs[i - window]!;
    out.push(sum / Math.min(i + 1, window));
  }
  return out;
}

/**
 * Mean and band over seeds of one key, on the steps every seed logged. Each seed's curve is
 * smoothed first (so the band shows seed-to-seed spread, not step noise).
 */
export function aggregateSeeds(seeds: Record<string, unknown>[][], key: string, smooth = 1, band: BandKind = 'sd'): Aggregate {
  const perSeed = seeds.map((rows) => {
    const pts = rows
      .filter((r) => typeof r['step'] === 'number' && typeof r[key] === 'number' && Number.isFinite(r[key]))
      .map((r) => [r['step'] as number, r[key] as number] as const)
      .sort((a, b) => a[0] - b[0]);
    const vals = movingAverage(
      pts.map((p) => p[1]),
      smooth,
    );
    return new Map(pts.map((p, i) => [p[0], vals[i]!]));
  });
  if (perSeed.length === 0) return { steps: [], mean: [], lo: [], hi: [] };
  const steps = [...perSeed[0]!.keys()].filter((s) => perSeed.every((m) => m.has(s))).sort((a, b) => a - b);
  const mean: number[] = [];
  const lo: number[] = [];
  const hi: number[] = [];
  for (const s of steps) {
    const v = perSeed.map((m) => m.get(s)!);
    const mu = v.reduce((a, b) => a + b, 0) / v.length;
    const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mu) ** 2, 0) / (v.length - 1)) : 0;
    mean.push(mu);
    if (band === 'min-max') {
      lo.push(Math.min(...v));
      hi.push(Math.max(...v));
    } else {
      const half = band === 't95' ? (v.length > 1 ? (t975(v.length - 1) * sd) / Math.sqrt(v.length) : 0) : sd;
      lo.push(mu - half);
      hi.push(mu + half);
    }
  }
  return { steps, mean, lo, hi };
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function fmt(x: number): string {
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(1);
  return Number(x.toPrecision(3)).toString();
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export interface Figure3Options {
  keys?: readonly string[];
  title?: string;
  smooth?: number;
  cols?: number;
  /** What the band around each run's mean shows (see the header); default 'sd'. */
  band?: BandKind;
  /** Panel titles per key; defaults to "quantile τ = 0.05" (reward/q0.05), "true quantile τ = 0.05" (truth/q0.05) etc. */
  panelTitle?: (key: string) => string;
}

function defaultPanelTitle(key: string): string {
  const slash = key.indexOf('/');
  const ns = slash >= 0 ? key.slice(0, slash) : '';
  const name = key.slice(slash + 1);
  const m = /^q(\d+(?:\.\d+)?)$/.exec(name);
  const what = m ? `quantile τ = ${m[1]}` : name;
  return ns === 'truth' ? `true ${what}` : ns === 'reward' || ns === '' ? what : key;
}

/** Renders the panels as an SVG document (a string). */
export function figure3Svg(runs: RunSeries[], opts: Figure3Options = {}): string {
  const keys = opts.keys ?? FIGURE3_KEYS;
  // rows a caller read without readMetricsFile may still carry an old run's flat names
  runs = runs.map((r) => ({ ...r, seeds: r.seeds.map((rows) => rows.map((row) => upgradeMetricRow(row))) }));
  const cols = opts.cols ?? 3;
  const rows = Math.ceil(keys.length / cols);
  const pw = 320;
  const ph = 230;
  const top = opts.title ? 40 : 12;
  const legendH = 28;
  const W = cols * pw + 20;
  const H = top + rows * ph + legendH + 10;
  const m = { l: 58, r: 12, t: 26, b: 40 };
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
  );
  if (opts.title) out.push(`<text x="${W / 2}" y="26" font-size="17" text-anchor="middle">${esc(opts.title)}</text>`);
  keys.forEach((key, idx) => {
    const ox = 10 + (idx % cols) * pw;
    const oy = top + Math.floor(idx / cols) * ph;
    const aggs = runs.map((r) => aggregateSeeds(r.seeds, key, opts.smooth ?? 1, opts.band ?? 'sd'));
    const allX = aggs.flatMap((a) => a.steps);
    const allY = aggs.flatMap((a) => [...a.lo, ...a.hi]);
    const x0 = allX.length ? Math.min(...allX) : 0;
    const x1 = allX.length ? Math.max(...allX) : 1;
    let y0 = allY.length ? Math.min(...allY) : 0;
    let y1 = allY.length ? Math.max(...allY) : 1;
    if (y1 - y0 < 1e-9) {
      y0 -= 0.5;
      y1 += 0.5;
    }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad;
    y1 += pad;
    const iw = pw - m.l - m.r;
    const ih = ph - m.t - m.b;
    const sx = (x: number) => ox + m.l + (x1 > x0 ? ((x - x0) / (x1 - x0)) * iw : iw / 2);
    const sy = (y: number) => oy + m.t + ih - ((y - y0) / (y1 - y0)) * ih;
    out.push(
      `<text x="${ox + m.l + iw / 2}" y="${oy + 16}" font-size="13" text-anchor="middle">${esc((opts.panelTitle ?? defaultPanelTitle)(key))}</text>`,
      `<rect x="${ox + m.l}" y="${oy + m.t}" width="${iw}" height="${ih}" fill="none" stroke="#444" stroke-width="1"/>`,
    );
    for (const t of niceTicks(y0, y1, 4)) {
      const y = sy(t).toFixed(1);
      out.push(
        `<line x1="${ox + m.l}" x2="${ox + m.l + iw}" y1="${y}" y2="${y}" stroke="#e4e4e4"/>`,
        `<text x="${ox + m.l - 5}" y="${y}" font-size="10" text-anchor="end" dominant-baseline="middle">${fmt(t)}</text>`,
      );
    }
    for (const t of niceTicks(x0, x1, 4)) {
      const x = sx(t).toFixed(1);
      out.push(
        `<line x1="${x}" x2="${x}" y1="${oy + m.t + ih}" y2="${oy + m.t + ih + 4}" stroke="#444"/>`,
        `<text x="${x}" y="${oy + m.t + ih + 15}" font-size="10" text-anchor="middle">${fmt(t)}</text>`,
      );
    }
    out.push(`<text x="${ox + m.l + iw / 2}" y="${oy + ph - 8}" font-size="11" text-anchor="middle">RL step</text>`);
    aggs.forEach((a, ri) => {
      if (a.steps.length === 0) return;
      const c = COLORS[ri % COLORS.length]!;
      const upper = a.steps.map((s, i) => `${sx(s).toFixed(1)},${sy(a.hi[i]!).toFixed(1)}`);
      const lower = a.steps.map((s, i) => `${sx(s).toFixed(1)},${sy(a.lo[i]!).toFixed(1)}`).reverse();
      out.push(`<polygon points="${[...upper, ...lower].join(' ')}" fill="${c}" fill-opacity="0.18" stroke="none"/>`);
      const line = a.steps.map((s, i) => `${sx(s).toFixed(1)},${sy(a.mean[i]!).toFixed(1)}`).join(' ');
      out.push(`<polyline points="${line}" fill="none" stroke="${c}" stroke-width="1.8"/>`);
    });
  });
  const ly = top + rows * ph + 16;
  let lx = 20;
  runs.forEach((r, ri) => {
    const c = COLORS[ri % COLORS.length]!;
    const n = r.seeds.length;
    const text = `${r.label} (mean of ${n} seed${n === 1 ? '' : 's'}, ${BAND_LEGEND[opts.band ?? 'sd']})`;
    out.push(
      `<line x1="${lx}" x2="${lx + 24}" y1="${ly}" y2="${ly}" stroke="${c}" stroke-width="3"/>`,
      `<text x="${lx + 30}" y="${ly}" font-size="12" dominant-baseline="middle">${esc(text)}</text>`,
    );
    lx += 50 + 6.8 * text.length;
  });
  out.push('</svg>');
  return out.join('\n');
}

/** Rasterises an SVG document to PNG bytes (resvg, with the system's fonts for the labels). */
export async function svgToPng(svg: string, width = 1400): Promise<Uint8Array> {
  const { Resvg } = await import('@resvg/resvg-js');
  const r = new Resvg(svg, { fitTo: { mode: 'width', value: width }, font: { loadSystemFonts: true } });
  return r.render().asPng();
}
