import test from 'ava';
import { sharedDataFile } from '@qrlhf/core';
import { qrlhf } from './cli-helpers.js';

const llama = sharedDataFile('tokenizers/llama2/tokenizer.json');
const tok512 = sharedDataFile('models/stories260K/tok512.bin');
const maybeLlama = llama ? test : test.skip;
const maybe512 = tok512 ? test : test.skip;

maybeLlama('tokenize: Llama 2 ids of "Hello world" as a JSON array (BOS by the tokenizer\'s convention, --no-bos without)', async (t) => {
  const [withBos, without] = await Promise.all([
    qrlhf(['tokenize', '--tokenizer', llama!, '--text', 'Hello world']),
    qrlhf(['tokenize', '--tokenizer', llama!, '--text', 'Hello world', '--no-bos']),
  ]);
  t.is(withBos.code, 0, withBos.stderr);
  t.deepEqual(JSON.parse(withBos.stdout), [1, 15043, 3186]); // Llama 2's published ids
  t.deepEqual(JSON.parse(without.stdout), [15043, 3186]);
  t.is(withBos.stderr.trim(), '');
});

maybe512('tokenize: a llama2.c tokenizer .bin; empty text is BOS alone', async (t) => {
  const [r, empty] = await Promise.all([
    qrlhf(['tokenize', '--tokenizer', tok512!, '--text', 'Once upon a time', '--no-bos']),
    qrlhf(['tokenize', '--tokenizer', tok512!, '--text', '']),
  ]);
  t.is(r.code, 0, r.stderr);
  const ids = JSON.parse(r.stdout) as number[];
  t.true(Array.isArray(ids) && ids.length > 0 && ids.every((i) => Number.isInteger(i) && i >= 3 && i < 512));
  t.deepEqual(JSON.parse(empty.stdout), [1]);
});
