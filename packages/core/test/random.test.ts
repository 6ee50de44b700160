import test from 'ava';
import { Rng } from '@qrlhf/core';

test('a restored Rng state continues the same stream', (t) => {
  const a = new Rng(42);
  for (let i = 0; i < 5; i++) a.next();
  const saved = JSON.parse(JSON.stringify(a.state()));
  const expected = [a.next(), a.normal(), a.int(1000)];
  const b = new Rng('ignored', saved);
  t.deepEqual([b.next(), b.normal(), b.int(1000)], expected);
});

test('different seeds give different streams, same seed the same', (t) => {
  t.not(new Rng(1).next(), new Rng(2).next());
  t.is(new Rng(7).next(), new Rng(7).next());
});
