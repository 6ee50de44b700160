/**
 * Issue 12 items 12-13 for rloo (the run folder in core, shared with sft): a folder another live
 * process holds is refused naming its PID; a non-empty folder of another kind is refused; a run
 * leaves no lock behind.
 */
import test from 'ava';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError, openRunFolder } from '@qrlhf/core';
import { runRloo } from '../src/index.js';
import { smallConfig, stubReward, tmp, writePrompts, writeTinyPolicy } from './fixture.js';

let policy: string;
let prompts: string;
test.before(async () => {
  policy = await writeTinyPolicy(join(tmp('rfpol'), 'policy'));
  prompts = writePrompts(join(tmp('rfpr'), 'prompts.jsonl'), 8);
});

test('rloo refuses a folder held by a live process, and one of another kind; its own run leaves no lock', async (t) => {
  const out = join(tmp('rf'), 'run');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, '.lock'), `${process.ppid}\n`); // alive: the parent of this test process
  const e = await t.throwsAsync(runRloo(smallConfig({ policy, prompts, out, steps: 1 }), { reward: stubReward(), quiet: true }), { instanceOf: QrlhfError });
  t.is(e!.message, `${out}: another run (PID ${process.ppid}) is writing into this folder; wait for it to end or choose another --out`);
  writeFileSync(join(out, '.lock'), '999999999\n'); // no such process: stale
  const r = await runRloo(smallConfig({ policy, prompts, out, steps: 1 }), { reward: stubReward(), quiet: true });
  t.is(r.steps, 1);
  t.false(existsSync(join(out, '.lock')));

  const sft = join(tmp('rf'), 'sft');
  openRunFolder(sft, 'sft').release();
  const e2 = await t.throwsAsync(runRloo(smallConfig({ policy, prompts, out: sft, steps: 1 }), { reward: stubReward(), quiet: true }), { instanceOf: QrlhfError });
  t.is(e2!.message, `${sft}: the folder holds a sft run, not a rloo run; choose another --out`);
});
