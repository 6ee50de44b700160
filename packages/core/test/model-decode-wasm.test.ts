import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { initBackend, LlamaModel, type LlamaConfig } from '@qrlhf/core';
import { decodeAttentionStats, nativeInfo } from '../src/compute/kernels/index.js';
import { defineDecodeTests } from './model-decode-cases.js';

await initBackend('wasm', { quiet: true });
defineDecodeTests(test, 'wasm');

// The cases above hold whichever path decode() takes; on wasm with the native addon it must be
// the native attention (one call per layer and step, caches written in place).
(nativeInfo().active ? test : test.skip)('wasm: decode() runs the native attention, one call per layer and step', (t) => {
  const cfg: LlamaConfig = {
    vocabSize: 50, hiddenSize: 32, intermediateSize: 48, numLayers: 3, numHeads: 4, numKvHeads: 2,
    maxPositionEmbeddings: 64, rmsNormEps: 1e-5, ropeTheta: 10000, tieWordEmbeddings: true, bosTokenId: 1, eosTokenId: 2,
  };
  const model = LlamaModel.random(cfg, 3);
  const cache = model.createCache(2, 10);
  tf.tidy(() => model.step(tf.tensor2d([[1, 2, 3], [4, 5, 6]], undefined, 'int32'), cache, tf.ones([2, 3]) as tf.Tensor2D));
  const before = decodeAttentionStats.calls;
  for (let p = 3; p < 7; p++) model.decode([7, 8], cache, [new Array<number>(p + 1).fill(1), new Array<number>(p + 1).fill(1)]).dispose();
  t.is(decodeAttentionStats.calls - before, 4 * 3);
  t.truthy(cache.slabs);
  t.deepEqual(cache.slabs![0]!.k.shape, [2, 2, 10, 8]);
  cache.dispose();
  model.dispose();
});
