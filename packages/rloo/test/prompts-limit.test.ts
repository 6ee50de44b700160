/**
 * The prompt-length limit RLOO applies is the smaller of maxPromptLength and the room the model's
 * context leaves for a response, and the run's line names the one that applied (issue 12: it used
 * to say "over 100000 tokens" when the model's context was the limit).
 */
import test from 'ava';
import { characterTokenizer } from '@qrlhf/core';
import { preparePrompts } from '../src/prompts.js';

const tok = characterTokenizer();
// BOS + the characters: lengths 6, 12 and 21 tokens
const texts = ['hello', 'hello there', 'hello there, friends'];

test('the context, not maxPromptLength, is named when it is the tighter limit', (t) => {
  const byContext = preparePrompts(texts, tok, { maxPromptLength: 100000, maxNewTokens: 4, contextLength: 16 });
  t.is(byContext.limit, 12);
  t.is(byContext.limitSource, "the model's context of 16 less maxNewTokens 4");
  t.is(byContext.filtered, 1);
  t.deepEqual(byContext.prompts.map((p) => p.ids.length), [6, 12]);

  const byFlag = preparePrompts(texts, tok, { maxPromptLength: 10, maxNewTokens: 4, contextLength: 512 });
  t.is(byFlag.limit, 10);
  t.is(byFlag.limitSource, 'maxPromptLength');
  t.deepEqual(byFlag.prompts.map((p) => p.ids.length), [6]);
});
