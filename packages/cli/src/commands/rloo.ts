/**
 * `qrlhf rloo`: risk-aware RLOO (SPEC §6), a thin layer over @qrlhf/rloo's runRloo. Every key of
 * the RLOO config (RLOO_SCHEMA) is also a flag (kebab-case: --batch-size, --beta-kl); a flag
 * overrides the config file. Switching risk-neutral <-> risk-aware is `--utility`.
 */
import type { Argv, CommandModule, Options } from 'yargs';
import { RLOO_SCHEMA, loadRlooConfig, runRloo } from '@qrlhf/rloo';
import { handle } from '../run.js';

type Args = Record<string, unknown> & { config?: string; quiet?: boolean };

const kebab = (s: string): string => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

function optionOf(key: string): Options {
  const f = RLOO_SCHEMA[key as keyof typeof RLOO_SCHEMA];
  const dflt = Array.isArray(f.default) ? f.default.join(',') : f.default === null ? 'none' : String(f.default);
  const describe = `${f.doc} [default: ${dflt}]`;
  // values stay strings: the config layer parses and checks them against the schema
  return f.type === 'boolean' ? { type: 'boolean', describe } : { type: 'string', describe, requiresArg: true };
}

export const rlooCommand: CommandModule<object, Args> = {
  command: 'rloo',
  describe: 'Risk-aware RLOO with LoRA: k responses per prompt scored by a quantile reward model, a utility of the quantiles, KL to the policy before RL',
  builder: (y: Argv) => {
    let a = y.option('config', { type: 'string', describe: 'JSON config file (keys as the flags below, camelCase)' }).option('quiet', { type: 'boolean', describe: 'no progress bar' });
    for (const key of Object.keys(RLOO_SCHEMA)) a = a.option(kebab(key), optionOf(key));
    return a
      .example('$0 rloo --config configs/rloo-risk-aware.json', 'the paper setting (exponential utility)')
      .example('$0 rloo --config configs/rloo-risk-aware.json --utility expectation --out runs/rloo-neutral', 'the risk-neutral run: one flag')
      .example('$0 rloo --config C --utility ./my-utility.mjs', "a user's utility module: export default (quantiles, taus) => number")
      .example('$0 rloo --config C --out runs/x --resume', 'continue a killed run') as unknown as Argv<Args>;
  },
  handler: handle(async (a: Args) => {
    const flags: Record<string, unknown> = {};
    for (const key of Object.keys(RLOO_SCHEMA)) {
      const v = a[kebab(key)] ?? a[key];
      if (v !== undefined) flags[key] = v;
    }
    const cfg = loadRlooConfig(a.config ?? null, flags);
    const r = await runRloo(cfg, { quiet: a.quiet ?? false });
    const m = r.last;
    const show = (k: string) => (m && typeof m[k] === 'number' ? (m[k] as number).toFixed(4) : 'n/a');
    process.stdout.write(
      `rloo: ${r.steps} steps (${r.resumedFrom ? `resumed at ${r.resumedFrom}` : 'fresh'}); prompts ${r.prompts.used} used, ${r.prompts.filtered} filtered out\n` +
        (m ? `last step: utility ${show('utility')}, expectation ${show('expectation')}, q0.05 ${show('q0.05')}, kl ${show('kl')}\n` : '') +
        `metrics: ${r.outDir}/metrics.jsonl\nadapter: ${r.adapterDir}\n`,
    );
  }),
};
