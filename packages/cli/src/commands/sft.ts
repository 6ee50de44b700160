/**
 * `qrlhf sft`: supervised fine-tuning with LoRA (SPEC §3). Every key of SFT_SCHEMA is a flag
 * (--max-steps, --lr, ...) that overrides the config file.
 */
import { SFT_SCHEMA, runSft } from '@qrlhf/sft';
import { stageCommand } from '../options.js';

export const sftCommand = stageCommand({
  command: 'sft',
  describe: 'Fine-tune a model with LoRA on chosen dialogues; save the adapter (PEFT layout) and the merged model',
  schema: SFT_SCHEMA,
  quiet: true,
  run: async (cfg, { quiet }) => {
    const r = await runSft(cfg, { quiet });
    const fmt = (x: number | null) => (x === null ? 'n/a' : x.toFixed(4));
    process.stdout.write(
      `held-out response loss: ${fmt(r.evalLossBefore)} before, ${fmt(r.evalLossAfter)} after ` +
        `(token accuracy ${fmt(r.tokenAccuracyAfter)}); ${r.steps} steps\n` +
        `adapter: ${r.adapterDir}\nmerged:  ${r.mergedDir}\n`,
    );
    for (const s of r.samples.slice(0, 1)) {
      process.stdout.write(`sample (merged model, greedy): ...${JSON.stringify(s.prompt.slice(-120))} →${JSON.stringify(s.response)}\n`);
    }
  },
  examples: [
    ['$0 sft --config configs/sft-stories260k-hh.json', 'the shipped small run (a few minutes on 2 cores)'],
    ['$0 sft --config configs/sft-stories260k-hh.json --resume', 'continue a killed run from its last checkpoint'],
    ['$0 sft --model M --data D.jsonl.gz --out runs/x --max-steps 100 --lora-targets all-linear', 'no config file'],
  ],
});
