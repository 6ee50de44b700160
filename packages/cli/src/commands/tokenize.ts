import { stageCommand } from '../options.js';
import { TOKENIZE_SCHEMA, runTokenize } from '../stages/tokenize.js';

export const tokenizeCommand = stageCommand({
  command: 'tokenize',
  describe: 'Print the token ids of a text as a JSON array',
  schema: TOKENIZE_SCHEMA,
  run: runTokenize,
});
