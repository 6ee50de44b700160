import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { Rng } from '@qrlhf/core';
import { maskedNllSum, maskedCorrect } from '../src/loss.js';
import { padBatch, type SftExample } from '../src/data.js';

/** float64 reference: for each scored position, -log softmax(logits[b, t-1])[ids[b, t]]. */
function reference(logits: Float64Array, B: number, T: number, V: number, ex: SftExample[]) {
  let nll = 0;
  let count = 0;
  let correct = 0;
  ex.forEach((e, b) => {
    for (let t = e.promptLength; t < e.ids.length; t++) {
      const row = logits.subarray((b * T + t - 1) * V, (b * T + t) * V);
      let max = -Infinity;
      let arg = -1;
      for (let v = 0; v < V; v++) if (row[v]! > max) [max, arg] = [row[v]!, v];
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(row[v]! - max);
      nll += max + Math.log(s) - row[e.ids[t]!]!;
      count++;
      if (arg === e.ids[t]) correct++;
    }
  });
  return { nll, count, correct };
}

test('masked response loss equals a float64 reference computed from the logits', (t) => {
  const rng = new Rng(7);
  const V = 11;
  const ex: SftExample[] = [
    { ids: [1, 3, 4, 5, 6, 2], promptLength: 3 },
    { ids: [1, 7, 8, 2], promptLength: 2 },
    { ids: [1, 9, 10, 3, 4, 5, 6, 7, 2], promptLength: 6 },
  ];
  const b = padBatch(ex, 0);
  const { batch: B, length: T } = b;
  const logits64 = new Float64Array(B * T * V).map(() => 4 * rng.normal());
  const logits = tf.tensor3d(Float32Array.from(logits64), [B, T, V]);
  // the reference works on the float32-rounded logits the tensor holds
  const ref = reference(Float64Array.from(Float32Array.from(logits64)), B, T, V, ex);
  const ids = tf.tensor2d(b.ids, [B, T], 'int32');
  const mask = tf.tensor2d(b.lossMask, [B, T]);
  const nll = maskedNllSum(logits, ids, mask);
  const correct = maskedCorrect(logits, ids, mask);
  t.is(b.lossTokens, ref.count);
  t.is(ref.count, 3 + 2 + 3);
  const got = nll.dataSync()[0]!;
  t.true(Math.abs(got - ref.nll) <= 1e-5 * Math.abs(ref.nll), `${got} vs ${ref.nll}`);
  t.is(correct.dataSync()[0], ref.correct);
  tf.dispose([logits, ids, mask, nll, correct]);
});

test('the loss gradient matches a finite difference of the float64 reference', (t) => {
  const rng = new Rng(3);
  const V = 5;
  const ex: SftExample[] = [{ ids: [1, 3, 4, 2], promptLength: 2 }, { ids: [1, 2], promptLength: 1 }];
  const b = padBatch(ex, 0);
  const { batch: B, length: T } = b;
  const x = Float64Array.from(Float32Array.from({ length: B * T * V }, () => rng.normal()));
  const ids = tf.tensor2d(b.ids, [B, T], 'int32');
  const mask = tf.tensor2d(b.lossMask, [B, T]);
  const g = tf.grad((l: tf.Tensor) => maskedNllSum(l as tf.Tensor3D, ids, mask))(tf.tensor3d(Float32Array.from(x), [B, T, V]));
  const grad = g.dataSync();
  const h = 1e-6;
  for (let i = 0; i < x.length; i++) {
    const xp = Float64Array.from(x);
    const xm = Float64Array.from(x);
    xp[i]! += h;
    xm[i]! -= h;
    const fd = (reference(xp, B, T, V, ex).nll - reference(xm, B, T, V, ex).nll) / (2 * h);
    t.true(Math.abs(fd - grad[i]!) < 1e-5, `grad[${i}] ${grad[i]} vs finite difference ${fd}`);
  }
  tf.dispose([ids, mask, g]);
});
