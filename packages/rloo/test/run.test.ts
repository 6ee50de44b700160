import test from 'ava';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { loadModel, loadLoraAdapter, type Metrics } from '@qrlhf/core';
import { readRlooMetrics, runRloo, type RlooBatchItem } from '../src/index.js';
import { TAUS, smallConfig, stubQuantiles, stubReward, tmp, writePrompts, writeTinyPolicy } from './fixture.js';

const dir = tmp('run');
const policyP = writeTinyPolicy(join(dir, 'policy'));
const promptsPath = writePrompts(join(dir, 'prompts.jsonl'), 10, { hh: 3, long: 2 });

test('runRloo writes the run folder: config, one metrics line per step with the SPEC §6 keys, samples, checkpoint, PEFT adapter', async (t) => {
  const policy = await policyP;
  const out = join(dir, 'out-basic');
  const seen: RlooBatchItem[][] = [];
  const r = await runRloo(smallConfig({ policy, prompts: promptsPath, out, steps: 3, sampleEvery: 2 }), {
    reward: stubReward(),
    quiet: true,
    extraMetrics: (items) => {
      seen.push(items);
      return { 'truth/q0.10': items.reduce((s, x) => s + x.quantiles[0]!, 0) / items.length };
    },
  });
  t.deepEqual(r.prompts, { read: 15, filtered: 2, used: 13 });
  t.is(r.steps, 3);
  const rows = readRlooMetrics(out);
  t.deepEqual(rows.map((m) => m['step']), [1, 2, 3]);
  const keys = [
    'step', ...TAUS.map((x) => `reward/q${x.toFixed(2)}`), 'reward/expectation', 'objective/utility', 'objective/kl', 'objective/rlhf_reward',
    'objective/advantage_abs', 'policy/entropy', 'policy/response_length', 'policy/eos_rate', 'train/loss', 'train/grad_norm', 'train/lr',
    'time/step_s', 'data/filtered_prompts', 'truth/q0.10',
  ];
  // exactly these names (no flat leftovers); no ppo/ keys without PPO epochs
  for (const row of rows) t.deepEqual(Object.keys(row).sort(), [...keys].sort());
  for (const row of rows) for (const k of keys) t.is(typeof row[k], 'number', `key ${k}`);
  // the file itself holds the new names (readRlooMetrics would upgrade old ones)
  t.true(readFileSync(join(out, 'metrics.jsonl'), 'utf8').includes('"objective/kl":'));
  rows.forEach((row, i) => {
    const items = seen[i]!;
    t.is(items.length, 3 * 2);
    // the logged quantile means and expectation are those of the scored responses
    const q1 = items.reduce((s, x) => s + stubQuantiles(x.response)[0]!, 0) / items.length;
    t.true(Math.abs((row['reward/q0.10'] as number) - q1) < 1e-6);
    t.is(row['truth/q0.10'], row['reward/q0.10']);
    const e = items.reduce((s, x) => s + stubQuantiles(x.response).reduce((a, b) => a + b, 0) / TAUS.length, 0) / items.length;
    t.true(Math.abs((row['reward/expectation'] as number) - e) < 1e-6);
    t.is(row['data/filtered_prompts'], 2);
    t.is(row['train/lr'], 1e-2);
    // at step 1 the adapter is B = 0: the policy is the reference, KL exactly 0
    if (i === 0) t.is(row['objective/kl'], 0);
  });
  t.true((rows[2]!['objective/kl'] as number) !== 0);
  const samples = readFileSync(join(out, 'samples.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.deepEqual(samples.map((s) => s['step']), [1, 1, 2, 2]);
  t.deepEqual(Object.keys(samples[0]!['quantiles'] as object), TAUS.map((x) => `q${x.toFixed(2)}`));
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  t.is(cfg['policy'], policy);
  t.true(existsSync(join(out, 'checkpoints', 'state.json')));
  // the adapter loads back onto the policy (PEFT layout)
  const { model } = await loadModel(policy);
  const a = loadLoraAdapter(r.adapterDir, model);
  t.is(a.config.r, 4);
  t.true(Object.keys(a.variables).every((k) => /^base_model\.model\.model\.layers\.\d\.self_attn\.[qv]_proj\.lora_[AB]\.weight$/.test(k)));
  model.dispose();
  // a second run into the same folder without --resume is refused
  await t.throwsAsync(runRloo(smallConfig({ policy, prompts: promptsPath, out }), { reward: stubReward(), quiet: true }), { message: /--resume/ });
});

test('a custom utility module changes the logged utility exactly as its code says', async (t) => {
  const policy = await policyP;
  const mod = join(dir, 'my-utility.mjs');
  // a deliberately odd utility: 3 q_1 - 2 q_K + tau_2, plus 10 when the spread is below 0.5
  writeFileSync(mod, 'export default function (q, taus) { const s = 3 * q[0] - 2 * q[q.length - 1] + taus[1]; return q[q.length - 1] - q[0] < 0.5 ? s + 10 : s; }\n');
  const mine = (q: Float32Array) => {
    const s = 3 * q[0]! - 2 * q[q.length - 1]! + Math.fround(TAUS[1]!);
    return q[q.length - 1]! - q[0]! < 0.5 ? s + 10 : s;
  };
  const logs: Record<string, Metrics[]> = {};
  const expected: Record<string, number[]> = {};
  for (const utility of [mod, 'expectation']) {
    const out = join(dir, `out-util-${utility === mod ? 'custom' : 'exp'}`);
    expected[utility] = [];
    await runRloo(smallConfig({ policy, prompts: promptsPath, out, steps: 3, utility }), {
      reward: stubReward(),
      quiet: true,
      extraMetrics: (items) => {
        const f = utility === mod ? mine : (q: Float32Array) => q.reduce((a, b) => a + b, 0) / q.length;
        expected[utility]!.push(items.reduce((s, x) => s + f(x.quantiles), 0) / items.length);
        return {};
      },
    });
    logs[utility] = readRlooMetrics(out);
  }
  for (const u of [mod, 'expectation']) {
    logs[u]!.forEach((row, i) => t.true(Math.abs((row['objective/utility'] as number) - expected[u]![i]!) < 1e-9, `${u} step ${i + 1}: ${row['objective/utility']} vs ${expected[u]![i]}`));
  }
  // same seed, same first batch: only the utility differs
  t.is(logs[mod]![0]!['reward/expectation'], logs['expectation']![0]!['reward/expectation']);
  t.not(logs[mod]![0]!['objective/utility'], logs['expectation']![0]!['objective/utility']);
});

test('tf.memory().numTensors does not grow over 50 steps (k = 3, 2 PPO epochs, LoRA dropout, checkpoints, samples)', async (t) => {
  const policy = await policyP;
  const counts: number[] = [];
  const rows: Metrics[] = [];
  const short = join(dir, 'short.jsonl');
  writeFileSync(short, ['hi', 'tea?', 'moss'].map((p) => JSON.stringify({ prompt: p })).join('\n') + '\n');
  await runRloo(
    smallConfig({ policy, prompts: short, out: join(dir, 'out-mem'), steps: 50, k: 3, batchSize: 1, ppoEpochs: 2, loraDropout: 0.1, maxNewTokens: 3, checkpointEvery: 7, sampleEvery: 5 }),
    { reward: stubReward(), quiet: true, onStep: () => counts.push(tf.memory().numTensors), onMetrics: (r) => rows.push(r) },
  );
  t.is(counts.length, 50);
  // PPO epochs log their diagnostics: a share in [0, 1] and a k3 estimate >= 0 up to rounding (its values are checked in objective.test.ts)
  t.true(rows.length > 0);
  for (const r of rows) {
    const c = r['ppo/clipfrac'] as number;
    t.true(c >= 0 && c <= 1, `ppo/clipfrac ${c}`);
    t.true((r['ppo/approx_kl'] as number) > -1e-6, `ppo/approx_kl ${r['ppo/approx_kl']}`); // float32 rounding near ratio 1
  }
  t.log(`numTensors after steps 1, 2, 25, 50: ${counts[0]}, ${counts[1]}, ${counts[24]}, ${counts[49]}`);
  t.is(counts[49], counts[1]);
  t.true(counts.every((c) => c === counts[1]));
});
