/**
 * `qrlhf template`: stdout is exactly the rendered conversation (no newline added), from a folder
 * holding only tokenizer_config.json; references written by hand from each template's documented
 * format (ChatML with SmolLM2's default system turn; Llama 3.2's headers with its date system turn).
 */
import test from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sharedDataFile } from '@qrlhf/core';
import { messageLines, qrlhf } from './cli-helpers.js';

const smol = sharedDataFile('hf-configs/HuggingFaceTB--SmolLM2-135M-Instruct/tokenizer_config.json');
const llama32 = sharedDataFile('hf-configs/meta-llama--Llama-3.2-1B-Instruct/tokenizer_config.json');
if (!smol || !llama32) console.log('hf-configs not found under the shared data folder: qrlhf template tests skipped');
const maybe = smol && llama32 ? test : test.skip;

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-template-'));
/** A folder holding only the given tokenizer_config.json. */
function onlyConfig(name: string, src: string): string {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  copyFileSync(src, join(d, 'tokenizer_config.json'));
  return d;
}
function file(name: string, content: unknown): string {
  const p = join(dir, name);
  writeFileSync(p, typeof content === 'string' ? content : JSON.stringify(content));
  return p;
}

const CHAT = [
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: 'What is 2+2?' },
];

maybe('template: SmolLM2 and Llama 3.2 conversations, with and without the generation prompt, exactly on stdout', async (t) => {
  const s = onlyConfig('smol', smol!);
  const l = onlyConfig('llama32', llama32!);
  const msgs = file('chat.json', CHAT);
  const [a, b, c, d] = await Promise.all([
    qrlhf(['template', '--model', s, '--messages', msgs, '--generation-prompt']),
    qrlhf(['template', '--model', s, '--messages', msgs]),
    qrlhf(['template', '--model', l, '--messages', msgs, '--generation-prompt', '--date', '2024-07-26']),
    qrlhf(['template', '--model', s, '--messages', msgs, '--generation-prompt', '--chat-template', 'hh']),
  ]);
  for (const r of [a, b, c, d]) t.is(r.code, 0, r.stderr);
  const smolText = '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' +
    '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n';
  t.is(a.stdout, `${smolText}<|im_start|>assistant\n`);
  t.is(b.stdout, smolText);
  const H = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  t.is(c.stdout, `<|begin_of_text|>${H('system')}Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>` +
    `${H('user')}Hi<|eot_id|>${H('assistant')}Hello!<|eot_id|>${H('user')}What is 2+2?<|eot_id|>${H('assistant')}`);
  t.is(d.stdout, '\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant:');
});

maybe('template: bad messages, a template that raises and a folder without a config are one line each', async (t) => {
  const s = onlyConfig('smol2', smol!);
  const raising = join(dir, 'raising');
  mkdirSync(raising);
  writeFileSync(join(raising, 'tokenizer_config.json'), JSON.stringify({ chat_template: "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}" }));
  const empty = join(dir, 'empty');
  mkdirSync(empty);
  const notArray = file('obj.json', { role: 'user', content: 'x' });
  const badRole = file('badrole.json', [{ role: 'user', content: 'x' }, { role: 3, content: 'y' }]);
  const msgs = file('chat2.json', CHAT);
  const runs = await Promise.all([
    qrlhf(['template', '--model', s, '--messages', notArray]),
    qrlhf(['template', '--model', s, '--messages', badRole]),
    qrlhf(['template', '--model', raising, '--messages', msgs]),
    qrlhf(['template', '--model', empty, '--messages', msgs]),
  ]);
  const want = [
    `qrlhf: ${notArray}: expected a JSON array of {role, content} messages`,
    `qrlhf: ${badRole}: message 1: "role" must be a string, got 3`,
    `qrlhf: ${join(raising, 'tokenizer_config.json')} (chat_template): the template raised an exception: Conversation roles must alternate user/assistant/user/assistant/...`,
    `qrlhf: ${empty}: no tokenizer_config.json (the chat template and special tokens are read from it)`,
  ];
  runs.forEach((r, i) => {
    t.is(r.code, 1);
    t.is(r.stdout, '');
    t.deepEqual(messageLines(r.stderr), [want[i]]);
  });
});
