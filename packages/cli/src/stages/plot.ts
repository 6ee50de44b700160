/**
 * `qrlhf plot figure3`: the paper's Figure 3 panels (the left-tail quantiles τ = 0.05 … 0.25 and
 * the expectation against the RL step) from RLOO run folders, one line per named run (the mean over
 * its folders, one per seed) with a ±1 sd band. The rows are read under today's metric names, so a
 * run logged with the old flat names (`q0.05`, `true/q0.05`) plots as a new one (core's names.ts).
 */
import { existsSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { QrlhfError, defineConfig, outField, readMetricsFile, requireKeys, writeFileAtomic, type ConfigOf } from '@qrlhf/core';
import { BAND_KINDS, figure3Keys, figure3Svg, svgToPng, type RunSeries } from '@qrlhf/rloo';

export const PLOT_FIGURE3_SCHEMA = defineConfig({
  runs: {
    type: 'string[]', default: null, nullable: true, repeat: true,
    doc: 'NAME=DIR[,DIR…]: a run and its seed folders (RLOO run folders holding metrics.jsonl, or the files), one per run (required), e.g. risk-neutral=rl/a1,rl/a2',
  },
  out: outField('figure3', 'output path without extension: writes OUT.svg and OUT.png'),
  smooth: { type: 'int', default: 5, min: 1, doc: 'trailing moving average over this many logged steps (1 = none)' },
  quantiles: {
    type: 'string', default: 'reward', choices: ['reward', 'truth'],
    doc: "which quantiles: reward (the QRM's estimate, reward/q0.05 …) or truth (an experiment's exact ones, truth/q0.05 …: figure3 runs)",
  },
  band: { type: 'string', default: 'sd', choices: BAND_KINDS, doc: "the band around each run's seed mean: sd (±1 sd), min-max (of the seeds), t95 (95 % t-interval of the mean)" },
  title: { type: 'string', default: null, nullable: true, doc: 'figure title (null = none)' },
});
export type PlotFigure3Config = ConfigOf<typeof PLOT_FIGURE3_SCHEMA>;

/** The runs of --runs specs, each seed's metrics rows read (under today's names). */
export function readRunSeries(specs: readonly string[]): RunSeries[] {
  return specs.map((spec) => {
    const eq = spec.indexOf('=');
    const dirs = (eq > 0 ? spec.slice(eq + 1) : spec).split(',').filter(Boolean);
    if (dirs.length === 0) throw new QrlhfError(`--runs "${spec}": expected NAME=DIR[,DIR…] (one RLOO run folder per seed)`);
    const label = eq > 0 ? spec.slice(0, eq) : basename(dirs[0]!);
    const seeds = dirs.map((d) => {
      const file = existsSync(d) && statSync(d).isDirectory() ? join(d, 'metrics.jsonl') : d;
      if (!existsSync(file)) throw new QrlhfError(`--runs: ${file} not found (give RLOO run folders holding metrics.jsonl)`);
      return readMetricsFile(file);
    });
    return { label, seeds };
  });
}

/** Writes OUT.svg and OUT.png; returns their paths. */
export async function runPlotFigure3(config: PlotFigure3Config): Promise<{ svg: string; png: string }> {
  const cfg = requireKeys(config, ['runs'], 'plot figure3');
  if (cfg.runs.length === 0) throw new QrlhfError('plot figure3: "runs" (--runs) is empty: give NAME=DIR[,DIR…] for each run');
  const runs = readRunSeries(cfg.runs);
  const keys = figure3Keys(cfg.quantiles);
  const present = runs.some((r) => r.seeds.some((rows) => rows.some((row) => typeof row[keys[0]!] === 'number')));
  if (!present) throw new QrlhfError(`the metrics files have no "${keys[0]}" values: wrong folders, or wrong --quantiles?`);
  const svg = figure3Svg(runs, { keys, smooth: cfg.smooth, band: cfg.band, ...(cfg.title === null ? {} : { title: cfg.title }) });
  const paths = { svg: `${cfg.out}.svg`, png: `${cfg.out}.png` };
  writeFileAtomic(paths.svg, svg);
  writeFileAtomic(paths.png, await svgToPng(svg));
  process.stderr.write(`wrote ${paths.svg} and ${paths.png}\n`);
  return paths;
}
