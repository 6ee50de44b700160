/**
 * `qrlhf plot figure3`: every key of PLOT_FIGURE3_SCHEMA is a flag (--runs, --quantiles, ...);
 * the work is in stages/plot.ts.
 */
import type { Argv, CommandModule } from 'yargs';
import { stageCommand } from '../options.js';
import { PLOT_FIGURE3_SCHEMA, runPlotFigure3 } from '../stages/plot.js';

const figure3 = stageCommand({
  command: 'figure3',
  describe: 'Six panels (quantiles tau = 0.05 … 0.25 and the expectation against the RL step), seed mean ± 1 sd',
  schema: PLOT_FIGURE3_SCHEMA,
  run: runPlotFigure3,
  examples: [
    ['$0 plot figure3 --runs risk-neutral=rl/n1,rl/n2 --runs risk-aware=rl/a1,rl/a2 --out fig', "the QRM's quantiles (reward/q0.05 …)"],
    ['$0 plot figure3 --runs … --quantiles truth --out fig-true', "a figure3 run's exact quantiles (truth/q0.05 …)"],
  ],
});

export const plotCommand: CommandModule = {
  command: 'plot <figure>',
  describe: 'Plot results (figure3)',
  builder: (y: Argv) => y.command(figure3).demandCommand(1, 'name a figure: figure3'),
  handler: () => undefined,
};
