// qrlhf's wasm UnsortedSegmentSum against a float64 reference, and tf.grad through tf.gather
// (whose gradient it is) on the wasm backend against the exact scatter-add of the upstream gradient.
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

test('UnsortedSegmentSum equals a float64 scatter-add (ids out of range are dropped)', (t) => {
  const rand = lcg(3);
  for (const [rows, inner, segs] of [[1, 1, 1], [7, 3, 4], [50, 17, 9], [300, 64, 40], [5, 1, 12]] as const) {
    const xv = Float32Array.from({ length: rows * inner }, () => rand() * 2 - 1);
    const ids = Int32Array.from({ length: rows }, () => Math.floor(rand() * (segs + 2)) - 1); // includes -1 and segs
    const ref = new Float64Array(segs * inner);
    const count = new Float64Array(segs);
    for (let i = 0; i < rows; i++) {
      const s = ids[i]!;
      if (s < 0 || s >= segs) continue;
      count[s]! += 1;
      for (let j = 0; j < inner; j++) ref[s * inner + j]! += xv[i * inner + j]!;
    }
    const out = tf.tidy(() => tf.unsortedSegmentSum(tf.tensor2d(xv, [rows, inner]), tf.tensor1d(ids, 'int32'), segs));
    t.deepEqual(out.shape, [segs, inner]);
    const od = out.dataSync();
    for (let i = 0; i < od.length; i++) {
      const c = count[Math.floor(i / inner)]!;
      t.true(Math.abs(od[i]! - ref[i]!) <= c * 2 ** -24 * c + 1e-7, `rows ${rows} inner ${inner} at ${i}: ${od[i]} vs ${ref[i]}`);
    }
    out.dispose();
  }
});

test('UnsortedSegmentSum on int32 and with rank-3 data', (t) => {
  const x = tf.tensor3d([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [3, 2, 2], 'int32');
  const out = tf.unsortedSegmentSum(x, tf.tensor1d([2, 0, 2], 'int32'), 3);
  t.deepEqual(out.shape, [3, 2, 2]);
  t.deepEqual(Array.from(out.dataSync()), [5, 6, 7, 8, 0, 0, 0, 0, 10, 12, 14, 16]);
  tf.dispose([x, out]);
});

test('tf.grad through tf.gather on wasm is the scatter-add of the upstream gradient', (t) => {
  const rand = lcg(11);
  const vocab = 37, d = 8, n = 60;
  const table = tf.tensor2d(Float32Array.from({ length: vocab * d }, () => rand() - 0.5), [vocab, d]);
  const idv = Int32Array.from({ length: n }, () => Math.floor(rand() * vocab));
  const gv = Float32Array.from({ length: n * d }, () => rand() - 0.5);
  const ids = tf.tensor2d(idv, [6, 10], 'int32');
  const g = tf.tensor3d(gv, [6, 10, d]);
  const grad = tf.grad((w: tf.Tensor) => tf.sum(tf.mul(tf.gather(w, ids), g)))(table);
  t.deepEqual(grad.shape, [vocab, d]);
  const ref = new Float64Array(vocab * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) ref[idv[i]! * d + j]! += gv[i * d + j]!;
  const gd = grad.dataSync();
  for (let i = 0; i < gd.length; i++) t.true(Math.abs(gd[i]! - ref[i]!) <= 1e-6, `at ${i}: ${gd[i]} vs ${ref[i]}`);
  tf.dispose([table, ids, g, grad]);
});
