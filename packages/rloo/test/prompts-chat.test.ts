/**
 * RL prompts in the policy's dialogue format: with SmolLM2's ChatML template (chatTemplate 'auto'),
 * an HH prompt becomes its turns rendered with the generation prompt (reference text written by
 * hand from ChatML); with 'hh' (and for models without a template) it stays BOS + the text as read.
 */
import test from 'ava';
import { copyFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tokenizer, dialogueFormatFor, sharedDataFile } from '@qrlhf/core';
import { preparePrompts } from '../src/prompts.js';

const smolTok = sharedDataFile('tokenizers/smollm2/tokenizer.json');
const smolCfg = sharedDataFile('hf-configs/HuggingFaceTB--SmolLM2-135M-Instruct/tokenizer_config.json');
if (!smolTok || !smolCfg) console.log('the SmolLM2 tokenizer or hf-configs not found under the shared data folder: RLOO chat-template prompt tests skipped');
const maybe = smolTok && smolCfg ? test : test.skip;

const HH = '\n\nHuman: hi\n\nAssistant: yo\n\nHuman: why?\n\nAssistant:';
const LIMITS = { maxPromptLength: 1000, maxNewTokens: 8, contextLength: 8192 };

maybe('an HH prompt in ChatML for a SmolLM2 policy; unchanged with hh', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-rloo-chat-'));
  copyFileSync(smolTok!, join(dir, 'tokenizer.json'));
  copyFileSync(smolCfg!, join(dir, 'tokenizer_config.json'));
  const tok = await Tokenizer.fromFile(dir);
  const chat = preparePrompts([HH, 'Tell me a joke.'], tok, LIMITS, dialogueFormatFor('auto', tok));
  const sys = '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n';
  t.is(tok.decode(chat.prompts[0]!.ids), `${sys}<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nwhy?<|im_end|>\n<|im_start|>assistant\n`);
  t.is(tok.decode(chat.prompts[1]!.ids), `${sys}<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n`);
  t.is(chat.prompts[0]!.text, HH, 'the reward source gets the prompt as read');
  const hh = preparePrompts([HH], tok, LIMITS, dialogueFormatFor('hh', tok));
  t.deepEqual(hh.prompts[0]!.ids, [tok.bosId, ...tok.encode(HH)]);
  t.deepEqual(preparePrompts([HH], tok, LIMITS).prompts[0]!.ids, hh.prompts[0]!.ids);
});
