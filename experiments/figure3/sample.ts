/**
 * How Figure 3 reads a prompts file and samples one response per prompt. The SFT and final
 * evaluations, the lambda rule and the on-policy ratings all sample as RLOO samples its rollouts
 * (its decoding batch, response length and temperature; special tokens are not text), so the
 * responses they score are the kind RL trains on.
 */
import { readFileSync } from 'node:fs';
import { generate, type LlamaModel, type Rng, type Tokenizer } from '@qrlhf/core';
import type { Figure3Config } from './config.js';

/** The `prompt` of every row of a {prompt} jsonl file, in file order. */
export function readPrompts(file: string): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => (JSON.parse(l) as { prompt: string }).prompt);
}

/** The sampling settings of the rloo block. */
export type Sampling = Pick<Figure3Config['rloo'], 'generationBatchSize' | 'maxNewTokens' | 'temperature'>;

/** One response per prompt, in prompt order, drawn with `rng`. */
export async function sampleResponses(model: LlamaModel, tokenizer: Tokenizer, prompts: string[], sampling: Sampling, rng: Rng): Promise<string[]> {
  const responses: string[] = [];
  const { generationBatchSize: batch, maxNewTokens, temperature } = sampling;
  for (let i = 0; i < prompts.length; i += batch) {
    const chunk = prompts.slice(i, i + batch);
    const res = await generate(model, chunk.map((p) => [tokenizer.bosId, ...tokenizer.encode(p)]), { maxNewTokens, temperature, rng, eosTokenId: tokenizer.eosId });
    for (const t of res.tokens) responses.push(tokenizer.decode(t, { skipSpecial: true }));
  }
  return responses;
}
