/**
 * Issue 12's SFT hang, bounded by step counts: a maxLength over the model's context is clamped to
 * it (the run finishes its steps), and a micro-batch that the backend's memory cannot hold is
 * refused before the first step, naming the largest one that fits.
 */
import test from 'ava';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError, trainingMemoryEstimate } from '@qrlhf/core';
import { runSft } from '../src/index.js';
import { TINY, tinyConfig, tmp, writeJsonl, writeTinyModel } from './fixture.js';

let model: string;
test.before(async () => {
  model = await writeTinyModel(join(tmp('memmodel'), 'model'));
});

/** n dialogues of one length: 4-letter topics, so every example has the same token count. */
function rows(n: number) {
  const topics = ['cats', 'bees', 'figs', 'jazz', 'moss', 'owls', 'salt', 'maps', 'rain', 'kelp', 'yaks', 'opal'];
  return Array.from({ length: n }, (_, i) => {
    const t = topics[i % topics.length]!;
    return { chosen: `\n\nHuman: tell me about ${t}\n\nAssistant: ${t} are nice.` };
  });
}
/** Tokens of one such example with the char tokenizer: BOS + characters + EOS. */
const LENGTH = 1 + rows(1)[0]!.chosen.length + 1;

test.serial('maxLength over the model\'s context is clamped to it; longer examples are filtered out and the run finishes its steps', async (t) => {
  const long = { chosen: `\n\nHuman: ${'why '.repeat(70)}\n\nAssistant: because.` }; // over TINY's 256 positions
  const data = writeJsonl(join(tmp('clamp'), 'data.jsonl'), [...rows(8), long]);
  const out = join(tmp('clamp'), 'run');
  let steps = 0;
  const r = await runSft(tinyConfig({ model, data, out, maxLength: 100000, maxSteps: 2, microBatchSize: 4, gradAccumSteps: 1 }), {
    quiet: true,
    onStep: () => steps++,
  });
  t.is(steps, 2);
  t.is(r.steps, 2);
  t.is(r.data.tooLong, 1);
  t.is((JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { maxLength: number }).maxLength, TINY.maxPositionEmbeddings);
});

test.serial('a micro-batch over the memory limit is refused before the first step, naming the micro-batch that fits', async (t) => {
  const data = writeJsonl(join(tmp('mem'), 'data.jsonl'), rows(12));
  const out = join(tmp('mem'), 'run');
  const one = trainingMemoryEstimate(TINY, { batch: 1, length: LENGTH });
  const prev = process.env['QRLHF_MEMORY_LIMIT_MIB'];
  // room for a batch of one and a half: 1 fits, 2 do not (the model's own weights are a few kB)
  process.env['QRLHF_MEMORY_LIMIT_MIB'] = String((1.5 * one) / 2 ** 20);
  let steps = 0;
  try {
    const e = await t.throwsAsync(
      runSft(tinyConfig({ model, data, out, maxSteps: 2, microBatchSize: 8 }), { quiet: true, onStep: () => steps++ }),
      { instanceOf: QrlhfError },
    );
    t.regex(e!.message, new RegExp(`^sft: a training micro-batch of 8 × ${LENGTH} tokens needs about .* GiB \\(estimate\\), more than the .* left of QRLHF_MEMORY_LIMIT_MIB's`));
    t.regex(e!.message, /lower microBatchSize to 1 \(and raise gradAccumSteps/);
  } finally {
    if (prev === undefined) delete process.env['QRLHF_MEMORY_LIMIT_MIB'];
    else process.env['QRLHF_MEMORY_LIMIT_MIB'] = prev;
  }
  t.is(steps, 0);
  t.false(existsSync(join(out, 'checkpoints')));
});
