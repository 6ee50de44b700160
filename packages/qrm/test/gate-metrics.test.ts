import test from 'ava';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, defaultConfig, readMetricsFile, writeSafetensors } from '@qrlhf/core';
import { QRM_GATE_SCHEMA, runQrmGate, saveHeads } from '@qrlhf/qrm';

/**
 * `qrm gate --metrics FILE` writes its rows under core's metric names (track/names.ts), as every
 * other stage does: tiny heads and pairs files written directly, a 2-pass run with held-out pairs.
 */
test('qrm gate --metrics rows carry only namespaced names besides step; eval/… on each pass end', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'qrlhf-gate-metrics-'));
  const M = 2, K = 3, d = 4, n = 20;
  const rng = new Rng(5);
  const weight = Float32Array.from({ length: M * K * d }, () => rng.normal() * 0.5);
  const bias = Float32Array.from({ length: M * K }, (_, i) => 0.1 * (i % K));
  saveHeads(join(dir, 'heads.safetensors'), { weight, bias, taus: Float32Array.from([0.25, 0.5, 0.75]), attributes: ['helpfulness', 'verbosity'], d });
  const emb = Float32Array.from({ length: n * 2 * d }, () => rng.normal());
  const prompt = Float32Array.from({ length: n * 2 * d }, () => rng.normal());
  writeSafetensors(join(dir, 'pairs.safetensors'), {
    embeddings: { dtype: 'F32', shape: [n, 2, d], data: emb },
    prompt_embeddings: { dtype: 'F32', shape: [n, 2, d], data: prompt },
  });
  const metrics = join(dir, 'logs', 'gate-metrics.jsonl');
  const batchSize = 4;
  const r = await runQrmGate({
    ...defaultConfig(QRM_GATE_SCHEMA), heads: dir, pairs: join(dir, 'pairs.safetensors'), out: join(dir, 'qrm'), metrics,
    verbosity: 'none', hidden: 8, layers: 1, epochs: 2, batchSize, valFraction: 0.25, backend: 'cpu',
  }, { quiet: true });

  const raw = readFileSync(metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
  const perPass = Math.ceil(r.nTrain / batchSize);
  t.is(r.nTrain + r.nVal, n);
  t.is(raw.length, 2 * perPass, 'one row per optimiser step');
  const trainKeys = ['step', 'train/epoch', 'train/loss', 'train/accuracy', 'train/lr', 'train/grad_norm', 'gate/beta'];
  raw.forEach((row, i) => {
    const passEnd = (i + 1) % perPass === 0;
    t.deepEqual(Object.keys(row), passEnd ? [...trainKeys, 'eval/loss', 'eval/accuracy'] : trainKeys, `row ${i + 1}`);
    t.is(row['step'], i + 1);
    // passes done: the pass index plus the share of this pass's training pairs seen (1, 2 at the pass ends)
    const pass = Math.floor(i / perPass);
    t.is(row['train/epoch'], pass + Math.min(r.nTrain, ((i % perPass) + 1) * batchSize) / r.nTrain);
    t.true(row['train/accuracy']! >= 0 && row['train/accuracy']! <= 1);
    t.true(Number.isFinite(row['train/grad_norm']) && row['train/grad_norm']! > 0, `grad norm ${row['train/grad_norm']}`);
  });
  t.is(raw[perPass - 1]!['train/epoch'], 1);
  t.is(raw.at(-1)!['train/epoch'], 2);
  t.is(raw[0]!['train/lr'], defaultConfig(QRM_GATE_SCHEMA).lr, 'the cosine starts at the peak (no warm-up)');
  // the last row's held-out values are those the run returns (the same gate, evaluated after the last step)
  t.is(raw.at(-1)!['eval/loss'], r.training.valLoss);
  t.is(raw.at(-1)!['eval/accuracy'], r.training.valAccuracy);
  // core's reader returns today's rows unchanged
  t.deepEqual(readMetricsFile(metrics), raw);
});
