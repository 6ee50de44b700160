/**
 * Kill and resume: a run SIGKILLed mid-way and restarted with resume ends with the same adapter
 * (byte for byte), the same metrics and the same samples as an uninterrupted run.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmp, writePrompts, writeTinyPolicy } from './fixture.js';

const CHILD = fileURLToPath(new URL('./resume.child.ts', import.meta.url));
const STEPS = 6;

/** Runs the child; with killAfter, SIGKILLs it a moment after it reports that step. Resolves with the last step it reported. */
function runChild(args: string[], killAfter?: number, delayMs = 0): Promise<{ last: number; killed: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=source', '--import=tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let last = 0;
    let err = '';
    let timer: NodeJS.Timeout | null = null;
    child.stdout.on('data', (d: Buffer) => {
      for (const m of d.toString().matchAll(/step (\d+)/g)) last = Number(m[1]);
      if (killAfter !== undefined && last >= killAfter && !timer) timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve({ last, killed: true });
      else if (code === 0) resolve({ last, killed: false });
      else reject(new Error(`child exited with ${code ?? signal}: ${err}`));
    });
  });
}

const withoutTime = (file: string) =>
  readFileSync(file, 'utf8').trim().split('\n').map((l) => {
    const o = JSON.parse(l) as Record<string, unknown>;
    delete o['time/step_s'];
    return o;
  });

test('SIGKILL mid-run, then resume: the same final adapter, metrics and samples as an uninterrupted run', async (t) => {
  const dir = tmp('resume');
  const policy = await writeTinyPolicy(join(dir, 'policy'));
  const prompts = writePrompts(join(dir, 'prompts.jsonl'), 8);
  const full = join(dir, 'full');
  const cut = join(dir, 'cut');
  const a = await runChild([policy, prompts, full, String(STEPS), '0']);
  t.is(a.last, STEPS);
  // killed after step 3 (its checkpoint is at step 2): the resumed run redoes step 3
  const k = await runChild([policy, prompts, cut, String(STEPS), '0'], 3, 30);
  t.true(k.killed, 'the child finished before it was killed');
  t.true(k.last >= 3 && k.last < STEPS, `killed after step ${k.last}`);
  const b = await runChild([policy, prompts, cut, String(STEPS), '1']);
  t.is(b.last, STEPS);
  const adapterA = readFileSync(join(full, 'adapter', 'adapter_model.safetensors'));
  const adapterB = readFileSync(join(cut, 'adapter', 'adapter_model.safetensors'));
  t.true(adapterA.equals(adapterB), 'the adapters differ');
  t.deepEqual(withoutTime(join(cut, 'metrics.jsonl')), withoutTime(join(full, 'metrics.jsonl')));
  t.deepEqual(withoutTime(join(cut, 'samples.jsonl')), withoutTime(join(full, 'samples.jsonl')));
  t.log(`killed after step ${k.last}; resumed from the step-${Math.floor(k.last / 2) * 2} checkpoint; adapters identical (${adapterA.length} bytes)`);
});
