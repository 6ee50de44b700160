import type { Argv, CommandModule } from 'yargs';
import { QrlhfError, Tokenizer } from '@qrlhf/core';
import { handle } from '../run.js';
import { requiredString } from './generate.js';

export const tokenizeCommand: CommandModule = {
  command: 'tokenize',
  describe: 'Print the token ids of a text as a JSON array',
  builder: (y: Argv) =>
    y
      .option('tokenizer', { type: 'string', describe: 'tokenizer.json, a model folder, or a llama2.c tokenizer .bin (required)' })
      .option('text', { type: 'string', describe: 'The text to tokenize (required; may be empty)' })
      .option('bos', { type: 'boolean', describe: "Start with BOS (default: the tokenizer's own convention, e.g. yes for Llama)" }),
  handler: handle(async (a: Record<string, unknown>) => {
    const path = requiredString('tokenizer', a['tokenizer'], 'a tokenizer.json, a model folder or a llama2.c tokenizer .bin');
    const text = a['text'];
    if (text === undefined) throw new QrlhfError('--text is required (the text to tokenize)');
    if (Array.isArray(text)) throw new QrlhfError(`--text: given ${text.length} times, expected once`);
    const bos = a['bos'];
    if (Array.isArray(bos)) throw new QrlhfError('--bos: given more than once');
    const tok = await Tokenizer.fromFile(path);
    const ids = tok.encode(String(text), { addBos: typeof bos === 'boolean' ? bos : tok.defaultAddBos });
    process.stdout.write(`${JSON.stringify(ids)}\n`);
  }),
};
