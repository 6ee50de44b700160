/**
 * Issue 12 items 11-13 for sft (the run folder in core, shared with rloo): a resume that changes a
 * setting of the optimiser or its schedule is refused naming the key; a second run into a folder
 * another live process holds is refused naming its PID, a stale lock (dead PID) is taken over; a
 * non-empty folder of another kind is refused.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError, lockRunFolder, openRunFolder } from '@qrlhf/core';
import { runSft } from '../src/index.js';
import { hhRows, tinyConfig, tmp, writeJsonl, writeTinyModel } from './fixture.js';

let model: string;
let data: string;
test.before(async () => {
  model = await writeTinyModel(join(tmp('rfmodel'), 'model'));
  data = writeJsonl(join(tmp('rfdata'), 'data.jsonl'), hhRows(6));
});

for (const [key, value] of [['lr', 5e-2], ['schedule', 'constant'], ['warmupSteps', 0], ['weightDecay', 0.1], ['maxSteps', 3]] as const) {
  test(`sft --resume with another "${key}" is refused naming the key`, async (t) => {
    const out = join(tmp('rf'), 'run');
    await runSft(tinyConfig({ model, data, out, maxSteps: 2, samples: 0 }), { quiet: true });
    const e = await t.throwsAsync(runSft(tinyConfig({ model, data, out, maxSteps: 2, samples: 0, resume: true, [key]: value }), { quiet: true }), {
      instanceOf: QrlhfError,
    });
    t.regex(e!.message, new RegExp(`cannot resume: the checkpoint was made with different "${key}"`));
    // the same settings resume (nothing left to do)
    const r = await runSft(tinyConfig({ model, data, out, maxSteps: 2, samples: 0, resume: true }), { quiet: true });
    t.is(r.resumedFrom, 2);
  });
}

test('a second run into a folder held by a live process is refused naming its PID; the lock goes with the run', async (t) => {
  const out = join(tmp('lock'), 'run');
  const release = lockRunFolder(out);
  writeFileSync(join(out, '.lock'), `${process.ppid}\n`); // the parent of this test process: alive
  const e = await t.throwsAsync(runSft(tinyConfig({ model, data, out, maxSteps: 1, samples: 0 }), { quiet: true }), { instanceOf: QrlhfError });
  t.is(e!.message, `${out}: another run (PID ${process.ppid}) is writing into this folder; wait for it to end or choose another --out`);
  t.false(existsSync(join(out, 'metrics.jsonl')));
  release(); // not ours any more: left alone
  t.true(existsSync(join(out, '.lock')));
  writeFileSync(join(out, '.lock'), `${process.pid}\n`);
  release();
  // a finished run leaves no lock behind
  await runSft(tinyConfig({ model, data, out, maxSteps: 1, samples: 0 }), { quiet: true });
  t.false(existsSync(join(out, '.lock')));
});

test('a stale lock (its PID is gone) is taken over', async (t) => {
  const out = join(tmp('stale'), 'run');
  mkdirSync(out, { recursive: true });
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  writeFileSync(join(out, '.lock'), `${dead.stdout}\n`);
  const r = await runSft(tinyConfig({ model, data, out, maxSteps: 1, samples: 0 }), { quiet: true });
  t.is(r.steps, 1);
  t.false(existsSync(join(out, '.lock')));
});

test('sft refuses a non-empty folder of another kind or of no kind; its own folder is reused', async (t) => {
  const other = join(tmp('kind'), 'rl');
  openRunFolder(other, 'rloo').release();
  const e = await t.throwsAsync(runSft(tinyConfig({ model, data, out: other, maxSteps: 1, samples: 0 }), { quiet: true }), { instanceOf: QrlhfError });
  t.is(e!.message, `${other}: the folder holds a rloo run, not a sft run; choose another --out`);
  const stuff = join(tmp('kind'), 'stuff');
  mkdirSync(stuff);
  writeFileSync(join(stuff, 'notes.txt'), 'mine\n');
  const e2 = await t.throwsAsync(runSft(tinyConfig({ model, data, out: stuff, maxSteps: 1, samples: 0 }), { quiet: true }), { instanceOf: QrlhfError });
  t.regex(e2!.message, /the folder is not empty and holds no sft run/);
  t.is(readFileSync(join(stuff, 'notes.txt'), 'utf8'), 'mine\n');
  t.false(existsSync(join(stuff, '.lock')));
  const own = join(tmp('kind'), 'own');
  await runSft(tinyConfig({ model, data, out: own, maxSteps: 1, samples: 0 }), { quiet: true });
  const r = await runSft(tinyConfig({ model, data, out: own, maxSteps: 1, samples: 0, resume: true }), { quiet: true });
  t.is(r.resumedFrom, 1);
});
