import test from 'ava';
import { QrlhfError, Rng } from '@qrlhf/core';
import { bootstrapIntervals, bootstrapResamples, quantileType7, seedPromptMean, twoLevelBootstrapVariance } from '../experiments/figure3/stats.js';

/** The figure3 bootstrap (experiments/figure3/stats.ts) against cases with known answers. */

function normals(rng: Rng, n: number, mu: number, sd: number): Float64Array {
  return Float64Array.from({ length: n }, () => mu + sd * rng.normal());
}

test('a constant statistic has a zero-width interval at the constant', (t) => {
  const x = [new Float64Array(7).fill(0.3), new Float64Array(7).fill(0.3)];
  const [r] = bootstrapIntervals([x], { resamples: 500, level: 0.95, seed: 't' });
  t.is(r!.value, 0.3);
  t.true(Math.abs(r!.ci[0] - 0.3) < 1e-12 && Math.abs(r!.ci[1] - 0.3) < 1e-12);
});

test('one seed: the percentile interval of a mean of normal samples matches the t-interval', (t) => {
  const rng = new Rng('normal-data');
  const n = 400;
  const x = normals(rng, n, 1.5, 2);
  const mean = x.reduce((a, b) => a + b, 0) / n;
  const sd = Math.sqrt(x.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1));
  const half = 1.9659 * sd / Math.sqrt(n); // t quantile 0.975 at 399 degrees of freedom
  const [r] = bootstrapIntervals([[x]], { resamples: 10_000, level: 0.95, seed: 'one-seed' });
  t.log(`bootstrap [${r!.ci[0].toFixed(4)}, ${r!.ci[1].toFixed(4)}], t-interval [${(mean - half).toFixed(4)}, ${(mean + half).toFixed(4)}]`);
  t.true(Math.abs(r!.value - mean) < 1e-12);
  // Monte Carlo error of a 2.5 % quantile at B = 10 000 is ~1.5 % of the half-width; the percentile
  // interval's divisor n (not n − 1) and the sample's skew add less than that.
  t.true(Math.abs(r!.ci[0] - (mean - half)) < 0.06 * half, 'lower bound');
  t.true(Math.abs(r!.ci[1] - (mean + half)) < 0.06 * half, 'upper bound');
});

test('two levels: the resamples have the exact two-level variance, seeds and prompts both counted', (t) => {
  const rng = new Rng('two-level-data');
  // five seeds whose means differ (between-seed spread) with noisy prompts (within-seed spread)
  const x = [0, 0.3, -0.2, 0.5, 0.1].map((m) => normals(rng, 40, m, 1));
  const exact = twoLevelBootstrapVariance(x);
  const [draws] = bootstrapResamples([x], { resamples: 10_000, seed: 'two-level' });
  const mu = draws!.reduce((a, b) => a + b, 0) / draws!.length;
  const v = draws!.reduce((a, b) => a + (b - mu) ** 2, 0) / (draws!.length - 1);
  t.log(`resampled variance ${v.toExponential(4)}, exact ${exact.toExponential(4)}`);
  // the sample variance of B = 10 000 draws has relative sd sqrt(2 / B) ≈ 1.4 %
  t.true(Math.abs(v / exact - 1) < 0.06);
  t.true(Math.abs(mu - seedPromptMean(x)) < 4 * Math.sqrt(exact / 10_000));
  // prompts alone would give a smaller variance: the seed level is in the draws
  const withinOnly = x.reduce((a, row) => a + twoLevelBootstrapVariance([row]), 0) / x.length ** 2;
  t.true(v > 1.5 * withinOnly);
});

test('seed values constant within each seed: the exact bootstrap distribution of a mean of three', (t) => {
  // three seeds with values 0, 1, 5 and no prompt noise: θ* is the mean of 3 draws with
  // replacement from {0, 1, 5}; enumerate its 27 equally likely outcomes
  const vals = [0, 1, 5];
  const x = vals.map((v) => new Float64Array(4).fill(v));
  const all: number[] = [];
  for (const a of vals) for (const b of vals) for (const c of vals) all.push((a + b + c) / 3);
  const [draws] = bootstrapResamples([x], { resamples: 20_000, seed: 'exact' });
  // each atom's frequency within Monte Carlo error of its exact probability
  const atoms = [...new Set(all)];
  for (const atom of atoms) {
    const p = all.filter((y) => y === atom).length / 27;
    const f = draws!.filter((y) => Math.abs(y - atom) < 1e-12).length / draws!.length;
    t.true(Math.abs(f - p) < 4 * Math.sqrt(p * (1 - p) / draws!.length) + 1e-9, `P(θ* = ${atom}) ${f} vs ${p}`);
  }
});

test('statistics share the resampled indices; paired differences have the difference\'s interval', (t) => {
  const rng = new Rng('paired');
  const a = [normals(rng, 50, 1, 1), normals(rng, 50, 1.2, 1)];
  const b = a.map((row) => row.map((v) => v + 0.25)); // b − a = 0.25 exactly, prompt by prompt
  const d = b.map((row, s) => row.map((v, p) => v - a[s]![p]!));
  const [ra, rb, rd] = bootstrapIntervals([a, b, d], { resamples: 2000, level: 0.9, seed: 'shared' });
  t.true(Math.abs(rb!.ci[0] - ra!.ci[0] - 0.25) < 1e-9 && Math.abs(rb!.ci[1] - ra!.ci[1] - 0.25) < 1e-9);
  t.true(Math.abs(rd!.ci[0] - 0.25) < 1e-9 && Math.abs(rd!.ci[1] - 0.25) < 1e-9);
  // deterministic in the seed
  t.deepEqual(bootstrapIntervals([a], { resamples: 300, level: 0.9, seed: 's' }), bootstrapIntervals([a], { resamples: 300, level: 0.9, seed: 's' }));
});

test('type-7 quantiles and refusals', (t) => {
  t.is(quantileType7([3, 1, 2, 4], 0.5), 2.5);
  t.is(quantileType7([5], 0.025), 5);
  t.is(quantileType7([0, 10], 0.975), 9.75);
  t.throws(() => bootstrapResamples([[new Float64Array(3)], [new Float64Array(4)]], { resamples: 1, seed: 'x' }), { instanceOf: QrlhfError, message: /statistic 1 is not 1 seeds × 3 prompts/ });
  t.throws(() => bootstrapIntervals([[new Float64Array(3)]], { resamples: 1, level: 1, seed: 'x' }), { instanceOf: QrlhfError, message: /level 1/ });
});
