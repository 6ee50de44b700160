import { existsSync, statSync } from 'node:fs';
import { join, basename } from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { QrlhfError, writeFileAtomic } from '@qrlhf/core';
import { FIGURE3_KEYS, figure3Svg, readMetricsFile, svgToPng, type RunSeries } from '@qrlhf/rloo';
import { handle } from '../run.js';

/**
 * `qrlhf plot figure3 --runs NAME=DIR[,DIR…] …`: the six Figure 3 panels from RLOO run folders
 * (their metrics.jsonl), one line per named run (the mean over its folders, one per seed).
 */
function parseRuns(specs: string[]): RunSeries[] {
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

const figure3: CommandModule = {
  command: 'figure3',
  describe: 'Six panels (quantiles tau = 0.05 … 0.25 and the expectation against the RL step), seed mean ± 1 sd',
  builder: (y: Argv) =>
    y
      .option('runs', {
        type: 'string',
        array: true,
        describe: 'NAME=DIR[,DIR…]: a run and its seed folders (repeat for each run), e.g. risk-neutral=rl/a1,rl/a2',
      })
      .option('out', { type: 'string', default: 'figure3', describe: 'output path without extension: writes OUT.svg and OUT.png' })
      .option('smooth', { type: 'number', default: 5, describe: 'trailing moving average over this many steps (1 = none)' })
      .option('prefix', { type: 'string', default: '', describe: 'metric key prefix, e.g. "true/" for the true quantiles' })
      .option('title', { type: 'string', describe: 'figure title' }),
  handler: handle(async (a: Record<string, unknown>) => {
    const specs = (a['runs'] as string[] | undefined) ?? [];
    if (specs.length === 0) throw new QrlhfError('--runs is required: NAME=DIR[,DIR…] for each run');
    const smooth = Number(a['smooth']);
    if (!Number.isInteger(smooth) || smooth < 1) throw new QrlhfError(`--smooth: expected an integer >= 1, got ${String(a['smooth'])}`);
    const prefix = String(a['prefix'] ?? '');
    const runs = parseRuns(specs);
    const keys = FIGURE3_KEYS.map((k) => prefix + k);
    const present = runs.some((r) => r.seeds.some((rows) => rows.some((row) => typeof row[keys[0]!] === 'number')));
    if (!present) throw new QrlhfError(`the metrics files have no "${keys[0]}" values: wrong folders, or wrong --prefix?`);
    const svg = figure3Svg(runs, { keys, smooth, title: a['title'] as string | undefined });
    const out = String(a['out']);
    writeFileAtomic(`${out}.svg`, svg);
    writeFileAtomic(`${out}.png`, await svgToPng(svg));
    process.stderr.write(`wrote ${out}.svg and ${out}.png\n`);
  }),
};

export const plotCommand: CommandModule = {
  command: 'plot <figure>',
  describe: 'Plot results (figure3)',
  builder: (y: Argv) => y.command(figure3).demandCommand(1, 'name a figure: figure3'),
  handler: () => undefined,
};
