import test from 'ava';
import { Rng } from '@qrlhf/core';
import { mixtureCdf, mixtureMean, mixtureQuantile, type UniformMixture } from '../src/index.js';

function randomMixture(rng: Rng, k: number): UniformMixture {
  const w = Array.from({ length: k }, () => 0.05 + rng.next());
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((x) => {
    const lo = rng.next() * 0.8;
    return { weight: x / sum, lo, hi: lo + 0.01 + rng.next() * 0.2 };
  });
}

/**
 * Reference: integrate the mixture density numerically on a fine grid (midpoint rule), then take
 * the first grid point whose cumulative mass reaches tau. Independent of the closed-form CDF.
 */
function gridQuantile(mix: UniformMixture, tau: number, n = 200_000): { q: number; h: number } {
  const lo = Math.min(...mix.map((c) => c.lo));
  const hi = Math.max(...mix.map((c) => c.hi));
  const h = (hi - lo) / n;
  let acc = 0;
  for (let i = 0; i < n; i++) {
    const x = lo + (i + 0.5) * h;
    let dens = 0;
    for (const c of mix) if (x >= c.lo && x < c.hi) dens += c.weight / (c.hi - c.lo);
    acc += dens * h;
    if (acc >= tau) return { q: lo + (i + 1) * h, h };
  }
  return { q: hi, h };
}

test('mixture quantiles match a numerically integrated density', (t) => {
  const rng = new Rng(11);
  for (let trial = 0; trial < 6; trial++) {
    const mix = randomMixture(rng, 1 + trial);
    for (const tau of [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.95]) {
      const q = mixtureQuantile(mix, tau);
      const ref = gridQuantile(mix, tau);
      // the grid quantile is within a few cells of the exact one (plus the cell's mass error)
      t.true(Math.abs(q - ref.q) <= 4 * ref.h + 1e-9, `trial ${trial} tau ${tau}: ${q} vs ${ref.q}`);
    }
  }
});

test('mixture quantile is the generalised inverse of the CDF to 1e-9', (t) => {
  const rng = new Rng(12);
  for (let trial = 0; trial < 20; trial++) {
    const mix = randomMixture(rng, 1 + (trial % 5));
    for (let k = 1; k <= 19; k++) {
      const tau = k / 20;
      const q = mixtureQuantile(mix, tau);
      t.true(mixtureCdf(mix, q) >= tau - 1e-12);
      t.true(mixtureCdf(mix, q - 1e-9) < tau + 1e-12, `q is the smallest such x (trial ${trial}, tau ${tau})`);
    }
  }
});

test('a gap between components: the quantile is the left end of the upper part (inf definition)', (t) => {
  const mix: UniformMixture = [
    { weight: 0.25, lo: 0, hi: 0.1 },
    { weight: 0.75, lo: 0.5, hi: 0.9 },
  ];
  t.true(Math.abs(mixtureQuantile(mix, 0.25) - 0.1) < 1e-9);
  t.true(Math.abs(mixtureQuantile(mix, 0.25 + 1e-6) - (0.5 + (1e-6 / 0.75) * 0.4)) < 1e-9);
  t.true(Math.abs(mixtureQuantile(mix, 0.125) - 0.05) < 1e-9);
  t.true(Math.abs(mixtureMean(mix) - (0.25 * 0.05 + 0.75 * 0.7)) < 1e-15);
});
