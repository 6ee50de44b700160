// Memory: a wasm allocation past the heap's 4 GiB fails loudly and leaves the heap intact (issue
// 12: tfjs wrote such a tensor at offset 0, over the allocator's records, and the next free()
// never returned); the training-memory check names the largest batch that fits.
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/compute/backend.js';
import { QrlhfError } from '../src/errors.js';
import { checkTrainingMemory, trainingMemoryEstimate } from '../src/model/memory.js';
import type { LlamaConfig } from '../src/model/config.js';

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

test.serial('a tensor larger than the wasm heap can hold is refused; the tensors already there keep their values', (t) => {
  const kept = tf.tensor1d(Float32Array.from({ length: 4096 }, (_, i) => i * 0.5 - 7));
  const before = tf.memory().numTensors;
  // 4 GiB - 64 KiB of float32: malloc cannot grow the heap that far, so it returns null.
  const e = t.throws(() => tf.zeros([2 ** 30 - 2 ** 14]), { instanceOf: QrlhfError });
  t.regex(e!.message, /^out of memory: the wasm backend could not allocate 4096 MiB/);
  t.is(tf.memory().numTensors, before);
  const v = kept.dataSync();
  t.true(v.every((x, i) => x === i * 0.5 - 7));
  // The allocator still works: new tensors, sums over them, freeing them.
  for (let r = 0; r < 3; r++) {
    const a = tf.fill([1 << 18], r + 1);
    t.is(tf.sum(a).dataSync()[0], (r + 1) * (1 << 18));
    a.dispose();
  }
  kept.dispose();
});

const STORIES: LlamaConfig = {
  vocabSize: 512, hiddenSize: 64, intermediateSize: 172, numLayers: 5, numHeads: 8, numKvHeads: 4, rmsNormEps: 1e-5,
  ropeTheta: 10000, tieWordEmbeddings: true, maxPositionEmbeddings: 512, bosTokenId: 1, eosTokenId: 2,
};

test.serial('the training-memory check: fits or not by the limit, and maxBatch is the largest batch within it', (t) => {
  const prev = process.env['QRLHF_MEMORY_LIMIT_MIB'];
  try {
    process.env['QRLHF_MEMORY_LIMIT_MIB'] = '1024';
    const available = 1024 * 2 ** 20 - tf.memory().numBytes;
    const m = checkTrainingMemory(STORIES, 8, 512);
    t.false(m.fits);
    t.is(m.available, available);
    t.true(trainingMemoryEstimate(STORIES, { batch: m.maxBatch, length: 512 }) <= available);
    t.true(trainingMemoryEstimate(STORIES, { batch: m.maxBatch + 1, length: 512 }) > available);
    t.true(checkTrainingMemory(STORIES, m.maxBatch, 512).fits);
    process.env['QRLHF_MEMORY_LIMIT_MIB'] = 'lots';
    t.throws(() => checkTrainingMemory(STORIES, 1, 16), { instanceOf: QrlhfError, message: /QRLHF_MEMORY_LIMIT_MIB: expected a number/ });
  } finally {
    if (prev === undefined) delete process.env['QRLHF_MEMORY_LIMIT_MIB'];
    else process.env['QRLHF_MEMORY_LIMIT_MIB'] = prev;
  }
});
