import test from 'ava';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { flagOf, flattenSchema } from '@qrlhf/core';
import { qrlhf, messageLines } from './cli-helpers.js';
import { PLOT_FIGURE3_SCHEMA } from '../src/stages/plot.js';

const QS = ['q0.05', 'q0.10', 'q0.15', 'q0.20', 'q0.25'];

/** A run folder whose metrics.jsonl uses today's names (reward/…, truth/…) or the old flat ones (q0.05, true/q0.05). */
function fakeRun(dir: string, shift: number, layout: 'new' | 'old' = 'new'): string {
  mkdirSync(dir, { recursive: true });
  const lines = Array.from({ length: 12 }, (_, step) => {
    const vals: Record<string, number> = { ...Object.fromEntries(QS.map((q) => [q, 1])), 'q0.05': shift + step / 10, expectation: 2 };
    const [est, tru] = layout === 'new' ? ['reward/', 'truth/'] : ['', 'true/'];
    const row: Record<string, number> = { step };
    for (const [k, v] of Object.entries(vals)) {
      row[est + k] = v;
      row[tru + k] = v + 100; // the exact quantiles, far from the estimates
    }
    return JSON.stringify(row);
  });
  writeFileSync(join(dir, 'metrics.jsonl'), lines.join('\n') + '\n');
  return dir;
}

/** The y-axis tick labels of the first panel (0.05 quantile). */
const firstPanelTicks = (svg: string): number[] => {
  const panel = svg.split('RL step')[0]!;
  return [...panel.matchAll(/text-anchor="end" dominant-baseline="middle">([^<]+)</g)].map((m) => Number(m[1]));
};

test('plot figure3 writes an SVG with one curve per run per panel and a PNG', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'qrlhf-plot-'));
  const a = [fakeRun(join(tmp, 'a1'), 0), fakeRun(join(tmp, 'a2'), 0.1)];
  const b = [fakeRun(join(tmp, 'b1'), 1)];
  const out = join(tmp, 'fig');
  const r = await qrlhf(['plot', 'figure3', '--runs', `neutral=${a.join(',')}`, '--runs', `aware=${b.join(',')}`, '--out', out]);
  t.is(r.code, 0, r.stderr);
  const svg = readFileSync(`${out}.svg`, 'utf8');
  t.is((svg.match(/<polyline /g) ?? []).length, 12);
  t.true(svg.includes('neutral (mean of 2 seeds'));
  t.true(svg.includes('quantile τ = 0.05'));
  t.true(existsSync(`${out}.png`));
  // the estimates lie near 0..2; the truth columns (100 higher) are not what is plotted
  t.true(Math.max(...firstPanelTicks(svg)) < 10);
});

test('plot figure3 reads a run logged with the old flat names exactly as one logged with the new names', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'qrlhf-plot-old-'));
  for (const quantiles of ['reward', 'truth']) {
    const svgs: string[] = [];
    for (const layout of ['new', 'old'] as const) {
      const runs = [fakeRun(join(tmp, `${layout}1`), 0, layout), fakeRun(join(tmp, `${layout}2`), 0.3, layout)];
      const out = join(tmp, `fig-${layout}-${quantiles}`);
      const r = await qrlhf(['plot', 'figure3', '--runs', `x=${runs.join(',')}`, '--quantiles', quantiles, '--out', out]);
      t.is(r.code, 0, r.stderr);
      svgs.push(readFileSync(`${out}.svg`, 'utf8'));
    }
    t.is(svgs[1], svgs[0], `--quantiles ${quantiles}: old layout plots as the new`);
    t.is((svgs[0]!.match(/<polyline /g) ?? []).length, 6);
    // truth: the exact quantiles, about 100 higher, under "true quantile" panel titles
    const ticks = firstPanelTicks(svgs[0]!);
    if (quantiles === 'truth') t.true(Math.min(...ticks) > 90 && svgs[0]!.includes('true quantile τ = 0.05'), String(ticks));
    else t.true(Math.max(...ticks) < 10, String(ticks));
  }
});

test('plot figure3 --help is generated from PLOT_FIGURE3_SCHEMA: every setting a flag with its doc and default', async (t) => {
  const r = await qrlhf(['plot', 'figure3', '--help']);
  t.is(r.code, 0, r.stderr);
  const fields = flattenSchema(PLOT_FIGURE3_SCHEMA);
  t.deepEqual(fields.map(([k]) => k).sort(), ['band', 'out', 'quantiles', 'runs', 'smooth', 'title']);
  for (const [key, f] of fields) {
    t.true(r.stdout.includes(flagOf(key)), `${flagOf(key)} in --help`);
    t.true(r.stdout.replace(/\s+/g, ' ').includes(f.doc.slice(0, 30)), `doc of ${key}`);
  }
  t.regex(r.stdout, /--config/);
  t.regex(r.stdout, /"reward", "truth"|reward, truth|reward \| truth/);
  t.regex(r.stdout, /--smooth[\s\S]*?\[default: 5\][\s\S]*?--quantiles/);
});

test('plot figure3 settings come from a --config file too, and flags are checked by the schema', async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'qrlhf-plot-cfg-'));
  const run = fakeRun(join(tmp, 'r1'), 0);
  const cfgFile = join(tmp, 'plot.json');
  writeFileSync(cfgFile, JSON.stringify({ runs: [`only=${run}`], out: join(tmp, 'from-config'), smooth: 1, title: 'from a file' }));
  const r = await qrlhf(['plot', 'figure3', '--config', cfgFile, '--band', 'min-max']);
  t.is(r.code, 0, r.stderr);
  const svg = readFileSync(join(tmp, 'from-config.svg'), 'utf8');
  t.true(svg.includes('from a file'));
  t.true(svg.includes('band min–max of seeds'));
  const bad = await qrlhf(['plot', 'figure3', '--runs', `x=${run}`, '--smooth', '0']);
  t.is(bad.code, 1);
  t.is(messageLines(bad.stderr).length, 1);
  t.regex(bad.stderr, /smooth/);
  const badQ = await qrlhf(['plot', 'figure3', '--runs', `x=${run}`, '--quantiles', 'true']);
  t.is(badQ.code, 1);
  t.regex(badQ.stderr, /quantiles/);
});

test('plot figure3 with a missing folder or no runs prints one line and exits 1', async (t) => {
  const r = await qrlhf(['plot', 'figure3', '--runs', 'x=/nonexistent/run']);
  t.is(r.code, 1);
  t.deepEqual(messageLines(r.stderr).length, 1);
  t.regex(r.stderr, /nonexistent\/run not found/);
  const r2 = await qrlhf(['plot', 'figure3']);
  t.is(r2.code, 1);
  t.is(messageLines(r2.stderr).length, 1);
  t.regex(r2.stderr, /"runs" \(--runs\) must be set/);
});
