import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LEGACY_METRIC_NAMES, quantileMetric, readMetricsFile, readRunMetrics, upgradeMetricName, upgradeMetricRow } from '../src/index.js';

// Rows exactly as the flat-name code wrote them (rloo step row with figure3's truth; sft train and eval rows).
const OLD_RLOO = {
  step: 3, 'q0.05': 0.1, 'q0.10': 0.2, expectation: 0.5, utility: -0.7, kl: 0.01, entropy: 2.5, response_length: 7, eos_rate: 0.5,
  reward: -0.72, advantage_abs: 0.3, loss: 0.04, grad_norm: 1.5, lr: 1e-3, step_time_s: 0.8, filtered_prompts: 2, 'true/q0.05': 0.11, 'true/expectation': 0.52,
};
const NEW_RLOO = {
  step: 3, 'reward/q0.05': 0.1, 'reward/q0.10': 0.2, 'reward/expectation': 0.5, 'objective/utility': -0.7, 'objective/kl': 0.01, 'policy/entropy': 2.5,
  'policy/response_length': 7, 'policy/eos_rate': 0.5, 'objective/rlhf_reward': -0.72, 'objective/advantage_abs': 0.3, 'train/loss': 0.04,
  'train/grad_norm': 1.5, 'train/lr': 1e-3, 'time/step_s': 0.8, 'data/filtered_prompts': 2, 'truth/q0.05': 0.11, 'truth/expectation': 0.52,
};
const OLD_SFT_EVAL = { step: 0, split: 'eval', loss: 2.3, lr: 1e-4, eval_loss: 2.3, token_accuracy: 0.4, eval_tokens: 90 };
const OLD_SFT_TRAIN = { step: 1, loss: 2.2, lr: 1e-4, grad_norm: 0.9, tokens_per_s: 1000, epoch: 0.25 };

test('old flat names map to the namespaced ones, key by key, values untouched', (t) => {
  t.deepEqual(upgradeMetricRow(OLD_RLOO), NEW_RLOO);
  t.deepEqual(upgradeMetricRow(OLD_SFT_TRAIN), { step: 1, 'train/loss': 2.2, 'train/lr': 1e-4, 'train/grad_norm': 0.9, 'time/tokens_per_s': 1000, 'train/epoch': 0.25 });
  // an old SFT evaluation row reused `loss` for the held-out loss: it becomes eval/loss, never train/loss
  const ev = upgradeMetricRow(OLD_SFT_EVAL);
  t.deepEqual(ev, { step: 0, split: 'eval', 'eval/loss': 2.3, 'train/lr': 1e-4, 'eval/token_accuracy': 0.4, 'eval/tokens': 90 });
  t.false('train/loss' in ev);
});

test('rows already in the new names, step and unknown keys pass unchanged; the table has no cycles', (t) => {
  t.deepEqual(upgradeMetricRow(NEW_RLOO), NEW_RLOO);
  t.deepEqual(upgradeMetricRow({ step: 1, custom_thing: 3, 'my/metric': 4 }), { step: 1, custom_thing: 3, 'my/metric': 4 });
  for (const [oldName, newName] of Object.entries(LEGACY_METRIC_NAMES)) {
    t.true(newName.includes('/'), newName);
    t.is(upgradeMetricName(newName), newName, `${oldName} → ${newName} is final`);
  }
  t.is(upgradeMetricName('q0.25'), 'reward/q0.25');
  t.is(upgradeMetricName('true/q0.25'), 'truth/q0.25');
  t.is(quantileMetric('reward', 0.05), 'reward/q0.05');
  t.is(quantileMetric('truth', 0.1), 'truth/q0.10');
});

test('readMetricsFile returns an old-layout metrics.jsonl under the new names (and a mixed file from a resumed old run)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-names-'));
  writeFileSync(join(dir, 'metrics.jsonl'), [OLD_RLOO, { ...NEW_RLOO, step: 4 }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const rows = readMetricsFile(join(dir, 'metrics.jsonl'));
  t.deepEqual(rows, [NEW_RLOO, { ...NEW_RLOO, step: 4 }]);
  t.deepEqual(readRunMetrics(dir), rows);
});

// `qrm gate --metrics` rows exactly as the flat-name code wrote them ({ stage: 'gate', ...GateProgress }):
// 2 passes of 2 steps, held-out values on each pass's last step.
const OLD_GATE = [
  { stage: 'gate', epoch: 0, step: 1, totalSteps: 4, loss: 0.69, accuracy: 0.5, lr: 3e-4, beta: 1.0001 },
  { stage: 'gate', epoch: 0, step: 2, totalSteps: 4, loss: 0.6, accuracy: 0.75, lr: 2e-4, beta: 1.0002, valLoss: 0.65, valAccuracy: 0.6 },
  { stage: 'gate', epoch: 1, step: 3, totalSteps: 4, loss: 0.5, accuracy: 0.8, lr: 1e-4, beta: 1.0003 },
  { stage: 'gate', epoch: 1, step: 4, totalSteps: 4, loss: 0.4, accuracy: 0.9, lr: 0, beta: 1.0004, valLoss: 0.55, valAccuracy: 0.7 },
];

test('an old flat qrm gate metrics file reads under the namespaced names, without its bookkeeping keys', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-names-gate-'));
  const file = join(dir, 'gate-metrics.jsonl');
  writeFileSync(file, OLD_GATE.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const rows = readMetricsFile(file);
  t.deepEqual(rows[0], { step: 1, 'train/epoch': 1, 'train/loss': 0.69, 'train/accuracy': 0.5, 'train/lr': 3e-4, 'gate/beta': 1.0001 });
  // a pass's last step: train/epoch is exact there (passes done), and the held-out values are eval/…
  t.deepEqual(rows[3], { step: 4, 'train/epoch': 2, 'train/loss': 0.4, 'train/accuracy': 0.9, 'train/lr': 0, 'gate/beta': 1.0004, 'eval/loss': 0.55, 'eval/accuracy': 0.7 });
  t.deepEqual(rows.map((r) => r['train/epoch']), [1, 1, 2, 2]);
  t.deepEqual(rows.map((r) => r['eval/accuracy']), [undefined, 0.6, undefined, 0.7]);
  for (const r of rows) for (const k of Object.keys(r)) t.true(k === 'step' || k.includes('/'), `key ${k}`);
  // an SFT row's epoch (already passes done) and a row without the gate marker are not shifted
  t.is(upgradeMetricRow({ step: 1, epoch: 0.25 })['train/epoch'], 0.25);
  t.deepEqual(upgradeMetricRow({ stage: 'fit', epoch: 0, totalSteps: 3 }), { stage: 'fit', 'train/epoch': 0, totalSteps: 3 });
  // today's gate rows pass unchanged
  t.deepEqual(upgradeMetricRow(rows[3]!), rows[3]);
});
