// The native addon used from several JS threads at once (worker_threads): each caller has its own
// packing buffers and a caller that finds the pool busy computes alone, so concurrent products
// stay exact. Each thread checks every repetition against its own float64 product.
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { loadNative, nativeAddonPath } from '../src/compute/kernels/index.js';

const maybe = loadNative() ? test : test.skip;

// Runs in the main thread and in each worker (as a string), so it is plain JavaScript.
const body = `
function run(addonPath, seed, reps) {
  const q = require(addonPath);
  q.init(2, 50);
  const m = 150, k = 300, n = 90;
  const heap = new Float32Array(new SharedArrayBuffer(4 * (m * k + k * n + m * n + 64)));
  let s = seed;
  const rnd = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) * 2 - 1;
  for (let i = 0; i < m * k + k * n; i++) heap[i] = rnd();
  const A = 0, B = m * k, C = m * k + k * n;
  const ref = new Float64Array(m * n), mag = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
    let acc = 0, g = 0;
    for (let p = 0; p < k; p++) { const v = heap[A + i * k + p] * heap[B + p * n + j]; acc += v; g += Math.abs(v); }
    ref[i * n + j] = acc; mag[i * n + j] = g;
  }
  let worst = 0;
  for (let r = 0; r < reps; r++) {
    heap.fill(NaN, C, C + m * n);
    q.gemm(heap, m, n, k, r % 2, 0, Uint32Array.of(A, B, C)); // odd reps read A as transposed [k, m]
    if (r % 2 === 1) continue;
    for (let i = 0; i < m * n; i++) worst = Math.max(worst, Math.abs(heap[C + i] - ref[i]) / (k * 2 ** -24 * mag[i] + 1e-30));
  }
  return worst;
}
`;

maybe('concurrent products from the main thread and two workers are all exact', async (t) => {
  const file = nativeAddonPath();
  const workerSrc = `${body}\nconst { parentPort, workerData } = require('node:worker_threads');\nparentPort.postMessage(run(workerData.file, workerData.seed, 200));`;
  const workers = [11, 22].map((seed) => new Promise<number>((resolve, reject) => {
    const w = new Worker(workerSrc, { eval: true, workerData: { file, seed } });
    w.once('message', (v: number) => resolve(v));
    w.once('error', reject);
  }));
  // the main thread works at the same time
  const run = new Function('require', `${body}; return run;`)(
    (await import('node:module')).createRequire(import.meta.url),
  ) as (file: string, seed: number, reps: number) => number;
  const mainWorst = run(file, 33, 200);
  const [w1, w2] = await Promise.all(workers);
  for (const [who, worst] of [['main', mainWorst], ['worker 1', w1!], ['worker 2', w2!]] as const) {
    t.true(worst <= 1, `${who}: worst error ${worst} of the float32 bound`);
  }
});
