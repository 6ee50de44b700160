import { QrlhfError } from '../errors.js';
import { readJsonl } from './jsonl.js';
import { splitDialogue, type PromptResponse } from './dialogue.js';
import { hhToMessages, pairToMessages } from '../chat/format.js';
import type { ChatMessage } from '../chat/template.js';

/** An SFT example: the HH text split (prompt + response, as read) and the same dialogue as turns. */
export interface SftDialogue extends PromptResponse {
  /** Every Human/Assistant turn of the dialogue, ending with the reply to learn. */
  messages: ChatMessage[];
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

function stringField(row: Record<string, unknown>, key: string, where: string): string {
  const v = row[key];
  if (typeof v !== 'string') throw new QrlhfError(`${where}: field "${key}": expected a string, got ${typeName(v)}`);
  return v;
}

export interface ReadSftOptions {
  /** Called for each row that is skipped (a chosen dialogue whose final response is empty). */
  onSkip?: (where: string, reason: string) => void;
}

/**
 * SFT examples from a JSONL(.gz) file of either kind of row (they may be mixed):
 * - HH-RLHF `{chosen, rejected}`: the example is the chosen dialogue split by `splitDialogue`
 *   (`rejected` is not read and may be absent), and its turns (`hhToMessages`);
 * - `{prompt, response}`: taken as is; the turns are the prompt's (HH text or one user turn) and
 *   the response as the assistant's.
 * A row that is not an object, has neither `chosen` nor `prompt`+`response`, or has a field of
 * the wrong type throws a QrlhfError naming FILE:LINE and the field. Rows whose response is empty
 * or only whitespace (the shipped HH test file has 4) are skipped and reported through `onSkip`;
 * a file with no usable example throws.
 */
export async function readSftExamples(path: string, opts: ReadSftOptions = {}): Promise<SftDialogue[]> {
  const out: SftDialogue[] = [];
  let rows = 0;
  for await (const { row, line } of readJsonl(path)) {
    rows++;
    const where = `${path}:${line}`;
    if (typeof row !== 'object' || row === null || Array.isArray(row)) {
      throw new QrlhfError(`${where}: expected a JSON object with "chosen" (HH-RLHF) or "prompt" and "response", got ${typeName(row)}`);
    }
    const r = row as Record<string, unknown>;
    let ex: SftDialogue;
    if ('chosen' in r) {
      const text = stringField(r, 'chosen', where);
      ex = { ...splitDialogue(text, `${where}: field "chosen"`), messages: hhToMessages(text) };
    } else if ('prompt' in r || 'response' in r) {
      const prompt = stringField(r, 'prompt', where);
      const response = stringField(r, 'response', where);
      ex = { prompt, response, messages: pairToMessages(prompt, response) };
    } else {
      const keys = Object.keys(r).map((k) => JSON.stringify(k)).join(', ') || 'none';
      throw new QrlhfError(`${where}: row has no "chosen" field (HH-RLHF) and no "prompt"/"response" fields; its keys: ${keys}`);
    }
    if (ex.response.trim() === '') {
      opts.onSkip?.(where, 'empty response');
      continue;
    }
    out.push(ex);
  }
  if (rows === 0) throw new QrlhfError(`${path}: the file has no rows (expected JSON lines with "chosen" or "prompt"/"response")`);
  if (out.length === 0) throw new QrlhfError(`${path}: none of its ${rows} rows has a non-empty response`);
  return out;
}
