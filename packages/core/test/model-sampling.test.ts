import test from 'ava';
import { Rng, chooseToken } from '@qrlhf/core';
import { defineSamplingTests } from './model-sampling-cases.js';

defineSamplingTests(test, 'cpu');

/** The exact distribution after temperature, top-k and top-p, in float64, from a sorted list. */
function truncated(logits: number[], temperature: number, topK: number, topP: number): number[] {
  const order = logits.map((_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b).slice(0, topK);
  const w = order.map((i) => Math.exp(logits[i]! / temperature));
  const z = w.reduce((a, b) => a + b, 0);
  const p = new Array<number>(logits.length).fill(0);
  let acc = 0;
  for (let j = 0; j < order.length && acc < topP - 1e-12; j++) {
    p[order[j]!] = w[j]! / z;
    acc += w[j]! / z;
  }
  const s = p.reduce((a, b) => a + b, 0);
  return p.map((x) => x / s);
}

const logits = [1.2, -0.3, 2.5, 0.7, 2.5, -2, 0.1, 1.9];
for (const [temperature, topK, topP] of [
  [1, 8, 1],
  [0.7, 8, 1],
  [1.5, 3, 1],
  [1, 8, 0.8],
  [2, 5, 0.6],
] as const) {
  test(`chooseToken draws from the exact truncated distribution (T ${temperature}, top-k ${topK}, top-p ${topP})`, (t) => {
    const want = truncated(logits, temperature, topK, topP);
    const rng = new Rng(`draws-${temperature}-${topK}-${topP}`);
    const n = 20000;
    const counts = new Array<number>(logits.length).fill(0);
    const row = Float32Array.from(logits);
    for (let i = 0; i < n; i++) counts[chooseToken(row, { temperature, topK, topP, rng })]!++;
    counts.forEach((k, i) => {
      const p = want[i]!;
      if (p === 0) t.is(k, 0, `token ${i} is outside the kept set`);
      // 5 standard deviations of a binomial proportion.
      else t.true(Math.abs(k / n - p) < 5 * Math.sqrt((p * (1 - p)) / n), `token ${i}: ${k / n} vs ${p}`);
    });
  });
}

test('chooseToken at temperature 0 takes the first largest logit and draws nothing', (t) => {
  const rng = new Rng(1);
  const state = JSON.stringify(rng.state());
  t.is(chooseToken(Float32Array.from(logits), { temperature: 0, rng }), 2);
  t.is(JSON.stringify(rng.state()), state);
});

test('chooseToken over the whole vocabulary is the inverse-CDF draw of the same uniform (float64 reference)', (t) => {
  // The untruncated path works on a typed scratch array; the token must be the one whose
  // cumulative-probability interval holds the draw, for rows of a real vocabulary's size.
  const gen = new Rng('rows');
  for (const temperature of [1, 0.6, 1.7]) {
    const rng = new Rng(`full-${temperature}`);
    const twin = new Rng(`full-${temperature}`);
    for (let n = 0; n < 300; n++) {
      const row = Float32Array.from({ length: 768 }, () => 3 * gen.normal());
      const tok = chooseToken(row, { temperature, rng });
      const top = Math.max(...row);
      const w = Array.from(row, (x) => Math.exp((x - top) / temperature));
      const u = twin.next() * w.reduce((a, b) => a + b, 0);
      let acc = 0;
      let want = w.length - 1;
      for (let j = 0; j < w.length; j++) {
        acc += w[j]!;
        if (u < acc) {
          want = j;
          break;
        }
      }
      if (tok !== want) return t.fail(`T ${temperature}, draw ${n}: token ${tok}, expected ${want}`);
    }
  }
  t.pass();
});
