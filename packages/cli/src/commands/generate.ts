import { stageCommand } from '../options.js';
import { GENERATE_SCHEMA, runGenerate } from '../stages/generate.js';

export const generateCommand = stageCommand({
  command: 'generate',
  describe: 'Continue a prompt (or start from BOS) with a model; prints only the continuation on stdout',
  schema: GENERATE_SCHEMA,
  run: runGenerate,
  examples: [
    ['$0 generate --model M --prompt "Once upon a time" --max-new-tokens 40', 'greedy'],
    ['$0 generate --model M --temperature 1 --top-p 0.95 --seed 7 --stop "\\n\\nHuman:"', 'sampled, cut at a stop text'],
  ],
});
