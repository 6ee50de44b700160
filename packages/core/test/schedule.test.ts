import test from 'ava';
import { QrlhfError, constantSchedule, cosineSchedule } from '@qrlhf/core';

const close = (a: number, b: number) => Math.abs(a - b) < 1e-12;

test('cosine with warmup at known points', (t) => {
  const f = cosineSchedule({ lr: 1, warmupSteps: 10, totalSteps: 110 });
  t.true(close(f(0), 0.1));
  t.true(close(f(4), 0.5));
  t.true(close(f(9), 1));
  t.true(close(f(10), 1)); // start of the decay
  t.true(close(f(35), (1 + Math.SQRT1_2) / 2)); // a quarter of the way: cos(pi/4)
  t.true(close(f(60), 0.5)); // half way
  t.true(close(f(85), (1 - Math.SQRT1_2) / 2));
  t.true(close(f(110), 0));
  t.true(close(f(500), 0));
});

test('minLr floors the cosine; decay is monotone; zero warmup starts at the peak', (t) => {
  const f = cosineSchedule({ lr: 3e-4, warmupSteps: 0, totalSteps: 100, minLr: 3e-5 });
  t.true(close(f(0), 3e-4));
  t.true(close(f(50), 3e-5 + (3e-4 - 3e-5) / 2));
  t.true(close(f(100), 3e-5));
  for (let s = 1; s < 120; s++) t.true(f(s) <= f(s - 1) + 1e-18);
});

test('constant schedule and bad arguments', (t) => {
  const c = constantSchedule(1e-4);
  t.is(c(0), 1e-4);
  t.is(c(1e6), 1e-4);
  t.throws(() => cosineSchedule({ lr: 1, warmupSteps: 10, totalSteps: 5 }), { instanceOf: QrlhfError, message: /totalSteps/ });
  t.throws(() => cosineSchedule({ lr: 1, warmupSteps: 1.5, totalSteps: 5 }), { instanceOf: QrlhfError });
  t.throws(() => cosineSchedule({ lr: 1, warmupSteps: 1, totalSteps: 5, minLr: 2 }), { instanceOf: QrlhfError, message: /minLr/ });
  t.throws(() => constantSchedule(Number.NaN), { instanceOf: QrlhfError });
});
