/**
 * `qrlhf sft`: supervised fine-tuning with LoRA (SPEC §3), a thin layer over @qrlhf/sft's runSft.
 * The config file gives every setting (see SFT_FIELDS for the keys, defaults and docs); the flags
 * override it. Relative paths inside the file are resolved against the file's folder, those of the
 * flags against the working directory.
 */
import type { Argv, CommandModule } from 'yargs';
import { BACKENDS, loadSftConfig, runSft } from '@qrlhf/sft';
import { handle } from '../run.js';

interface SftArgs {
  config?: string;
  model?: string;
  tokenizer?: string;
  data?: string;
  out?: string;
  'max-steps'?: number;
  resume?: boolean;
  seed?: number;
  backend?: string;
  quiet?: boolean;
}

export const sftCommand: CommandModule<object, SftArgs> = {
  command: 'sft',
  describe: 'Fine-tune a model with LoRA on chosen dialogues; save the adapter (PEFT) and the merged model',
  builder: (y: Argv) =>
    y
      .option('config', { type: 'string', describe: 'JSON config file (keys: see packages/sft/src/config.ts)' })
      .option('model', { type: 'string', describe: 'base model: Hugging Face folder or llama2.c .bin' })
      .option('tokenizer', { type: 'string', describe: 'tokenizer file or folder (default: the model\'s)' })
      .option('data', { type: 'string', describe: 'HH-RLHF {chosen, rejected} or {prompt, response} .jsonl(.gz)' })
      .option('out', { type: 'string', describe: 'run folder' })
      .option('max-steps', { type: 'number', describe: 'optimiser steps (0 = from epochs)' })
      .option('resume', { type: 'boolean', describe: "continue from the run folder's last checkpoint" })
      .option('seed', { type: 'number', describe: 'seed of every random draw' })
      .option('backend', { type: 'string', choices: [...BACKENDS], describe: 'tfjs backend' })
      .option('quiet', { type: 'boolean', describe: 'no progress bar' })
      .example('$0 sft --config configs/sft-stories260k-hh.json', 'the shipped small run')
      .example('$0 sft --config configs/sft-stories260k-hh.json --out runs/x --resume', 'continue a killed run') as unknown as Argv<SftArgs>,
  handler: handle(async (a: SftArgs) => {
    const cfg = loadSftConfig(a.config ?? null, {
      model: a.model,
      tokenizer: a.tokenizer,
      data: a.data,
      out: a.out,
      maxSteps: a['max-steps'],
      resume: a.resume,
      seed: a.seed,
      backend: a.backend,
    });
    const r = await runSft(cfg, { quiet: a.quiet ?? false });
    const fmt = (x: number | null) => (x === null ? 'n/a' : x.toFixed(4));
    process.stdout.write(
      `held-out response loss: ${fmt(r.evalLossBefore)} before, ${fmt(r.evalLossAfter)} after ` +
        `(token accuracy ${fmt(r.tokenAccuracyAfter)}); ${r.steps} steps\n` +
        `adapter: ${r.adapterDir}\nmerged:  ${r.mergedDir}\n`,
    );
    for (const s of r.samples.slice(0, 1)) {
      process.stdout.write(`sample (merged model, greedy):\n${JSON.stringify(s.prompt.slice(-200))} →${JSON.stringify(s.response)}\n`);
    }
  }),
};
