import test from 'ava';
import { aggregateSeeds, figure3Svg, movingAverage, svgToPng, FIGURE3_KEYS } from '@qrlhf/rloo';

test('aggregateSeeds: mean and sample sd over seeds, on the steps all seeds share', (t) => {
  const seeds = [
    [{ step: 0, x: 1 }, { step: 1, x: 2 }, { step: 2, x: 9 }],
    [{ step: 0, x: 3 }, { step: 1, x: 6 }],
  ];
  const a = aggregateSeeds(seeds, 'x');
  t.deepEqual(a.steps, [0, 1]);
  t.deepEqual(a.mean, [2, 4]);
  // sample sd of {1,3} is sqrt(2); of {2,6} is sqrt(8)
  t.true(Math.abs(a.hi[0]! - (2 + Math.SQRT2)) < 1e-12);
  t.true(Math.abs(a.lo[1]! - (4 - Math.sqrt(8))) < 1e-12);
});

test('aggregateSeeds bands: min-max of the seeds, and the 95 % t-interval of the seed mean', (t) => {
  const seeds = [[{ step: 0, x: 1 }], [{ step: 0, x: 4 }], [{ step: 0, x: 7 }]];
  const mm = aggregateSeeds(seeds, 'x', 1, 'min-max');
  t.deepEqual([mm.lo[0], mm.mean[0], mm.hi[0]], [1, 4, 7]);
  // sd of {1, 4, 7} is 3; t_{0.975, 2} = 4.303: 4 ± 4.303 · 3 / √3
  const ti = aggregateSeeds(seeds, 'x', 1, 't95');
  t.true(Math.abs(ti.hi[0]! - (4 + (4.303 * 3) / Math.sqrt(3))) < 1e-9);
  t.true(Math.abs(ti.lo[0]! - (4 - (4.303 * 3) / Math.sqrt(3))) < 1e-9);
  // one seed: the band is the line
  const one = aggregateSeeds([[{ step: 0, x: 2 }]], 'x', 1, 't95');
  t.deepEqual([one.lo[0], one.hi[0]], [2, 2]);
  t.regex(figure3Svg([{ label: 'r', seeds }], { keys: ['x'], band: 'min-max' }), /band min–max of seeds/);
});

test('movingAverage is a trailing mean', (t) => {
  t.deepEqual(movingAverage([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5]);
  t.deepEqual(movingAverage([5, 7], 1), [5, 7]);
});

test('figure3Svg draws one panel per key and one band and line per run; PNG renders', async (t) => {
  const mk = (shift: number) =>
    [0, 1].map((seed) =>
      Array.from({ length: 20 }, (_, step) => {
        const row: Record<string, number> = { step };
        for (const k of FIGURE3_KEYS) row[k] = Math.sin(step / 3) + shift + seed * 0.1;
        return row;
      }),
    );
  const svg = figure3Svg([
    { label: 'risk-neutral', seeds: mk(0) },
    { label: 'risk-aware', seeds: mk(1) },
  ]);
  t.is((svg.match(/<polyline /g) ?? []).length, FIGURE3_KEYS.length * 2);
  t.is((svg.match(/<polygon /g) ?? []).length, FIGURE3_KEYS.length * 2);
  t.true(svg.includes('quantile τ = 0.05'));
  const png = await svgToPng(svg, 700);
  t.deepEqual([...png.slice(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10]);
  const width = new DataView(png.buffer, png.byteOffset).getUint32(16);
  t.is(width, 700);
});
