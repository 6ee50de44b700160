/**
 * RL prompts: read ({prompt} rows or HH-RLHF dialogues), tokenised as BOS + prompt (with a chat
 * template: the prompt's turns rendered with the generation prompt, BOS only where the template
 * did not write it), filtered by
 * length, and served in a seeded order that is a pure function of (seed, step): a shuffled pass
 * over the prompts per epoch, so a resumed run sees the same prompts at the same steps.
 */
import {
  HH_FORMAT, QrlhfError, Rng, promptIds, readJsonl, splitDialogue, type DialogueFormat, type Tokenizer,
} from '@qrlhf/core';

export interface RlPrompt {
  /** The prompt text given to the reward source, as read (the reward model writes it in its own format). */
  text: string;
  /** BOS + the prompt's tokens in the policy's dialogue format: what the policy continues. */
  ids: number[];
}

export interface PromptSet {
  prompts: RlPrompt[];
  /** Rows read. */
  read: number;
  /** Prompts dropped for being longer than the limit (or too long to leave room for a response). */
  filtered: number;
  /** The limit applied, in tokens (BOS included), and where it came from, for the run's one line. */
  limit: number;
  limitSource: string;
}

/** Reads the prompt texts of a .jsonl(.gz) file: `prompt` field, or the prompt part of `chosen`. */
export async function readPromptTexts(path: string, maxRows = 0): Promise<string[]> {
  const out: string[] = [];
  for await (const { row, line } of readJsonl(path)) {
    const where = `${path}:${line}`;
    if (typeof row !== 'object' || row === null || Array.isArray(row)) throw new QrlhfError(`${where}: expected an object {prompt} or {chosen, rejected}`);
    const r = row as Record<string, unknown>;
    if (typeof r['prompt'] === 'string') out.push(r['prompt']);
    else if (typeof r['chosen'] === 'string') out.push(splitDialogue(r['chosen'], where).prompt);
    else throw new QrlhfError(`${where}: expected a string field "prompt" or an HH-RLHF "chosen" dialogue, found fields ${Object.keys(r).join(', ') || 'none'}`);
    if (maxRows > 0 && out.length >= maxRows) break;
  }
  if (out.length === 0) throw new QrlhfError(`${path}: no prompts`);
  return out;
}

/**
 * Tokenises the prompts as BOS + prompt and drops (counting them) those of more than
 * `maxPromptLength` tokens, or that leave no room for `maxNewTokens` within the model's context.
 */
export function preparePrompts(
  texts: string[],
  tok: Tokenizer,
  o: { maxPromptLength: number; maxNewTokens: number; contextLength: number },
  format: DialogueFormat = HH_FORMAT,
): PromptSet {
  const prompts: RlPrompt[] = [];
  let filtered = 0;
  const room = o.contextLength - o.maxNewTokens;
  const limit = Math.min(o.maxPromptLength, room);
  const limitSource =
    room < o.maxPromptLength ? `the model's context of ${o.contextLength} less maxNewTokens ${o.maxNewTokens}` : 'maxPromptLength';
  for (const text of texts) {
    const ids = promptIds(tok, format, text, true);
    if (ids.length > limit) filtered++;
    else prompts.push({ text, ids });
  }
  return { prompts, read: texts.length, filtered, limit, limitSource };
}

/** The prompts of step s: positions [s*B, (s+1)*B) of an endless stream of per-epoch shuffles. */
export class PromptStream {
  private cache = new Map<number, number[]>();
  constructor(
    readonly n: number,
    readonly seed: number,
  ) {
    if (n <= 0) throw new QrlhfError('no prompts left after filtering: raise maxPromptLength or check the prompts file');
  }
  private order(epoch: number): number[] {
    let p = this.cache.get(epoch);
    if (!p) {
      p = new Rng(`${this.seed}:prompts:${epoch}`).shuffle(Array.from({ length: this.n }, (_, i) => i));
      if (this.cache.size > 2) this.cache.clear();
      this.cache.set(epoch, p);
    }
    return p;
  }
  /** Prompt indices at stream positions [a, b). */
  slice(a: number, b: number): number[] {
    const out: number[] = [];
    for (let pos = a; pos < b; pos++) out.push(this.order(Math.floor(pos / this.n))[pos % this.n]!);
    return out;
  }
}
