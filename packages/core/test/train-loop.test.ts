// The training-run scaffold (core/src/train/loop.ts): gradient accumulation against a float64
// gradient, the clipped update, the loop's log/checkpoint cadence, and the run folder's restore.
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AdamW, QrlhfError, Rng, TrainingRun, accumulateGradients, applyGradients, restoreOptimizer, runTrainingLoop, type Metrics,
} from '@qrlhf/core';

const tmp = () => mkdtempSync(join(tmpdir(), 'qrlhf-loop-'));

// Least squares on a fixed data set: L = Σ_i (x_i · w + b - y_i)² / N over all N rows, the rows
// split into micro-batches of uneven size; each micro-batch's loss divided by the whole N.
const X = [[0.5, -1.2, 2.0], [1.5, 0.3, -0.7], [-0.4, 0.9, 0.1], [2.2, -0.5, 1.1], [0.0, 1.0, -1.0]];
const Y = [1.0, -0.5, 0.25, 2.0, -1.5];
const W0 = [0.3, -0.2, 0.1];
const B0 = 0.05;

function reference(): { loss: number; gw: number[]; gb: number } {
  const N = X.length;
  let loss = 0;
  const gw = [0, 0, 0];
  let gb = 0;
  X.forEach((x, i) => {
    const r = x.reduce((a, v, j) => a + v * W0[j]!, B0) - Y[i]!;
    loss += (r * r) / N;
    x.forEach((v, j) => (gw[j]! += (2 * r * v) / N));
    gb += (2 * r) / N;
  });
  return { loss, gw, gb };
}

test.serial('accumulateGradients: the sum over micro-batches is the whole batch gradient (float64 reference), keyed by the variables\' keys', async (t) => {
  const vars = { 'layer.weight': tf.variable(tf.tensor1d(W0)), 'layer.bias': tf.variable(tf.scalar(B0)) };
  const before = tf.memory().numTensors;
  const micro = [[0, 1], [2], [3, 4]];
  const seen: number[][] = [];
  const { grads, loss } = await accumulateGradients(micro, (rows) => {
    seen.push(rows);
    // the micro-batch's inputs are made under the tape and freed with it
    const x = tf.tensor2d(rows.map((i) => X[i]!));
    const y = tf.tensor1d(rows.map((i) => Y[i]!));
    const r = tf.sub(tf.add(tf.sum(tf.mul(x, vars['layer.weight']), 1), vars['layer.bias']), y);
    return tf.div(tf.sum(tf.square(r)), X.length) as tf.Scalar;
  }, vars);
  t.deepEqual(seen, micro);
  t.deepEqual(Object.keys(grads).sort(), ['layer.bias', 'layer.weight']);
  const ref = reference();
  t.true(Math.abs(loss - ref.loss) < 1e-6 * Math.max(1, ref.loss), `loss ${loss} vs ${ref.loss}`);
  const gw = Array.from(grads['layer.weight']!.dataSync());
  gw.forEach((g, j) => t.true(Math.abs(g - ref.gw[j]!) < 1e-5, `dw[${j}] ${g} vs ${ref.gw[j]}`));
  t.true(Math.abs(grads['layer.bias']!.dataSync()[0]! - ref.gb) < 1e-5);
  tf.dispose(Object.values(grads));
  t.is(tf.memory().numTensors, before, 'nothing but the returned gradients outlives the call');
  tf.dispose(Object.values(vars));
});

test.serial('applyGradients: clips to the global norm before AdamW, returns the norm before clipping, skips a non-finite one', async (t) => {
  const w = tf.variable(tf.tensor1d([1, 2]));
  const opt = new AdamW({ w }, { lr: 0.1, weightDecay: 0 });
  // ‖(3, 4)‖ = 5, clipped to 1: (0.6, 0.8). AdamW's first step moves each weight by lr · sign(g) (|m̂ / sqrt(v̂)| = 1).
  const norm = await applyGradients(opt, { w: tf.tensor1d([3, 4]) }, 0.1, 1);
  t.is(norm, 5);
  const after = Array.from(w.dataSync());
  t.true(Math.abs(after[0]! - 0.9) < 1e-6 && Math.abs(after[1]! - 1.9) < 1e-6, `${after}`);
  const before = tf.memory().numTensors;
  const bad = await applyGradients(opt, { w: tf.tensor1d([Number.NaN, 1]) }, 0.1, 0);
  t.true(Number.isNaN(bad));
  t.deepEqual(Array.from(w.dataSync()), after, 'no update from a non-finite gradient');
  t.is(opt.getState().step, 1);
  t.is(tf.memory().numTensors, before, 'the gradients are disposed');
  opt.dispose();
  w.dispose();
});

test.serial('runTrainingLoop: rows logged every logEvery and at the first and last step, after() then the checkpoint then onStep, from a resumed start', async (t) => {
  const events: string[] = [];
  const ctxs: { index: number; lastCheckpoint: number }[] = [];
  const r = await runTrainingLoop({
    start: 2,
    total: 9,
    logEvery: 3,
    step: async (ctx) => {
      ctxs.push(ctx);
      return { step: ctx.index + 1, loss: ctx.index };
    },
    log: (row: Metrics) => events.push(`log ${row['step']}`),
    progress: (s) => events.push(`bar ${s}`),
    after: (s) => void events.push(`after ${s}`),
    checkpoint: { every: 4, save: async (s) => void events.push(`ckpt ${s}`) },
    onStep: (s) => events.push(`done ${s}`),
  });
  t.deepEqual(r, { steps: 9, last: { step: 9, loss: 8 } });
  t.deepEqual(ctxs.map((c) => c.index), [2, 3, 4, 5, 6, 7, 8]);
  t.deepEqual(ctxs.map((c) => c.lastCheckpoint), [2, 2, 4, 4, 4, 4, 8]);
  t.deepEqual(events, [
    'log 3', 'after 3', 'done 3',
    'bar 4', 'after 4', 'ckpt 4', 'done 4',
    'bar 5', 'after 5', 'done 5',
    'log 6', 'after 6', 'done 6',
    'bar 7', 'after 7', 'done 7',
    'bar 8', 'after 8', 'ckpt 8', 'done 8',
    'log 9', 'after 9', 'ckpt 9', 'done 9',
  ]);
  // A run resumed at its end does nothing, and writes no checkpoint.
  const none = await runTrainingLoop({ start: 5, total: 5, logEvery: 1, step: async () => ({}), log: () => t.fail(), checkpoint: { every: 1, save: async () => t.fail() } });
  t.deepEqual(none, { steps: 5, last: null });
});

test.serial('TrainingRun: a checkpoint saved, refused without resume, restored with resume, refused when a trajectory setting changed; track() keeps rows up to the checkpoint', async (t) => {
  const out = join(tmp(), 'run');
  const trajectory = { lr: 0.01, seed: 3 };
  const run = TrainingRun.open({ out, kind: 'toy', resume: false });
  t.is(run.restore(trajectory), null);
  const rng = new Rng('3:toy');
  const w = tf.variable(tf.tensor1d([1, -2, 3]));
  const opt = new AdamW({ w }, { lr: 0.01 });
  opt.step({ w: tf.tensor1d([0.5, 0.5, -1]) }, 0.01);
  rng.next();
  const tracker = await run.track({ config: { lr: 0.01 }, start: 0, total: 4, label: 'toy', keys: ['loss'], console: false, wandbProject: null });
  for (const step of [1, 2, 3]) tracker.log({ step, loss: 1 / step });
  await tracker.close();
  await run.save(2, { variables: { w }, optimizer: opt, rng }, { position: 7 });
  run.release();
  t.deepEqual(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')), { lr: 0.01 });

  t.throws(() => TrainingRun.open({ out, kind: 'toy', resume: false }), { instanceOf: QrlhfError, message: /already has a checkpoint; pass --resume/ });
  t.throws(() => TrainingRun.open({ out, kind: 'other', resume: true }), { instanceOf: QrlhfError, message: /holds a toy run, not a other run/ });

  const again = TrainingRun.open({ out, kind: 'toy', resume: true });
  t.throws(() => again.restore({ lr: 0.02, seed: 3 }), { instanceOf: QrlhfError, message: /cannot resume: the checkpoint was made with different "lr" \(0\.01, now 0\.02\)/ });
  const state = again.restore(trajectory)!;
  t.is(state.step, 2);
  t.deepEqual(state.extra, { position: 7, config: trajectory });
  t.deepEqual(Array.from(state.variables['w']!.dataSync()), Array.from(w.dataSync()));
  t.is(new Rng(3, state.rng).next(), rng.next(), 'the Rng continues where it was saved');
  const opt2 = new AdamW({ w: tf.variable(state.variables['w']!) }, { lr: 0.01 });
  restoreOptimizer(opt2, state);
  t.is(opt2.getState().step, 1);
  t.deepEqual(Array.from(opt2.getState().tensors['m.w']!.dataSync()), Array.from(opt.getState().tensors['m.w']!.dataSync()));
  const seen: number[] = [];
  const t2 = await again.track({ config: { lr: 0.01 }, start: 2, total: 4, label: 'toy', keys: ['loss'], console: false, wandbProject: null, kept: (r) => void seen.push(r['step'] as number) });
  await t2.close();
  again.release();
  t.deepEqual(seen, [1, 2, 3]);
  const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Metrics);
  t.deepEqual(rows.map((r) => r['step']), [1, 2], "the killed run's row after the checkpoint is gone");

  // A fresh (not resumed) run clears the leftover of an interrupted first save (a tensor file, no state.json).
  const fresh = join(tmp(), 'fresh');
  const f = TrainingRun.open({ out: fresh, kind: 'toy', resume: false });
  mkdirSync(f.checkpointDir);
  writeFileSync(join(f.checkpointDir, 'tensors-1-2-ab.safetensors'), 'torn');
  t.is(f.restore(trajectory), null);
  t.false(existsSync(f.checkpointDir));
  f.release();
  opt.dispose();
  opt2.dispose();
  w.dispose();
});
