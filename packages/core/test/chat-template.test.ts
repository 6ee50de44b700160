/**
 * Chat templates of every tokenizer_config.json in ../shared/data/hf-configs, rendered by qrlhf,
 * against reference strings written here by hand from each format's documentation (not produced
 * by the renderer under test):
 * - SmolLM2-Instruct: ChatML, "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per turn, a default system
 *   turn "You are a helpful AI assistant named SmolLM, trained by Hugging Face" when the first turn
 *   is not a system turn, generation prompt "<|im_start|>assistant\n"; no BOS written;
 * - Meta-Llama-3-8B-Instruct: "<|begin_of_text|>" then per turn
 *   "<|start_header_id|>ROLE<|end_header_id|>\n\n" + trimmed content + "<|eot_id|>", generation
 *   prompt = the assistant header; no default system turn;
 * - Llama-3.2-1B-Instruct: the same turns, but always a first system turn holding
 *   "Cutting Knowledge Date: December 2023\nToday Date: DD Mon YYYY\n\n" + the system message;
 * - TinyLlama-1.1B-Chat: "<|system|>\n", "<|user|>\n", "<|assistant|>\n" + content + "</s>" and a
 *   newline after each block (jinja2's trim_blocks drops the template's newlines after tags, not
 *   after {{ }}), generation prompt "<|assistant|>\n"; its model card prints this exact text for its
 *   pirate example.
 */
import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError } from '../src/errors.js';
import { sharedDataFile } from '../src/paths.js';
import {
  ChatTemplate, HH_FORMAT, TemplateFormat, hhPromptToMessages, hhToMessages, resolveDialogueFormat, strftime, type ChatMessage,
} from '../src/chat/index.js';

const configs = sharedDataFile('hf-configs');
if (!configs) console.log('hf-configs not found under the shared data folder: chat template tests on real configs skipped');
const maybe = configs ? test : test.skip;
const dirOf = (name: string) => join(configs!, name);

const DATE = new Date(2026, 11, 5, 13, 7, 9); // local time, as transformers' datetime.now()

const ONE: ChatMessage[] = [{ role: 'user', content: 'Hello, who are you?' }];
const SYS: ChatMessage[] = [
  { role: 'system', content: 'You are a pirate.' },
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Ahoy!' },
  { role: 'user', content: 'Where is the gold?' },
];
const SYS_REPLY: ChatMessage[] = [...SYS, { role: 'assistant', content: 'Buried.' }];
const MULTI: ChatMessage[] = [
  { role: 'user', content: 'Hi' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: '  padded \n' },
];

interface Case { messages: ChatMessage[]; gen: boolean; want: string }

const SMOL_DEFAULT = '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n';
const SMOL: Case[] = [
  { messages: ONE, gen: true, want: SMOL_DEFAULT + '<|im_start|>user\nHello, who are you?<|im_end|>\n<|im_start|>assistant\n' },
  { messages: ONE, gen: false, want: SMOL_DEFAULT + '<|im_start|>user\nHello, who are you?<|im_end|>\n' },
  {
    messages: SYS, gen: true,
    want: '<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nAhoy!<|im_end|>\n' +
      '<|im_start|>user\nWhere is the gold?<|im_end|>\n<|im_start|>assistant\n',
  },
  {
    messages: SYS_REPLY, gen: false,
    want: '<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nAhoy!<|im_end|>\n' +
      '<|im_start|>user\nWhere is the gold?<|im_end|>\n<|im_start|>assistant\nBuried.<|im_end|>\n',
  },
  { // ChatML does not trim
    messages: MULTI, gen: true,
    want: SMOL_DEFAULT + '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n  padded \n<|im_end|>\n<|im_start|>assistant\n',
  },
];

const H = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
const E = '<|eot_id|>';
const B = '<|begin_of_text|>';
const LLAMA3: Case[] = [
  { messages: ONE, gen: true, want: B + H('user') + 'Hello, who are you?' + E + H('assistant') },
  { messages: ONE, gen: false, want: B + H('user') + 'Hello, who are you?' + E },
  { messages: SYS, gen: true, want: B + H('system') + 'You are a pirate.' + E + H('user') + 'Hi' + E + H('assistant') + 'Ahoy!' + E + H('user') + 'Where is the gold?' + E + H('assistant') },
  { messages: SYS_REPLY, gen: false, want: B + H('system') + 'You are a pirate.' + E + H('user') + 'Hi' + E + H('assistant') + 'Ahoy!' + E + H('user') + 'Where is the gold?' + E + H('assistant') + 'Buried.' + E },
  { messages: MULTI, gen: true, want: B + H('user') + 'Hi' + E + H('assistant') + 'Hello!' + E + H('user') + 'padded' + E + H('assistant') },
];

const SYS32 = (date: string, system = '') => B + H('system') + `Cutting Knowledge Date: December 2023\nToday Date: ${date}\n\n${system}` + E;
const LLAMA32: Case[] = [
  { messages: ONE, gen: true, want: SYS32('05 Dec 2026') + H('user') + 'Hello, who are you?' + E + H('assistant') },
  { messages: ONE, gen: false, want: SYS32('05 Dec 2026') + H('user') + 'Hello, who are you?' + E },
  { messages: SYS, gen: true, want: SYS32('05 Dec 2026', 'You are a pirate.') + H('user') + 'Hi' + E + H('assistant') + 'Ahoy!' + E + H('user') + 'Where is the gold?' + E + H('assistant') },
  { messages: SYS_REPLY, gen: false, want: SYS32('05 Dec 2026', 'You are a pirate.') + H('user') + 'Hi' + E + H('assistant') + 'Ahoy!' + E + H('user') + 'Where is the gold?' + E + H('assistant') + 'Buried.' + E },
  { messages: MULTI, gen: false, want: SYS32('05 Dec 2026') + H('user') + 'Hi' + E + H('assistant') + 'Hello!' + E + H('user') + 'padded' + E },
];

const TINY: Case[] = [
  { messages: ONE, gen: true, want: '<|user|>\nHello, who are you?</s>\n<|assistant|>\n' },
  { messages: ONE, gen: false, want: '<|user|>\nHello, who are you?</s>\n' },
  { messages: SYS, gen: true, want: '<|system|>\nYou are a pirate.</s>\n<|user|>\nHi</s>\n<|assistant|>\nAhoy!</s>\n<|user|>\nWhere is the gold?</s>\n<|assistant|>\n' },
  { messages: SYS_REPLY, gen: false, want: '<|system|>\nYou are a pirate.</s>\n<|user|>\nHi</s>\n<|assistant|>\nAhoy!</s>\n<|user|>\nWhere is the gold?</s>\n<|assistant|>\nBuried.</s>\n' },
  { messages: MULTI, gen: true, want: '<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n<|user|>\n  padded \n</s>\n<|assistant|>\n' },
  { // the model card's example, with its printed output
    messages: [
      { role: 'system', content: 'You are a friendly chatbot who always responds in the style of a pirate' },
      { role: 'user', content: 'How many helicopters can a human eat in one sitting?' },
    ],
    gen: true,
    want: '<|system|>\nYou are a friendly chatbot who always responds in the style of a pirate</s>\n<|user|>\nHow many helicopters can a human eat in one sitting?</s>\n<|assistant|>\n',
  },
];

const MODELS: [string, Case[]][] = [
  ['HuggingFaceTB--SmolLM2-135M-Instruct', SMOL],
  ['HuggingFaceTB--SmolLM2-360M-Instruct', SMOL],
  ['meta-llama--Meta-Llama-3-8B-Instruct', LLAMA3],
  ['meta-llama--Llama-3.2-1B-Instruct', LLAMA32],
  ['TinyLlama--TinyLlama-1.1B-Chat-v1.0', TINY],
];

for (const [name, cases] of MODELS) {
  maybe(`${name}: renders as transformers does (${cases.length} conversations)`, (t) => {
    const tpl = ChatTemplate.fromDir(dirOf(name));
    t.truthy(tpl);
    for (const c of cases) {
      t.is(tpl!.render(c.messages, { addGenerationPrompt: c.gen, now: DATE }), c.want, `${c.messages.length} turns, generation prompt ${c.gen}`);
    }
  });
}

maybe('every tokenizer_config.json in hf-configs is covered: a template is tested, or auto falls back to HH', (t) => {
  const tested = new Set(MODELS.map(([n]) => n));
  for (const name of ['HuggingFaceTB--SmolLM2-135M-Instruct', 'HuggingFaceTB--SmolLM2-360M-Instruct', 'meta-llama--Llama-3.2-1B-Instruct',
    'meta-llama--Llama-3.2-1B', 'meta-llama--Meta-Llama-3-8B-Instruct', 'TinyLlama--TinyLlama-1.1B-Chat-v1.0']) {
    const tpl = ChatTemplate.fromDir(dirOf(name));
    if (tpl) t.true(tested.has(name), name);
    else t.is(resolveDialogueFormat('auto', { dir: dirOf(name) }), HH_FORMAT, name); // the base Llama 3.2 has none
  }
});

maybe('Llama 3.2: strftime_now takes the injected date; a date_string variable wins, as a transformers kwarg', (t) => {
  const tpl = ChatTemplate.fromDir(dirOf('meta-llama--Llama-3.2-1B-Instruct'))!;
  t.is(tpl.render(ONE, { now: new Date(2024, 6, 26) }), SYS32('26 Jul 2024') + H('user') + 'Hello, who are you?' + E);
  t.is(tpl.render(ONE, { now: DATE, variables: { date_string: '1 Jan 2030' } }), SYS32('1 Jan 2030') + H('user') + 'Hello, who are you?' + E);
  // the template's own raise_exception (two tool calls in one turn)
  const two = { role: 'assistant', content: '', tool_calls: [{ function: { name: 'a', arguments: {} } }, { function: { name: 'b', arguments: {} } }] };
  const e = t.throws(() => tpl.render([...ONE, two as ChatMessage], { now: DATE }), { instanceOf: QrlhfError });
  t.regex(e!.message, /Llama-3\.2-1B-Instruct\/tokenizer_config\.json \(chat_template\): the template raised an exception: This model only supports single tool-calls at once!/);
});

test('strftime: C-locale names and zero padding as Python', (t) => {
  const d = new Date(2024, 0, 3, 9, 5, 7); // a Wednesday
  t.is(strftime(d, '%d %b %Y'), '03 Jan 2024');
  t.is(strftime(d, '%A %a %B %m/%d/%y %H:%M:%S %I%p %j %e %%'), 'Wednesday Wed January 01/03/24 09:05:07 09AM 003  3 %');
  t.throws(() => strftime(d, '%Z'), { instanceOf: QrlhfError, message: /directive %Z is not supported/ });
});

test('special tokens given as AddedToken objects; a template that raises names its file; a bad template is refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-chat-'));
  const cfg = {
    bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: true, rstrip: false, single_word: false },
    eos_token: { __type: 'AddedToken', content: '</s>', lstrip: false, normalized: true, rstrip: false, single_word: false },
    chat_template: "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
      "{{ '[' + m['role'] + '] ' + m['content'] + eos_token }}{% endfor %}",
  };
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
  const tpl = ChatTemplate.fromDir(dir)!;
  t.is(tpl.render(ONE), '<s>[user] Hello, who are you?</s>');
  const e = t.throws(() => tpl.render(SYS), { instanceOf: QrlhfError });
  t.is(e!.message, `${join(dir, 'tokenizer_config.json')} (chat_template): the template raised an exception: System role not supported`);
  writeFileSync(join(dir, 'bad.jinja'), '{% for m in messages %}{{ m.content }');
  t.throws(() => ChatTemplate.fromPath(join(dir, 'bad.jinja')), { instanceOf: QrlhfError, message: /bad\.jinja: chat_template does not parse as Jinja/ });
  t.throws(() => ChatTemplate.fromPath(join(dir, 'absent.jinja')), { instanceOf: QrlhfError, message: /absent\.jinja: chat template file not found/ });
  // BOS: not doubled when the text starts with it; added only where the tokenizer adds one
  t.false(tpl.needsBos('<s>[user] x</s>', true));
  t.true(tpl.needsBos('[user] x</s>', true));
  t.false(tpl.needsBos('[user] x</s>', false));
});

test('a PATH template: .jinja text with the model config\'s special tokens; chat_template.jinja in a folder wins', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-chat-'));
  writeFileSync(join(dir, 'x.jinja'), "{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}");
  const f = resolveDialogueFormat(join(dir, 'x.jinja'), { tokenizerConfig: { eos_token: '<|end|>' } });
  t.is(f.prompt(ONE), '<user>Hello, who are you?<|end|><assistant>');
  t.is(f.endOfTurn, '<|end|>');
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '</s>', chat_template: 'unused' }));
  writeFileSync(join(dir, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}');
  t.is(ChatTemplate.fromDir(dir)!.render(ONE), 'Hello, who are you?</s>');
  t.is(resolveDialogueFormat('auto', { dir }).prompt(ONE), 'Hello, who are you?</s>');
});

maybe('split: the reply is the final turn and its end-of-turn token; the user turn ends at its own end-of-turn token', (t) => {
  const want: Record<string, { reply: string; eot: string; userEnd: string }> = {
    'HuggingFaceTB--SmolLM2-135M-Instruct': { reply: 'Buried.<|im_end|>', eot: '<|im_end|>', userEnd: '<|im_start|>user\nWhere is the gold?<|im_end|>' },
    'meta-llama--Meta-Llama-3-8B-Instruct': { reply: 'Buried.<|eot_id|>', eot: '<|eot_id|>', userEnd: H('user') + 'Where is the gold?' + E },
    'meta-llama--Llama-3.2-1B-Instruct': { reply: 'Buried.<|eot_id|>', eot: '<|eot_id|>', userEnd: H('user') + 'Where is the gold?' + E },
    'TinyLlama--TinyLlama-1.1B-Chat-v1.0': { reply: 'Buried.</s>', eot: '</s>', userEnd: '<|user|>\nWhere is the gold?</s>' },
  };
  for (const [name, w] of Object.entries(want)) {
    const f = new TemplateFormat(ChatTemplate.fromDir(dirOf(name))!, { now: DATE });
    const s = f.split(SYS_REPLY);
    t.is(f.endOfTurn, w.eot, name);
    t.is(s.reply, w.reply, name);
    t.true(s.endsTurn, name);
    t.is(s.prompt, f.prompt(SYS), name);
    t.true(s.prompt.slice(0, s.userTurnEnd).endsWith(w.userEnd), name);
    t.false(s.prompt.slice(s.userTurnEnd).includes('Where is the gold?'), name);
    // the whole conversation is exactly prompt + reply + what the template writes after the end-of-turn
    const whole = f.template.render(SYS_REPLY, { now: DATE });
    t.true(whole.startsWith(s.prompt + s.reply), name);
    t.true(['', '\n'].includes(whole.slice((s.prompt + s.reply).length)), name);
  }
  const e = t.throws(() => new TemplateFormat(ChatTemplate.fromDir(dirOf('TinyLlama--TinyLlama-1.1B-Chat-v1.0'))!).split(SYS), { instanceOf: QrlhfError });
  t.regex(e!.message, /ends with a "user" turn, not an assistant reply/);
});

test('HH text to messages: every Human/Assistant turn, trimmed; the HH format renders them back', (t) => {
  const text = '\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6, I think.';
  const msgs = hhToMessages(text);
  t.deepEqual(msgs, [
    { role: 'user', content: 'What is 2+2?' },
    { role: 'assistant', content: '4.' },
    { role: 'user', content: 'And 3+3?' },
    { role: 'assistant', content: '6, I think.' },
  ]);
  const s = HH_FORMAT.split(msgs);
  t.is(s.prompt + s.reply, text);
  t.is(s.prompt, '\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:');
  t.is(s.userTurnEnd, s.prompt.length);
  t.false(s.endsTurn);
  t.deepEqual(hhPromptToMessages('\n\nHuman: Hi\n\nAssistant:'), [{ role: 'user', content: 'Hi' }]);
  t.deepEqual(hhPromptToMessages('Tell me a story.'), [{ role: 'user', content: 'Tell me a story.' }]);
  t.is(HH_FORMAT.prompt([{ role: 'user', content: 'Hi' }]), '\n\nHuman: Hi\n\nAssistant:');
});
