import test from 'ava';
import { QrlhfError } from '@qrlhf/core';
import { ceQ25Lambda, lambdaForCertaintyEquivalent, pooledCertaintyEquivalent } from '../experiments/figure3/lambda.js';

/** The 'ce-q25' lambda rule (experiments/figure3/lambda.ts) against closed forms. */

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
