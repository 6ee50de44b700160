import test from 'ava';
import { Rng } from '@qrlhf/core';
import { DEBIAS_GRID, applyDebias, averageRanks, debiasPenalties, expectedRewards, spearman } from '@qrlhf/qrm';

test('the grid is ArmoRM\'s: fine steps to .15, then .2, .25 and .3 … .95 by .05', (t) => {
  t.deepEqual([...DEBIAS_GRID], [0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]);
});

test('average ranks and Spearman with ties, against a hand computation', (t) => {
  // x = [3, 1, 4, 1, 5]: sorted 1,1,3,4,5 -> the two 1s share ranks 1 and 2 -> 1.5
  t.deepEqual([...averageRanks([3, 1, 4, 1, 5])], [3, 1.5, 4, 1.5, 5]);
  // y = [2, 7, 1, 8, 2]: sorted 1,2,2,7,8 -> ranks 1, 2.5, 2.5, 4, 5
  t.deepEqual([...averageRanks([2, 7, 1, 8, 2])], [2.5, 4, 1, 5, 2.5]);
  // By hand: rx = [3,1.5,4,1.5,5] (mean 3), ry = [2.5,4,1,5,2.5] (mean 3)
  // dx = [0,-1.5,1,-1.5,2], dy = [-.5,1,-2,2,-.5]
  // Σdxdy = 0 - 1.5 - 2 - 3 - 1 = -7.5 ; Σdx² = 0+2.25+1+2.25+4 = 9.5 ; Σdy² = .25+1+4+4+.25 = 9.5
  // rho = -7.5 / 9.5
  t.true(Math.abs(spearman([3, 1, 4, 1, 5], [2, 7, 1, 8, 2]) - -7.5 / 9.5) < 1e-15);
  // a monotone transform keeps rho = 1
  t.true(Math.abs(spearman([1, 2, 3, 10], [0.1, 5, 6, 1000]) - 1) < 1e-15);
  t.true(Number.isNaN(spearman([1, 1, 1], [1, 2, 3])));
});

test('penalties: smallest grid value reaching the threshold, 1 for verbosity and for attributes that never reach it', (t) => {
  const rng = new Rng(7);
  const n = 400;
  const M = 4;
  const V = new Float64Array(n * M);
  for (let i = 0; i < n; i++) {
    const verb = rng.normal();
    const noise = [rng.normal(), rng.normal(), rng.normal()];
    V[i * M + 0] = noise[0]! + 0.3 * verb; // mildly verbosity-correlated
    V[i * M + 1] = verb;                    // verbosity (index 1)
    V[i * M + 2] = noise[1]!;               // independent
    V[i * M + 3] = 5 * verb + 0.01 * noise[2]!; // almost pure verbosity x5: no p <= .95 removes it
  }
  const { penalties, correlations } = debiasPenalties(V, n, M, 1);
  t.is(penalties[1], 1);
  t.is(penalties[3], 1);
  // reference: the brute-force scan with the library's spearman (tested above by hand)
  const col = (j: number, p: number) => Array.from({ length: n }, (_, i) => V[i * M + j]! - p * V[i * M + 1]!);
  const vv = Array.from({ length: n }, (_, i) => V[i * M + 1]!);
  for (const j of [0, 2]) {
    const p = penalties[j]!;
    t.true(spearman(col(j, p), vv) <= 0.03, `attribute ${j} reaches the threshold at ${p}`);
    const before = DEBIAS_GRID.filter((g) => g < p);
    for (const g of before) t.true(spearman(col(j, g), vv) > 0.03, `attribute ${j} does not reach it at ${g}`);
    t.true(Math.abs(correlations[j]! - spearman(col(j, p), vv)) < 1e-12);
  }
  t.true(penalties[0]! > 0.2, `a 0.3 verbosity loading needs a sizable penalty, got ${penalties[0]}`);
});

test('applyDebias subtracts p_j Q_v at every level and keeps each attribute sorted and its mean', (t) => {
  const n = 2, M = 3, K = 4;
  const q = Float32Array.from([
    0, 1, 2, 3, /* verbosity */ 0, 0.5, 3, 3.5, 1, 1, 1, 1,
    -1, 0, 0, 2, /* verbosity */ 1, 2, 3, 4, 0, 1, 2, 3,
  ]);
  const p = [0.5, 1, 0.25];
  const out = applyDebias(q, n, M, K, p, 1);
  for (let i = 0; i < n; i++) for (let j = 0; j < M; j++) {
    const raw = Array.from({ length: K }, (_, k) => q[(i * M + j) * K + k]! - p[j]! * q[(i * M + 1) * K + k]!);
    const sorted = [...raw].sort((a, b) => a - b);
    for (let k = 0; k < K; k++) t.true(Math.abs(out[(i * M + j) * K + k]! - sorted[k]!) < 1e-6);
  }
  // verbosity itself becomes 0; expectations are unchanged by the sort
  t.deepEqual([...out.subarray(K, 2 * K)], [0, 0, 0, 0]);
  const e = expectedRewards(out, n, M, K);
  t.true(Math.abs(e[0]! - ((0 - 0) + (1 - 0.25) + (2 - 1.5) + (3 - 1.75)) / 4) < 1e-6);
});
