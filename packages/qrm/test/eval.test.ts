import test from 'ava';
import { sharedDataDir } from '@qrlhf/core';
import { loadLlmbar, rewardBenchScore, type ScoredPair } from '@qrlhf/qrm';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

function rows(subset: string, right: number, ties: number, wrong: number): ScoredPair[] {
  return [
    ...Array.from({ length: right }, () => ({ subset, chosen: 1, rejected: 0 })),
    ...Array.from({ length: ties }, () => ({ subset, chosen: 0.5, rejected: 0.5 })),
    ...Array.from({ length: wrong }, () => ({ subset, chosen: 0, rejected: 1 })),
  ];
}

test('RewardBench rule: ties are wrong, fixed example-count weights, unweighted section mean', (t) => {
  const data = [
    ...rows('alpacaeval-easy', 3, 1, 0), // 0.75 (the tie is wrong)
    ...rows('mt-bench-med', 1, 0, 1),    // 0.5
    ...rows('llmbar-natural', 4, 0, 1),  // 0.8
    ...rows('math-prm', 1, 0, 3),        // 0.25
    ...rows('hep-go', 2, 0, 0),          // 1
    ...rows('hep-rust', 1, 1, 0),        // 0.5
    ...rows('prior-set', 1, 0, 0),       // outside every section
  ];
  const r = rewardBenchScore(data);
  t.is(r.subsets['alpacaeval-easy'], 0.75);
  t.is(r.subsets['hep-rust'], 0.5);
  t.is(r.subsets['prior-set'], 1);
  t.deepEqual(r.unknownSubsets, ['prior-set']);
  // By hand: Chat = (0.75*100 + 0.5*40) / 140 = 95/140
  t.true(Math.abs(r.sections['Chat']! - 95 / 140) < 1e-12);
  // Chat Hard = 0.8 (one subset present)
  t.true(Math.abs(r.sections['Chat Hard']! - 0.8) < 1e-12);
  // Reasoning = (0.25*984 + 1*164 + 0.5*164) / (984 + 328) = 492 / 1312
  t.true(Math.abs(r.sections['Reasoning']! - 492 / 1312) < 1e-12);
  t.false('Safety' in r.sections);
  t.true(Math.abs(r.overall - (95 / 140 + 0.8 + 492 / 1312) / 3) < 1e-12);
});

test('RewardBench rule: math-prm weighs as much as all six hep subsets', (t) => {
  const data = [...rows('math-prm', 0, 0, 5)];
  for (const l of ['cpp', 'go', 'java', 'js', 'python', 'rust']) data.push(...rows(`hep-${l}`, 3, 0, 0));
  const r = rewardBenchScore(data);
  t.true(Math.abs(r.sections['Reasoning']! - 0.5) < 1e-12);
  t.throws(() => rewardBenchScore([{ subset: 'x', chosen: NaN, rejected: 0 }]), { message: /scores must be finite/ });
});

const dir = sharedDataDir();
const llmbar = dir && existsSync(join(dir, 'llmbar', 'Natural.json')) ? join(dir, 'llmbar') : null;
const maybe = llmbar ? test : test.skip;

maybe('loadLlmbar reads the five shipped files into the llmbar-* subsets with the right side chosen', async (t) => {
  const r = loadLlmbar(llmbar!);
  const counts: Record<string, number> = {};
  for (const row of r) counts[row.subset] = (counts[row.subset] ?? 0) + 1;
  t.deepEqual(counts, {
    'llmbar-natural': 100,
    'llmbar-adver-neighbor': 134,
    'llmbar-adver-GPTInst': 92,
    'llmbar-adver-GPTOut': 47,
    'llmbar-adver-manual': 46,
  });
  // check the label mapping against the raw file
  const { readFileSync } = await import('node:fs');
  const raw = JSON.parse(readFileSync(join(llmbar!, 'Natural.json'), 'utf8')) as { input: string; output_1: string; output_2: string; label: number }[];
  const natural = r.filter((x) => x.subset === 'llmbar-natural');
  raw.forEach((item, i) => {
    t.is(natural[i]!.prompt, item.input);
    t.is(natural[i]!.chosen, item.label === 1 ? item.output_1 : item.output_2);
    t.is(natural[i]!.rejected, item.label === 1 ? item.output_2 : item.output_1);
  });
  // a judge that always prefers output_1 gets the share of label-1 items right
  const byOutput1 = r.map((x) => ({ subset: x.subset, chosen: 0, rejected: 0 }));
  t.is(rewardBenchScore(byOutput1).sections['Chat Hard'], 0);
});
