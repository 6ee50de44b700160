import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { Rng, clipGradNorm } from '@qrlhf/core';

function randomGrads(seed: number, scale: number) {
  const rng = new Rng(seed);
  const raw: Record<string, { x: number[]; shape: number[] }> = {
    a: { x: [], shape: [7, 3] },
    b: { x: [], shape: [11] },
    c: { x: [], shape: [2, 2, 2] },
  };
  for (const r of Object.values(raw)) {
    const n = r.shape.reduce((p, d) => p * d, 1);
    r.x = Array.from({ length: n }, () => Math.fround(rng.normal() * scale));
  }
  return raw;
}

for (const [label, scale, maxNorm] of [
  ['clipped', 5, 1],
  ['not clipped', 0.05, 1],
] as const) {
  test.serial(`global-norm clipping matches a float64 reference (${label})`, async (t) => {
    const raw = randomGrads(3, scale);
    let sq = 0;
    for (const r of Object.values(raw)) for (const v of r.x) sq += v * v;
    const norm = Math.sqrt(sq);
    const coef = Math.min(1, maxNorm / (norm + 1e-6));
    const grads = Object.fromEntries(Object.entries(raw).map(([k, r]) => [k, tf.tensor(r.x, r.shape)]));
    const before = tf.memory().numTensors;
    const out = await clipGradNorm(grads, maxNorm);
    t.is(tf.memory().numTensors, before + 3, 'exactly the three new gradients remain');
    t.true(Math.abs(out.norm - norm) / norm < 1e-6, `${out.norm} vs ${norm}`);
    let newSq = 0;
    for (const [k, r] of Object.entries(raw)) {
      const got = out.grads[k]!.dataSync();
      t.deepEqual(out.grads[k]!.shape, r.shape);
      r.x.forEach((v, i) => t.true(Math.abs(got[i]! - v * coef) <= 1e-6 * Math.abs(v) + 1e-9));
      for (const v of got) newSq += v * v;
      t.false(out.grads[k] === grads[k]);
      t.false(grads[k]!.isDisposed);
    }
    t.true(Math.sqrt(newSq) <= maxNorm * (1 + 1e-5));
    if (label === 'clipped') t.true(Math.abs(Math.sqrt(newSq) - maxNorm) < 1e-4);
  });
}

test.serial('a non-finite norm is reported and leaves the gradients unscaled', async (t) => {
  const out = await clipGradNorm({ a: tf.tensor([1, Infinity]) }, 1);
  t.is(out.norm, Infinity);
  t.deepEqual([...out.grads['a']!.dataSync()], [1, Infinity]);
});
