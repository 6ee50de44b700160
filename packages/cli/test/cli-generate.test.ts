import test from 'ava';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sharedDataFile } from '@qrlhf/core';
import { qrlhf } from './cli-helpers.js';

const stories = sharedDataFile('models/stories260K/stories260K.bin');
const maybe = stories ? test : test.skip;
// llama2.c's reference output for this checkpoint (MANIFEST.md)
const KNOWN = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park.';

// One greedy run from the .bin, shared by the two tests that need it.
let greedyBin: ReturnType<typeof qrlhf> | null = null;
const greedy = () => (greedyBin ??= qrlhf(['generate', '--model', stories!, '--temperature', '0', '--max-new-tokens', '40']));

maybe('generate: greedy from BOS on stories260K.bin prints the known text, and only it, on stdout', async (t) => {
  const r = await greedy();
  t.is(r.code, 0, r.stderr);
  t.true(r.stdout.startsWith(KNOWN), r.stdout);
  t.false(r.stdout.includes('backend'), 'diagnostics stay on stderr');
  t.regex(r.stderr, /40 tokens in/);
});

maybe('convert: the HF folder generates the identical text; a prompt is continued', async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), 'qrlhf-cli-')), 'stories-hf');
  const c = await qrlhf(['convert', '--model', stories!, '--out', out]);
  t.is(c.code, 0, c.stderr);
  t.is(c.stdout, '');
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) t.true(existsSync(join(out, f)), f);
  const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  t.like(config, { hidden_size: 64, intermediate_size: 172, num_hidden_layers: 5, num_attention_heads: 8, num_key_value_heads: 4, vocab_size: 512, tie_word_embeddings: true });
  const [fromBin, fromHf, prompted] = await Promise.all([
    greedy(),
    qrlhf(['generate', '--model', out, '--temperature', '0', '--max-new-tokens', '40']),
    qrlhf(['generate', '--model', out, '--prompt', 'Once upon a time, there was a little', '--max-new-tokens', '8', '--backend', 'cpu']),
  ]);
  t.is(fromHf.code, 0, fromHf.stderr);
  t.true(fromHf.stdout.startsWith(KNOWN));
  t.is(fromHf.stdout, fromBin.stdout);
  // the continuation alone, with its leading space: the prompt plus it is the known text
  t.is(prompted.code, 0, prompted.stderr);
  t.true(`Once upon a time, there was a little${prompted.stdout}`.startsWith('Once upon a time, there was a little girl named Lily.'), prompted.stdout);
});

maybe('generate: sampling is reproducible by seed and differs across seeds', async (t) => {
  const args = ['generate', '--model', stories!, '--temperature', '1', '--top-k', '40', '--top-p', '0.95', '--max-new-tokens', '20', '--backend', 'cpu'];
  const [a, b, c] = await Promise.all([qrlhf([...args, '--seed', '7']), qrlhf([...args, '--seed', '7']), qrlhf([...args, '--seed', '8'])]);
  t.is(a.code, 0, a.stderr);
  t.is(a.stdout, b.stdout);
  t.not(a.stdout, c.stdout);
  t.true(a.stdout.trim().length > 0);
});

maybe('generate --stop: decoding ends once the text appears, and the text is cut there', async (t) => {
  const r = await qrlhf(['generate', '--model', stories!, '--temperature', '0', '--max-new-tokens', '40', '--stop', ' named', '--stop', 'xyz']);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout, 'Once upon a time, there was a little girl\n');
  const m = /(\d+) tokens in/.exec(r.stderr);
  t.truthy(m, r.stderr);
  t.true(Number(m![1]) < 40, `stopped early: ${m![1]} tokens`);
});
