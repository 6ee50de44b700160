/**
 * `qrlhf sft`: supervised fine-tuning with LoRA (SPEC §3), a thin layer over @qrlhf/sft's runSft.
 * The config file gives the settings (SFT_SCHEMA: keys, defaults, docs); every setting is also a
 * flag (--max-steps, --lr, ...) that overrides the file. Relative paths inside the file are
 * resolved against the file's folder, those of the flags against the working directory.
 */
import type { Argv, CommandModule } from 'yargs';
import { SFT_SCHEMA, loadSftConfig, runSft } from '@qrlhf/sft';
import { handle } from '../run.js';

const kebab = (s: string): string => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

type SftArgs = { config?: string; quiet?: boolean } & Record<string, unknown>;

export const sftCommand: CommandModule<object, SftArgs> = {
  command: 'sft',
  describe: 'Fine-tune a model with LoRA on chosen dialogues; save the adapter (PEFT layout) and the merged model',
  builder: (y: Argv) => {
    let b = y
      .option('config', { type: 'string', describe: 'JSON config file (relative paths in it: against its folder)' })
      .option('quiet', { type: 'boolean', describe: 'no progress bar or messages on stderr' });
    for (const [key, f] of Object.entries(SFT_SCHEMA)) {
      // values stay strings: @qrlhf/core's applyOverrides parses and checks them against the schema
      b = b.option(kebab(key), {
        type: f.type === 'boolean' ? 'boolean' : 'string',
        describe: `${f.doc} (default: ${Array.isArray(f.default) ? f.default.join(',') : String(f.default)})`,
      });
    }
    return b
      .example('$0 sft --config configs/sft-stories260k-hh.json', 'the shipped small run (a few minutes on 2 cores)')
      .example('$0 sft --config configs/sft-stories260k-hh.json --resume', 'continue a killed run from its last checkpoint')
      .example('$0 sft --model M --data D.jsonl.gz --out runs/x --max-steps 100 --lora-targets all-linear', 'no config file') as unknown as Argv<SftArgs>;
  },
  handler: handle(async (a: SftArgs) => {
    const flags: Record<string, unknown> = {};
    for (const key of Object.keys(SFT_SCHEMA)) flags[key] = a[kebab(key)];
    const cfg = loadSftConfig(a.config ?? null, flags);
    const r = await runSft(cfg, { quiet: a.quiet ?? false });
    const fmt = (x: number | null) => (x === null ? 'n/a' : x.toFixed(4));
    process.stdout.write(
      `held-out response loss: ${fmt(r.evalLossBefore)} before, ${fmt(r.evalLossAfter)} after ` +
        `(token accuracy ${fmt(r.tokenAccuracyAfter)}); ${r.steps} steps\n` +
        `adapter: ${r.adapterDir}\nmerged:  ${r.mergedDir}\n`,
    );
    for (const s of r.samples.slice(0, 1)) {
      process.stdout.write(`sample (merged model, greedy): ...${JSON.stringify(s.prompt.slice(-120))} →${JSON.stringify(s.response)}\n`);
    }
  }),
};
