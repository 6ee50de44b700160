/**
 * `qrlhf rloo`: risk-aware RLOO (SPEC §6). Every key of RLOO_SCHEMA is a flag (--batch-size,
 * --beta-kl) that overrides the config file. Switching risk-neutral <-> risk-aware is `--utility`.
 */
import { RLOO_SCHEMA, runRloo } from '@qrlhf/rloo';
import { stageCommand } from '../options.js';

export const rlooCommand = stageCommand({
  command: 'rloo',
  describe: 'Risk-aware RLOO with LoRA: k responses per prompt scored by a quantile reward model, a utility of the quantiles, KL to the policy before RL',
  schema: RLOO_SCHEMA,
  quiet: true,
  run: async (cfg, { quiet }) => {
    const r = await runRloo(cfg, { quiet });
    const m = r.last;
    const show = (k: string) => (m && typeof m[k] === 'number' ? (m[k] as number).toFixed(4) : 'n/a');
    process.stdout.write(
      `rloo: ${r.steps} steps (${r.resumedFrom ? `resumed at ${r.resumedFrom}` : 'fresh'}); prompts ${r.prompts.used} used, ${r.prompts.filtered} filtered out\n` +
        (m ? `last step: objective/utility ${show('objective/utility')}, reward/expectation ${show('reward/expectation')}, reward/q0.05 ${show('reward/q0.05')}, objective/kl ${show('objective/kl')}\n` : '') +
        `metrics: ${r.outDir}/metrics.jsonl\nadapter: ${r.adapterDir}\n`,
    );
  },
  examples: [
    ['$0 rloo --config configs/rloo-risk-aware.json', 'the paper setting (exponential utility)'],
    ['$0 rloo --config configs/rloo-risk-aware.json --utility expectation --out runs/rloo-neutral', 'the risk-neutral run: one flag'],
    ['$0 rloo --config C --utility ./my-utility.mjs', "a user's utility module: export default (quantiles, taus) => number"],
    ['$0 rloo --config C --out runs/x --resume', 'continue a killed run'],
  ],
});
