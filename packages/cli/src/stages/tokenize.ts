/** `qrlhf tokenize`: the token ids of a text, as a JSON array on stdout. */
import { Tokenizer, defineConfig, requireKeys, type ConfigOf } from '@qrlhf/core';

export const TOKENIZE_SCHEMA = defineConfig({
  tokenizer: { type: 'string', default: null, nullable: true, path: true, doc: 'tokenizer.json, a model folder, or a llama2.c tokenizer .bin (required)' },
  text: { type: 'string', default: null, nullable: true, doc: 'the text to tokenize (required; may be empty)' },
  bos: { type: 'boolean', default: null, nullable: true, doc: "start with BOS (null = the tokenizer's own convention, e.g. yes for Llama)" },
});
export type TokenizeConfig = ConfigOf<typeof TOKENIZE_SCHEMA>;

export async function runTokenize(config: TokenizeConfig): Promise<void> {
  const cfg = requireKeys(config, ['tokenizer', 'text'], 'tokenize');
  const tok = await Tokenizer.fromFile(cfg.tokenizer);
  process.stdout.write(`${JSON.stringify(tok.encode(cfg.text, { addBos: cfg.bos ?? tok.defaultAddBos }))}\n`);
}
