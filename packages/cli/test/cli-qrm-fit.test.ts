import test from 'ava';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, readSafetensors, writeSafetensors } from '@qrlhf/core';
import { quantileLP, quantileObjective } from '@qrlhf/qrm';
import { qrlhf } from './cli-helpers.js';

interface Level { tau: number; objective: number; lowerBound: number; gap: number; iterations: number; finish: string }

test('qrlhf qrm fit: prints the per-level table and writes fit-report.json whose objectives are those of the saved heads (float64 recomputation) and whose bounds are below the exact LP', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-fit-'));
  const n = 200;
  const d = 4;
  const rng = new Rng('cli-fit');
  const x = new Float32Array(n * d);
  const labels = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < d; j++) x[i * d + j] = 1 + rng.normal();
    labels[i] = 2 + x[i * d]! - 0.5 * x[i * d + 1]! + (0.3 + 0.2 * Math.abs(x[i * d + 2]!)) * rng.normal();
  }
  const features = join(dir, 'f.safetensors');
  writeSafetensors(features, { embeddings: { dtype: 'F32', shape: [n, d], data: x }, labels: { dtype: 'F32', shape: [n, 1], data: labels } }, { attributes: JSON.stringify(['helpfulness']) });
  const out = join(dir, 'heads');
  const r = await qrlhf(['qrm', 'fit', '--features', features, '--out', out, '--quantiles', '3', '--time-limit', '20']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /helpfulness: 200 rows/);
  t.regex(r.stdout, /tau\s+objective\s+lower bound\s+gap %/);
  t.true(existsSync(join(out, 'heads.safetensors')));
  const report = JSON.parse(readFileSync(join(out, 'fit-report.json'), 'utf8')) as { alpha: number; attributes: { attribute: string; levels: Level[] }[] };
  t.is(report.alpha, 0.003);
  const h = readSafetensors(join(out, 'heads.safetensors')).tensors;
  t.deepEqual(h['weight']!.shape, [1, 3, d]);
  const w = h['weight']!.data as Float32Array;
  const b = h['bias']!.data as Float32Array;
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of labels) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const y = Array.from(labels, (v) => (v - lo) / (hi - lo));
  const levels = report.attributes[0]!.levels;
  t.is(levels.length, 3);
  levels.forEach((l, k) => {
    const obj = quantileObjective(x, n, d, y, l.tau, 0.003, w.subarray(k * d, k * d + d), b[k]!);
    t.true(Math.abs(obj - l.objective) <= 1e-5 * obj, `tau ${l.tau}: ${l.objective} vs ${obj}`);
    const lp = quantileLP(x, n, d, y, l.tau, 0.003);
    t.true(l.lowerBound <= lp.objective * (1 + 1e-9));
    t.true(l.gap >= 0 && l.gap <= 1e-3, `tau ${l.tau}: gap ${l.gap}`); // small problem: the LP finish makes it exact
    t.regex(r.stdout, new RegExp(`${l.tau.toFixed(3)}\\s.*\\s${l.finish}`));
  });
  const bad = await qrlhf(['qrm', 'fit', '--features', features, '--out', out, '--time-limit', 'soon']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /--time-limit: expected a number/);
});
