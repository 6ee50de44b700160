import { QrlhfError } from '../errors.js';

/** The turn markers of the Anthropic HH-RLHF dialogue format. */
export const HUMAN_TAG = '\n\nHuman:';
export const ASSISTANT_TAG = '\n\nAssistant:';

/** A prompt and the response that follows it. */
export interface PromptResponse {
  prompt: string;
  response: string;
}

/**
 * Splits an HH-RLHF dialogue ("\n\nHuman: ...\n\nAssistant: ...") into the prompt, everything up
 * to and including the LAST "\n\nAssistant:", and the response, the rest of the text.
 *
 * The split is lossless: `prompt + response === text`. In particular the space that follows
 * "Assistant:" stays at the start of the response (" Sure, ...") and the prompt ends exactly with
 * "\n\nAssistant:". Tokenise prompt + response as one text and take the response tokens after the
 * prompt's, rather than encoding the response alone, so a sentencepiece tokenizer sees the space
 * as it would in the whole dialogue. `where` (e.g. "FILE:LINE") prefixes the error message.
 */
export function splitDialogue(text: string, where = 'dialogue'): PromptResponse {
  const i = text.lastIndexOf(ASSISTANT_TAG);
  if (i < 0) {
    throw new QrlhfError(`${where}: the dialogue has no ${JSON.stringify(ASSISTANT_TAG)} turn, so it has no response to split off`);
  }
  const cut = i + ASSISTANT_TAG.length;
  return { prompt: text.slice(0, cut), response: text.slice(cut) };
}
