// Child of kernel-threads.test.ts: initialise wasm, multiply, print one JSON line, and return
// without any shutdown call (the parent checks that the process exits by itself).
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/compute/backend.js';
import { wasmInfo } from '../src/compute/kernels/setup.js';

const listeners = process.listeners('uncaughtException').length + process.listeners('unhandledRejection').length;
await initBackend('wasm', { quiet: true });
// 2·384·320·192 = 47 MFLOP: above THREADED_MIN_FLOPS, so it runs on the pool.
const a = tf.randomUniform([384, 320], -1, 1, 'float32', 1);
const b = tf.randomUniform([192, 320], -1, 1, 'float32', 2);
for (let i = 0; i < 3; i++) tf.matMul(a, b, false, true).dispose(); // third call: kept plain copy
const c = tf.matMul(a, b, false, true);
const d = c.dataSync();
let h = 0;
for (let i = 0; i < d.length; i++) h = (Math.imul(h, 31) + new Int32Array(new Float32Array([d[i]!]).buffer)[0]!) | 0;
const after = process.listeners('uncaughtException').length + process.listeners('unhandledRejection').length;
process.stdout.write(JSON.stringify({
  threads: wasmInfo().threads, pool: wasmInfo().poolOnlyForLargeProducts ?? false, checksum: h, globalWorker: typeof (globalThis as { Worker?: unknown }).Worker,
  newListeners: after - listeners,
}) + '\n');
