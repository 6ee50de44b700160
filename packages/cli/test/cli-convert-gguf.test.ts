/** `qrlhf convert --to gguf`: the file reads back with @huggingface/gguf; BF16 is refused in one line. */
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gguf } from '@huggingface/gguf';
import { sharedDataFile } from '@qrlhf/core';
import { messageLines, qrlhf } from './cli-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-cli-gguf-'));

test('convert --to gguf --dtype F16 writes a llama GGUF of stories260K', async (t) => {
  const bin = sharedDataFile('models/stories260K/stories260K.bin');
  if (!bin) {
    t.log('skipped: ../shared/data/models/stories260K is absent');
    t.pass();
    return;
  }
  const out = join(dir, 'stories.gguf');
  const r = await qrlhf(['convert', '--model', bin, '--to', 'gguf', '--dtype', 'F16', '--out', out]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stderr, /wrote .*stories\.gguf \(GGUF, 5 layers, d=64, vocab 512, F16/);
  const { metadata, tensorInfos } = await gguf(out, { allowLocalFile: true });
  t.like(metadata as Record<string, unknown>, { 'general.architecture': 'llama', 'llama.block_count': 5, 'tokenizer.ggml.model': 'llama' });
  t.is(tensorInfos.length, 2 + 9 * 5); // tied embeddings: no output tensor
  t.is(tensorInfos.find((x) => x.name === 'blk.0.attn_q.weight')!.dtype, 1);
});

test('convert --to gguf --dtype BF16 is one clear error', async (t) => {
  const r = await qrlhf(['convert', '--model', 'nowhere.bin', '--to', 'gguf', '--dtype', 'BF16', '--out', join(dir, 'x.gguf')]);
  t.is(r.code, 1);
  t.deepEqual(messageLines(r.stderr).length, 1);
});
