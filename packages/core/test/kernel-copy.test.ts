// qrlhf's SplitV / Concat (native strided copies) and Identity (shared memory) on the wasm backend,
// against index arithmetic done here in plain JS.
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/compute/backend.js';
import { nativeInfo } from '../src/compute/kernels/index.js';

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

/** Element of a row-major array at a multi-index. */
function at(data: ArrayLike<number>, shape: number[], idx: number[]): number {
  let off = 0;
  for (let d = 0; d < shape.length; d++) off = off * shape[d]! + idx[d]!;
  return data[off]!;
}
function* indices(shape: number[]): Generator<number[]> {
  const n = shape.reduce((a, b) => a * b, 1);
  for (let f = 0; f < n; f++) {
    const idx = new Array<number>(shape.length);
    let r = f;
    for (let d = shape.length - 1; d >= 0; d--) {
      idx[d] = r % shape[d]!;
      r = Math.floor(r / shape[d]!);
    }
    yield idx;
  }
}

const cases: { shape: number[]; axis: number; sizes: number[] | number }[] = [
  { shape: [7], axis: 0, sizes: [2, 5] },
  { shape: [5, 12], axis: 1, sizes: [4, 4, 4] },
  { shape: [5, 12], axis: -1, sizes: [3, -1, 2] },
  { shape: [6, 4], axis: 0, sizes: 3 },
  { shape: [2, 3, 10, 4], axis: 2, sizes: [8, 1, 1] },
  { shape: [3, 5, 6], axis: 1, sizes: [0, 5] },
  { shape: [300, 2048], axis: 1, sizes: [1024, 512, 512] }, // large enough for several threads
  { shape: [8192, 64], axis: 1, sizes: 2 }, // the rotary halves of a training step
];

test('native copies are active', (t) => {
  // (the remaining tests check results either way; this says which path they checked)
  t.is(nativeInfo().active, nativeInfo().note === undefined);
});

for (const dtype of ['float32', 'int32'] as const) {
  test(`split and concat of ${dtype} equal index arithmetic, every axis layout`, (t) => {
    let checked = 0;
    for (const { shape, axis, sizes } of cases) {
      const n = shape.reduce((a, b) => a * b, 1);
      const vals = Array.from({ length: n }, (_, i) => (dtype === "int32" ? (i * 7919) % 100003 : Math.fround(Math.sin(i) * 100)));
      const x = tf.tensor(vals, shape, dtype);
      const parts = tf.split(x, sizes, axis);
      const ax = axis < 0 ? axis + shape.length : axis;
      let start = 0;
      for (const p of parts) {
        const pd = p.dataSync();
        for (const idx of indices(p.shape)) {
          const src = idx.slice();
          src[ax] = idx[ax]! + start;
          if (at(pd, p.shape, idx) !== at(vals, shape, src)) {
            t.fail(`split ${shape} axis ${axis}: part at ${start}, index ${idx}`);
            return;
          }
        }
        start += p.shape[ax]!;
      }
      t.is(start, shape[ax]);
      const back = tf.concat(parts, axis);
      t.deepEqual(back.shape, shape);
      t.deepEqual(Array.from(back.dataSync()), Array.from(x.dataSync()));
      // a concatenation in another order, checked element by element
      const rev = tf.concat(parts.slice().reverse(), axis);
      const rd = rev.dataSync();
      const offs: number[] = [];
      let o = 0;
      for (const p of parts.slice().reverse()) {
        offs.push(o);
        o += p.shape[ax]!;
      }
      const revParts = parts.slice().reverse();
      const revData = revParts.map((p) => p.dataSync());
      for (const idx of indices(rev.shape)) {
        let j = offs.length - 1;
        while (offs[j]! > idx[ax]!) j--;
        const pidx = idx.slice();
        pidx[ax] = idx[ax]! - offs[j]!;
        if (at(rd, rev.shape, idx) !== at(revData[j]!, revParts[j]!.shape, pidx)) {
          t.fail(`concat ${shape} axis ${axis} at ${idx}`);
          return;
        }
      }
      tf.dispose([x, back, rev, ...parts]);
      checked++;
    }
    t.is(checked, cases.length);
  });
}

test('the gradient of a split is the concatenation of the parts gradients', (t) => {
  const x = tf.randomNormal([6, 10], 0, 1, 'float32', 3);
  const w = [tf.randomNormal([6, 3], 0, 1, 'float32', 4), tf.randomNormal([6, 7], 0, 1, 'float32', 5)];
  const g = tf.grad((v: tf.Tensor) => {
    const [a, b] = tf.split(v, [3, 7], 1);
    return tf.add(tf.sum(tf.mul(a!, w[0]!)), tf.sum(tf.mul(b!, w[1]!)));
  })(x);
  const gd = g.dataSync(), w0 = w[0]!.dataSync(), w1 = w[1]!.dataSync();
  for (let i = 0; i < 6; i++) {
    for (let j = 0; j < 10; j++) t.is(gd[i * 10 + j], j < 3 ? w0[i * 3 + j] : w1[i * 7 + j - 3]);
  }
  tf.dispose([x, g, ...w]);
});

test('identity shares memory: a clone outlives its original and frees it last', (t) => {
  const backend = tf.backend() as unknown as { numDataIds(): number };
  const base = backend.numDataIds();
  const x = tf.tensor1d([1, 2, 3, 4]);
  const y = tf.clone(x);
  t.is(backend.numDataIds(), base + 1, 'one buffer for both');
  x.dispose();
  t.deepEqual(Array.from(y.dataSync()), [1, 2, 3, 4]);
  t.is(backend.numDataIds(), base + 1);
  y.dispose();
  t.is(backend.numDataIds(), base, 'freed with the last reference');
});
