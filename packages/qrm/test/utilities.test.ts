import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QrlhfError } from '@qrlhf/core';
import { makeUtility } from '@qrlhf/qrm';

const taus = Float32Array.from({ length: 19 }, (_, k) => (k + 1) / 20);
const q = Float32Array.from([-2.5, -1.2, -0.8, -0.3, 0, 0.1, 0.15, 0.2, 0.4, 0.45, 0.5, 0.7, 0.9, 1.1, 1.3, 1.6, 2, 2.4, 3.1]);
const qd = Array.from(q); // float64 copies of the same float32 values

test('expectation is the mean of the quantiles', async (t) => {
  const u = await makeUtility({ name: 'expectation' });
  const ref = qd.reduce((a, b) => a + b, 0) / qd.length;
  t.true(Math.abs(u(q, taus) - ref) < 1e-12);
});

test('exponential is mean -exp(-lambda q)', async (t) => {
  for (const lambda of [0.1, 1, 3]) {
    const u = await makeUtility({ name: 'exponential', lambda });
    const ref = qd.map((x) => -Math.exp(-lambda * x)).reduce((a, b) => a + b, 0) / qd.length;
    t.true(Math.abs(u(q, taus) - ref) < 1e-12 * Math.abs(ref), `lambda ${lambda}`);
  }
});

test('certainty equivalent matches the direct formula and stays finite where the direct one overflows', async (t) => {
  for (const lambda of [0.01, 0.5, 2]) {
    const u = await makeUtility({ name: 'certainty-equivalent', lambda });
    const direct = -Math.log(qd.map((x) => Math.exp(-lambda * x)).reduce((a, b) => a + b, 0) / qd.length) / lambda;
    t.true(Math.abs(u(q, taus) - direct) < 1e-10, `lambda ${lambda}`);
    // a CE lies between the minimum and the mean (risk-averse)
    t.true(u(q, taus) >= qd[0]! - 1e-12 && u(q, taus) <= qd.reduce((a, b) => a + b, 0) / qd.length + 1e-12);
  }
  // exp(-lambda q) overflows float64 for lambda q < -709: CE must still be right.
  const lambda = 100;
  const big = Float32Array.from(q, (x) => x * 10); // down to -25 -> exp(2500)
  const u = await makeUtility({ name: 'certainty-equivalent', lambda });
  const v = u(big, taus);
  t.true(Number.isFinite(v));
  // reference by hand: log-mean-exp with the dominant term factored out in float64
  const xs = Array.from(big).map((x) => -lambda * x);
  const m = Math.max(...xs);
  const ref = -(m + Math.log(xs.map((x) => Math.exp(x - m)).reduce((a, b) => a + b, 0) / xs.length)) / lambda;
  t.true(Math.abs(v - ref) < 1e-9);
  // with one dominating term, CE -> min q + log(K)/lambda
  t.true(Math.abs(v - (big[0]! + Math.log(19) / lambda)) < 1e-3);
});

test('cvar averages the quantiles with tau <= alpha, float32 levels included', async (t) => {
  for (const [alpha, count] of [[0.05, 1], [0.25, 5], [0.5, 10], [1, 19]] as const) {
    const u = await makeUtility({ name: 'cvar', alpha });
    const ref = qd.slice(0, count).reduce((a, b) => a + b, 0) / count;
    t.true(Math.abs(u(q, taus) - ref) < 1e-12, `alpha ${alpha}`);
  }
  const low = await makeUtility({ name: 'cvar', alpha: 0.01 });
  const e = t.throws(() => low(q, taus), { instanceOf: QrlhfError });
  t.regex(e!.message, /no quantile level tau <= alpha = 0\.01/);
});

test('bad parameters and unknown names are clear errors', async (t) => {
  await t.throwsAsync(makeUtility({ name: 'exponential', lambda: 0 }), { instanceOf: QrlhfError, message: /^utility exponential: lambda: expected a number > 0, got 0/ });
  await t.throwsAsync(makeUtility({ name: 'cvar', alpha: 1.5 }), { instanceOf: QrlhfError, message: /^utility cvar: alpha: expected a number in \(0, 1\], got 1\.5/ });
  await t.throwsAsync(makeUtility({ name: 'expectaton' }), { instanceOf: QrlhfError, message: /expected one of expectation/ });
});

test('a user module loaded by path: default export, named export, and faults', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-util-'));
  // the 10% trimmed mean of the quantiles, a utility no built-in computes
  writeFileSync(join(dir, 'trim.mjs'), 'export default function (q, taus) { let s = 0; for (let k = 2; k < q.length - 2; k++) s += q[k]; return s / (q.length - 4); }\n');
  const u = await makeUtility({ name: join(dir, 'trim.mjs') });
  const ref = qd.slice(2, 17).reduce((a, b) => a + b, 0) / 15;
  t.true(Math.abs(u(q, taus) - ref) < 1e-12);

  writeFileSync(join(dir, 'named.ts'), 'export function utility(q: Float32Array, taus: Float32Array): number { return q[0]! * taus[0]!; }\n');
  const v = await makeUtility({ name: join(dir, 'named.ts') });
  t.is(v(q, taus), q[0]! * taus[0]!);

  writeFileSync(join(dir, 'notfn.mjs'), 'export const utility = 3;\n');
  await t.throwsAsync(makeUtility({ name: join(dir, 'notfn.mjs') }), { instanceOf: QrlhfError, message: /notfn\.mjs: expected a default export or an export named "utility"/ });

  writeFileSync(join(dir, 'nan.mjs'), 'export default () => NaN;\n');
  const w = await makeUtility({ name: join(dir, 'nan.mjs') });
  t.throws(() => w(q, taus), { instanceOf: QrlhfError, message: /nan\.mjs: returned NaN/ });

  await t.throwsAsync(makeUtility({ name: join(dir, 'missing.js') }), { instanceOf: QrlhfError, message: /missing\.js: file not found/ });
  writeFileSync(join(dir, 'broken.mjs'), 'export default ( =>\n');
  await t.throwsAsync(makeUtility({ name: join(dir, 'broken.mjs') }), { instanceOf: QrlhfError, message: /could not be imported/ });
});
