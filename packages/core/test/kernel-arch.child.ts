// Child of kernel-arch.test.ts: runs products through the native addon with the kernels that
// QRLHF_NATIVE_ARCH selects (avx512 / avx2 / portable) and prints, as one JSON line, the worst
// error against float64 in units of the float32 bound k·eps·Σ|ab|.
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/compute/backend.js';
import { wasmInfo } from '../src/compute/kernels/setup.js';
import { matMulStats } from '../src/compute/kernels/index.js';

await initBackend('wasm', { quiet: true });
const EPS = 2 ** -24;
let worst = 0;
let count = 0;
let seed = 1;
const shapes: [number, number, number][] = [
  [1, 7, 5], [3, 33, 17], [8, 64, 70], [13, 257, 33], [50, 300, 40], [200, 513, 9], [100, 5000, 7], [5, 300, 3100],
];
for (const [m, k, n] of shapes) {
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      const a = tf.randomUniform(tA ? [k, m] : [m, k], -1, 1, 'float32', seed++);
      const b = tf.randomUniform(tB ? [n, k] : [k, n], -1, 1, 'float32', seed++);
      const ad = a.dataSync(), bd = b.dataSync();
      for (let rep = 0; rep < 3; rep++) {
        // rep 2 reads the packed copy of b (made at its second use)
        const c = tf.matMul(a, b, tA, tB);
        const cd = c.dataSync();
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) {
            let s = 0, g = 0;
            for (let q = 0; q < k; q++) {
              const av = tA ? ad[q * m + i]! : ad[i * k + q]!;
              const bv = tB ? bd[j * k + q]! : bd[q * n + j]!;
              s += av * bv;
              g += Math.abs(av * bv);
            }
            worst = Math.max(worst, Math.abs(cd[i * n + j]! - s) / (k * EPS * g + 1e-30));
          }
        }
        c.dispose();
        count++;
      }
      tf.dispose([a, b]);
    }
  }
}
const info = wasmInfo().native;
console.log(JSON.stringify({ arch: info.arch ?? null, active: info.active, worst, count, packed: matMulStats.packedOperands, native: matMulStats.native }));
