import test from 'ava';
import { QrlhfError } from '@qrlhf/core';
import { MEAN_BUDGET_GRID, ceQ25Lambda, lambdaForCertaintyEquivalent, meanBudgetLambda, pooledCertaintyEquivalent } from '../experiments/figure3/lambda.js';

/** The lambda rules (experiments/figure3/lambda.ts) against closed forms and hand-made switch points. */

test('pooled certainty equivalent of a two-point distribution matches its closed form', (t) => {
  // rewards 0 and 1, equally likely: CE(λ) = −ln((1 + e^−λ) / 2) / λ
  const q = [new Float32Array([0, 1]), new Float32Array([0, 1])];
  for (const l of [0.1, 1, 5, 30]) t.true(Math.abs(pooledCertaintyEquivalent(q, l) - -Math.log((1 + Math.exp(-l)) / 2) / l) < 1e-6);
});

test('bisection finds the lambda of a target certainty equivalent', (t) => {
  const q = [new Float32Array([0, 1])];
  const l = lambdaForCertaintyEquivalent(q, 0.25);
  // independent check: at that lambda the closed form gives the target
  t.true(Math.abs(-Math.log((1 + Math.exp(-l)) / 2) / l - 0.25) < 1e-9, `lambda ${l}`);
  // the root of −ln((1 + e^−λ)/2)/λ = 1/4, by float64 bisection written here: 1.7628 (to 4 places)
  let a = 0.01;
  let b = 100;
  for (let i = 0; i < 200; i++) {
    const m = (a + b) / 2;
    if (-Math.log((1 + Math.exp(-m)) / 2) / m > 0.25) a = m;
    else b = m;
  }
  t.true(Math.abs(l - a) < 1e-9 * a);
  t.throws(() => lambdaForCertaintyEquivalent([new Float32Array([0.4, 0.4])], 0.4), { instanceOf: QrlhfError, message: /no spread/ });
});

test('ce-q25 targets the mean estimated q0.25', (t) => {
  const taus = Float32Array.from({ length: 19 }, (_, k) => (k + 1) / 20);
  // two responses, each with quantiles linear in tau
  const q = [taus.map((x) => 0.2 + 0.5 * x), taus.map((x) => 0.1 + 0.8 * x)];
  const r = ceQ25Lambda(q, taus);
  t.true(Math.abs(r.target - ((0.2 + 0.125 + 0.1 + 0.2) / 2)) < 1e-6);
  t.true(Math.abs(pooledCertaintyEquivalent(q, r.lambda) - r.target) < 1e-6);
  t.true(r.lambda > 0);
  t.throws(() => ceQ25Lambda(q, taus.map((x) => x * 0.9)), { message: /no quantile level 0.25/ });
});

/** λ at which the risky two-point sample [l, l, h, h] stops beating the safe constant c under U_λ: float64 bisection written here. */
function switchLambda(c: number, l: number, h: number): number {
  const d = (x: number) => -Math.exp(-x * c) + (Math.exp(-x * l) + Math.exp(-x * h)) / 2; // > 0: safe preferred
  let a = 1e-6;
  let b = 1e3;
  for (let i = 0; i < 200; i++) {
    const m = Math.sqrt(a * b);
    if (d(m) > 0) b = m;
    else a = m;
  }
  return a;
}

test('mean-budget: the largest grid lambda before the choice costs more than the budget, against hand-made switch points', (t) => {
  const safe = new Float32Array([0.5, 0.5, 0.5, 0.5]);
  const riskyA = new Float32Array([0.35, 0.35, 0.75, 0.75]); // mean 0.55: costs 0.05 when dropped for the safe one
  const riskyB = new Float32Array([0.45, 0.45, 0.57, 0.57]); // mean 0.51: costs 0.01
  const groups = [[riskyA, safe], [safe, riskyB]];
  const sA = switchLambda(0.5, 0.35, 0.75); // 2.61
  const sB = switchLambda(0.5, 0.45, 0.57); // 5.66
  t.true(sA > 1 && sB > sA && sB < 128, `switch points ${sA} ${sB}`);
  const total = Math.fround(0.55) + Math.fround(0.51);
  const lossA = (Math.fround(0.55) - 0.5) / total;
  const lossB = (Math.fround(0.51) - 0.5) / total;
  const largestBelow = (x: number) => [...MEAN_BUDGET_GRID].filter((g) => g < x).at(-1)!;
  // the curve: each prompt's loss appears exactly past its switch point
  const r = meanBudgetLambda(groups, 0.03);
  for (const p of r.curve) {
    const want = (p.lambda > sA ? lossA : 0) + (p.lambda > sB ? lossB : 0);
    t.true(Math.abs(p.loss - want) < 1e-6, `lambda ${p.lambda}: loss ${p.loss}, want ${want}`);
    t.is(p.switched, ((p.lambda > sA ? 1 : 0) + (p.lambda > sB ? 1 : 0)) / 2);
  }
  // 3 %: A's switch (4.7 %) does not fit, and B's comes later
  t.is(r.lambda, largestBelow(sA));
  // 5 %: A's fits, A's and B's together (5.7 %) do not
  t.is(meanBudgetLambda(groups, 0.05).lambda, largestBelow(sB));
  t.not(largestBelow(sA), largestBelow(sB));
  // a budget that holds every switch: the top of the grid
  t.is(meanBudgetLambda(groups, 0.2).lambda, 128);
  t.true(Math.abs(r.meanOfBest - total / 2) < 1e-7);
});

test('mean-budget refuses what it cannot decide', (t) => {
  const safe = new Float32Array([0.5, 0.5]);
  // already at lambda 1 the utility prefers the safe sample (U: −0.6065 against −0.6767) and gives up 0.02 / 0.52
  t.throws(() => meanBudgetLambda([[new Float32Array([0, 1.04]), safe]], 0.01), { instanceOf: QrlhfError, message: /already at lambda 1 .* 3\.85 %/ });
  t.throws(() => meanBudgetLambda([[safe]], 0.03), { message: /at least 2 samples/ });
  t.throws(() => meanBudgetLambda([[safe, safe]], 0), { message: /must lie in \(0, 1\)/ });
});
