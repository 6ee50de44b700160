// The native thread pool under stress: many small products split in chunks over more threads than
// cores, with workers that go to sleep at once (no spinning), so workers often arrive late, after
// their job was closed and the next one opened. An earlier version miscounted such a late worker and
// hung within ~20,000 products (this test caught it in one run of three); every result is also checked against float64.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { loadNative, nativeAddonPath } from '../src/compute/kernels/index.js';

const maybe = loadNative() ? test : test.skip;

const child = `
const q = require(process.argv[1]);
q.init(8, 0);
const m = 96, n = 96, k = 64;
const heap = new Float32Array(new SharedArrayBuffer(4 * (m * k + k * n + m * n)));
for (let i = 0; i < m * k + k * n; i++) heap[i] = ((i * 7919) % 1000) / 500 - 1;
const A = 0, B = m * k, C = m * k + k * n;
const ref = new Float64Array(m * n), mag = new Float64Array(m * n);
for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
  let s = 0, g = 0;
  for (let p = 0; p < k; p++) { const v = heap[A + i * k + p] * heap[B + p * n + j]; s += v; g += Math.abs(v); }
  ref[i * n + j] = s; mag[i * n + j] = g;
}
let worst = 0;
for (let r = 0; r < 100000; r++) {
  q.gemm(heap, m, n, k, 0, 0, Uint32Array.of(A, B, C));
  if (r % 1000 === 0) for (let i = 0; i < m * n; i++) worst = Math.max(worst, Math.abs(heap[C + i] - ref[i]) / (k * 2 ** -24 * mag[i] + 1e-30));
}
console.log(JSON.stringify({ worst }));
`;

maybe('100,000 chunked products on 8 threads with sleeping workers finish and stay exact', (t) => {
  const r = spawnSync(process.execPath, ['-e', child, nativeAddonPath()], { encoding: 'utf8', timeout: 120_000 });
  t.is(r.signal, null, 'the child did not hang (killed at the timeout)');
  t.is(r.status, 0, r.stderr);
  const { worst } = JSON.parse(r.stdout.trim()) as { worst: number };
  t.true(worst <= 1, `worst error ${worst} of the float32 bound`);
});

maybe('dimensions whose products overflow 64 bits are refused before any bounds arithmetic', (t) => {
  const addon = loadNative()!;
  const heap = new Float32Array(64);
  const big = 2 ** 32;
  t.throws(() => addon.gemm(heap, big, big, big, 0, 0, Uint32Array.of(0, 0, 0)), { instanceOf: TypeError });
  t.throws(() => addon.packB(heap, big, big, 0, 0, 0), { instanceOf: TypeError });
  // a block whose last row lies 2^64 floats away wraps around in naive arithmetic
  t.throws(() => addon.copyBlocks(heap, Uint32Array.of(0xffffffff, 0, 0xffffffff, 0, 1, 1)), { instanceOf: RangeError });
});
