/**
 * `qrm fit` is a function of its inputs and config: two fits of the same features give bit-identical
 * heads, even when the clock runs wildly differently (the solver budgets its certificates in counted
 * work, not seconds; issue 13). The second fit runs with performance.now() advancing one second per
 * call, as on a machine thousands of times slower: under the old wall-clock rule that skipped
 * certificate rounds (they seemed to take all the time), moved the smoothing schedule and the
 * stopping iteration, and changed the heads.
 */
import test from 'ava';
import { Rng, initBackend } from '@qrlhf/core';
import { fitQuantileHeads } from '../src/quantile/index.js';

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

function data(n: number, d: number, M: number) {
  const rng = new Rng('determinism');
  const x = new Float32Array(n * d);
  const labels = new Float32Array(n * M);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) x[i * d + j] = rng.normal() + (j === 0 ? 1 : 0);
    for (let m = 0; m < M; m++) {
      const mu = 0.5 + 0.1 * x[i * d + m]! - 0.05 * x[i * d + ((m + 1) % d)]!;
      labels[i * M + m] = Math.min(1, Math.max(0, mu + (0.1 + 0.05 * Math.abs(x[i * d]!)) * rng.normal()));
    }
  }
  return { x, labels };
}

async function fit(x: Float32Array, labels: Float32Array, n: number, d: number) {
  return fitQuantileHeads(x, n, d, labels, { attributes: ['a', 'b'], K: 9, alpha: 0.003, labelScale: 'none', lpMaxCells: 0, rng: new Rng(1) });
}

const bits = (a: Float32Array): string => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

test.serial('two fits of the same features give bit-identical heads and reports, whatever the clock does', async (t) => {
  const n = 400;
  const d = 12;
  const { x, labels } = data(n, d, 2);
  const first = await fit(x, labels, n, d);
  const perf = globalThis.performance;
  const realNow = perf.now.bind(perf);
  let fake = realNow();
  // a clock that races ahead: every reading is one second later than the one before
  Object.defineProperty(perf, 'now', { value: () => (fake += 1000), configurable: true, writable: true });
  let second: Awaited<ReturnType<typeof fit>>;
  try {
    second = await fit(x, labels, n, d);
  } finally {
    Object.defineProperty(perf, 'now', { value: realNow, configurable: true, writable: true });
  }
  t.is(bits(second.weight), bits(first.weight));
  t.is(bits(second.bias), bits(first.bias));
  // everything but the measured seconds
  const strip = (r: typeof first.report) => r.attributes.map(({ seconds: _s, ...rest }) => rest);
  t.deepEqual(strip(second.report), strip(first.report));
  // the fit did work worth comparing: nonzero weights, finite lower bounds below the objectives
  t.true(Array.from(first.weight).some((w) => w !== 0));
  t.true(first.report.attributes.every((a) => a.levels.every((l) => l.lowerBound <= l.objective && l.lowerBound > 0)));
});
