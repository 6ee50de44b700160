import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdamW, QrlhfError, Rng, disposeTrainingState, loadTrainingState, repoRoot, saveTrainingState, type TrainingState } from '@qrlhf/core';
import { checkpointTensors } from './state.fixture.js';

const here = dirname(fileURLToPath(import.meta.url));
const tmp = () => mkdtempSync(join(tmpdir(), 'qrlhf-state-'));

function bits(t: tf.Tensor): Uint8Array {
  const d = t.dataSync() as Float32Array | Int32Array;
  return new Uint8Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
}

test.serial('no checkpoint yet: null for a missing directory and for an empty one', (t) => {
  const d = tmp();
  t.is(loadTrainingState(join(d, 'absent')), null);
  t.is(loadTrainingState(d), null);
});

test.serial('a saved state loads back bit for bit, rng and extra included, and the rng continues the same stream', async (t) => {
  const d = join(tmp(), 'ckpt');
  const rng = new Rng(5);
  const w = tf.variable(tf.randomNormal([17, 9], 0, 1, 'float32', rng.seed32()));
  const b = tf.variable(tf.tensor([Number.NaN, -0, Infinity, 1e-45, -3.4e38]));
  const opt = new AdamW({ w, b }, { lr: 1e-3, weightDecay: 0.1 });
  opt.step({ w: tf.onesLike(w), b: tf.tensor([1, 2, 3, 4, 5]) });
  opt.step({ w: tf.randomNormal([17, 9], 0, 1, 'float32', 3), b: tf.tensor([1, 2, 3, 4, 5]) });
  for (let i = 0; i < 37; i++) rng.next();
  const extra = { epoch: 1, position: 1234, order: [3, 1, 2], nested: { s: 'é', ok: true, nothing: null } };
  const s: TrainingState = { step: 2, variables: { w, b, ids: tf.tensor([7, -8], [2], 'int32') }, optimizer: opt.getState(), rng: rng.state(), extra };
  await saveTrainingState(d, s);
  const before = tf.memory().numTensors;
  const got = loadTrainingState(d)!;
  t.not(got, null);
  t.is(got.step, 2);
  t.is(got.optimizer.step, 2);
  t.deepEqual(got.extra, extra);
  t.deepEqual(Object.keys(got.variables).sort(), ['b', 'ids', 'w']);
  for (const k of ['w', 'b', 'ids'] as const) {
    t.deepEqual(got.variables[k]!.shape, s.variables[k]!.shape);
    t.is(got.variables[k]!.dtype, s.variables[k]!.dtype);
    t.deepEqual(bits(got.variables[k]!), bits(s.variables[k]!), k);
  }
  t.deepEqual(Object.keys(got.optimizer.tensors).sort(), ['m.b', 'm.w', 'v.b', 'v.w']);
  for (const [k, x] of Object.entries(s.optimizer.tensors)) t.deepEqual(bits(got.optimizer.tensors[k]!), bits(x), k);
  const r2 = new Rng('x', got.rng);
  const expected = Array.from({ length: 5 }, () => rng.next());
  t.deepEqual(Array.from({ length: 5 }, () => r2.next()), expected);
  disposeTrainingState(got);
  t.is(tf.memory().numTensors, before);
  // overwrite: the newer checkpoint replaces the older and leaves one tensor file
  await saveTrainingState(d, { ...s, step: 3 });
  t.is(loadTrainingState(d)!.step, 3);
  t.is(readdirSync(d).filter((f) => f.endsWith('.safetensors')).length, 1);
});

test.serial('damaged checkpoints are QrlhfErrors naming the file', async (t) => {
  const d = tmp();
  await saveTrainingState(d, { step: 1, variables: { a: tf.ones([3]) }, optimizer: { step: 1, tensors: {} }, rng: new Rng(1).state(), extra: {} });
  const statePath = join(d, 'state.json');
  const good = readFileSync(statePath, 'utf8');
  const meta = JSON.parse(good) as Record<string, unknown>;
  const tfile = join(d, meta['tensorFile'] as string);
  const tbytes = readFileSync(tfile);
  writeFileSync(tfile, tbytes.subarray(0, tbytes.length - 4));
  t.throws(() => loadTrainingState(d), { instanceOf: QrlhfError, message: /corrupt checkpoint tensor file/ });
  writeFileSync(tfile, tbytes);
  writeFileSync(statePath, good.slice(0, 20));
  t.throws(() => loadTrainingState(d), { instanceOf: QrlhfError, message: /state\.json: not valid JSON/ });
  writeFileSync(statePath, JSON.stringify({ ...meta, step: -1 }));
  t.throws(() => loadTrainingState(d), { instanceOf: QrlhfError, message: /field "step": expected an integer >= 0, got -1/ });
  writeFileSync(statePath, JSON.stringify({ ...meta, rng: { i: 0 } }));
  t.throws(() => loadTrainingState(d), { instanceOf: QrlhfError, message: /field "rng"/ });
  writeFileSync(statePath, JSON.stringify({ ...meta, tensorFile: 'gone.safetensors' }));
  t.throws(() => loadTrainingState(d), { instanceOf: QrlhfError, message: /gone\.safetensors, which is missing/ });
  await t.throwsAsync(
    () => saveTrainingState(d, { step: 2, variables: {}, optimizer: { step: 0, tensors: {} }, rng: new Rng(1).state(), extra: { big: 10n } }),
    { instanceOf: QrlhfError, message: /not JSON-serialisable/ },
  );
});

function checkComplete(t: import('ava').ExecutionContext, s: TrainingState): void {
  const k = s.step;
  t.is(s.optimizer.step, k);
  t.deepEqual(s.extra, { k, note: `checkpoint ${k}` });
  const ref = checkpointTensors(k);
  for (const [name, x] of Object.entries(ref.variables)) t.deepEqual(bits(s.variables[name]!), bits(x), `step ${k} ${name}`);
  for (const [name, x] of Object.entries(ref.optimizer)) t.deepEqual(bits(s.optimizer.tensors[name]!), bits(x), `step ${k} ${name}`);
  const r = new Rng('sigkill');
  for (let i = 0; i < k; i++) r.next();
  t.deepEqual(s.rng, r.state());
  for (const x of [...Object.values(ref.variables), ...Object.values(ref.optimizer)]) x.dispose();
}

/** Runs the saving child until it has reported `minSaves` saves, waits a random time, SIGKILLs it. */
function runAndKill(dir: string, start: number, delayMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=source', '--import=tsx', join(here, 'state.child.ts'), dir, String(start)], {
      cwd: repoRoot(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let lastSaved = -1;
    let out = '';
    let err = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const m = [...out.matchAll(/saved (\d+)\n/g)];
      if (m.length) lastSaved = Number(m[m.length - 1]![1]);
      if (!timer && lastSaved >= 0) timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
    });
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('exit', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`child ended with ${code ?? signal}: ${err}`));
      else resolve(lastSaved);
    });
  });
}

test.serial('a checkpointing process SIGKILLed at random moments always leaves a complete checkpoint', async (t) => {
  t.timeout(120_000);
  const dir = join(tmp(), 'ckpt');
  const pick = new Rng(Date.now());
  let start = 0;
  for (let round = 0; round < 6; round++) {
    const delay = pick.int(250);
    const lastReported = await runAndKill(dir, start, delay);
    const s = loadTrainingState(dir);
    t.not(s, null);
    // the loaded checkpoint is the last reported save or the one after (saved, killed before the report)
    t.true(s!.step === lastReported || s!.step === lastReported + 1, `round ${round}: loaded ${s!.step}, last reported ${lastReported}`);
    t.true(s!.step >= start);
    checkComplete(t, s!);
    t.log(`round ${round}: killed after ${delay} ms, at step ${s!.step} (${s!.step - start + 1} saves this round)`);
    disposeTrainingState(s!);
    start = s!.step + 1; // resume like a training loop would
  }
  t.true(existsSync(join(dir, 'state.json')));
});
