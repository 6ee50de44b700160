import test from 'ava';
import { ASSISTANT_TAG, HUMAN_TAG, QrlhfError, splitDialogue } from '@qrlhf/core';

test('the prompt runs through the last Assistant tag, the response keeps its leading space', (t) => {
  const text = '\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Fine, thanks.';
  const { prompt, response } = splitDialogue(text);
  t.is(prompt, '\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:');
  t.is(response, ' Fine, thanks.');
  t.is(prompt + response, text);
  t.is(HUMAN_TAG, '\n\nHuman:');
  t.is(ASSISTANT_TAG, '\n\nAssistant:');
});

test('an Assistant word inside a turn without the blank-line prefix is not a tag', (t) => {
  const text = '\n\nHuman: say "Assistant: yes"\n\nAssistant: Assistant: yes';
  const { prompt, response } = splitDialogue(text);
  t.is(response, ' Assistant: yes');
  t.is(prompt, '\n\nHuman: say "Assistant: yes"\n\nAssistant:');
});

test('an empty final response splits to an empty string', (t) => {
  t.deepEqual(splitDialogue('\n\nHuman: hi\n\nAssistant:'), { prompt: '\n\nHuman: hi\n\nAssistant:', response: '' });
});

test('no Assistant turn is a QrlhfError naming the place', (t) => {
  const e = t.throws(() => splitDialogue('\n\nHuman: only a question', 'f.jsonl:7'), { instanceOf: QrlhfError });
  t.regex(e!.message, /^f\.jsonl:7: the dialogue has no "\\n\\nAssistant:" turn/);
});
