// qrlhf's wasm GatherV2 (rows along the first axis, copied on the heap) against the rows picked in
// plain JS, for float32 and int32 data, one-element rows, index shapes of rank 0-2 and repeats;
// other axes keep tfjs's kernel; an index out of range is an error naming it.
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/compute/backend.js';

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

test('GatherV2 along the first axis returns exactly the picked rows (float32, int32, width 1, repeats)', (t) => {
  const rand = lcg(5);
  for (const [shape, idxShape] of [[[7, 5], [4]], [[768, 96], [3, 40]], [[10], [25]], [[6, 2, 3], [2, 2]], [[4, 3], []]] as [number[], number[]][]) {
    const rows = shape[0]!;
    const width = shape.slice(1).reduce((a, b) => a * b, 1);
    const n = idxShape.reduce((a, b) => a * b, 1);
    const idx = Int32Array.from({ length: n }, () => Math.floor(rand() * rows));
    for (const dtype of ['float32', 'int32'] as const) {
      const xv = dtype === 'float32'
        ? Float32Array.from({ length: rows * width }, () => rand() * 2 - 1)
        : Int32Array.from({ length: rows * width }, () => Math.floor(rand() * 2 ** 31) - 2 ** 30);
      const want = new Array<number>(n * width);
      for (let i = 0; i < n; i++) for (let j = 0; j < width; j++) want[i * width + j] = xv[idx[i]! * width + j]!;
      const out = tf.tidy(() => tf.gather(tf.tensor(xv, shape, dtype), tf.tensor(idx, idxShape, 'int32')));
      t.deepEqual(out.shape, [...idxShape, ...shape.slice(1)]);
      t.is(out.dtype, dtype);
      t.deepEqual(Array.from(out.dataSync()), want, `x [${shape}] ${dtype}, indices [${idxShape}]`);
      out.dispose();
    }
  }
});

test('GatherV2 on another axis still gathers (tfjs kernel); an index out of range names it', (t) => {
  const x = tf.tensor2d([[1, 2, 3], [4, 5, 6]]);
  const g = tf.gather(x, tf.tensor1d([2, 0], 'int32'), 1);
  t.deepEqual(g.arraySync(), [[3, 1], [6, 4]]);
  const before = tf.memory().numTensors;
  t.throws(() => tf.gather(x, tf.tensor1d([0, 2], 'int32')), { message: /index 2 \(position 1\) is not in \[0, 1\]/ });
  t.true(tf.memory().numTensors <= before + 1, 'only the index tensor made for the call is left');
  tf.dispose([x, g]);
});
