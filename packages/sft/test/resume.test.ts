/**
 * A run killed with SIGKILL (at a step, and at a random instant) and resumed ends with the same
 * adapter as an uninterrupted run with the same seed, and with the same metrics.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensors, repoRoot } from '@qrlhf/core';
import { readMetrics, runSft, loadSftConfig } from '../src/index.js';
import { hhRows, tinyConfig, tmp, writeJsonl, writeTinyModel } from './fixture.js';

const here = dirname(fileURLToPath(import.meta.url));

interface Child { done: Promise<{ code: number | null; signal: string | null; out: string; err: string }>; kill: () => void }

/** Runs the child; once `killWhen(stdout so far)` is true, SIGKILL after `delayMs`. */
function runChild(config: string, resume: boolean, killWhen: (out: string) => boolean = () => false, delayMs = 0): Child {
  const p = spawn(process.execPath, ['--import=tsx', '--conditions=source', join(here, 'resume.child.ts'), config, resume ? 'resume' : ''], {
    cwd: repoRoot(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const kill = () => p.kill('SIGKILL');
  let timer: NodeJS.Timeout | undefined;
  p.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    if (timer === undefined && killWhen(out)) timer = setTimeout(kill, delayMs);
  });
  p.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const done = new Promise<{ code: number | null; signal: string | null; out: string; err: string }>((res) =>
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      res({ code, signal, out, err });
    }),
  );
  return { done, kill };
}

test('SIGKILL at any point then --resume ends with the same adapter as an uninterrupted run', async (t) => {
  const d = tmp('resume');
  const model = await writeTinyModel(join(d, 'model'));
  const data = writeJsonl(join(d, 'data.jsonl'), hhRows(12));
  // dropout on: the Rng state must come back exactly, too
  const base = tinyConfig({ model, data, out: '', maxSteps: 8, checkpointEvery: 2, evalEvery: 4, loraDropout: 0.2, samples: 0 });
  const refCfg = { ...base, out: join(d, 'ref') };
  const config = join(d, 'killed.json');
  writeFileSync(config, JSON.stringify({ ...base, out: join(d, 'killed') }));

  // uninterrupted reference, in this process (same code, same cpu backend)
  await runSft(refCfg, { quiet: true });

  // 1: killed right after step 3 is reported (between the checkpoints of steps 2 and 4)
  const a = await runChild(config, false, (out) => out.includes('step 3\n')).done;
  t.is(a.signal, 'SIGKILL', a.err);
  // 2: resumed (from the step-2 checkpoint), killed at a random instant after a random later step:
  // inside the next step, an evaluation or a checkpoint write
  const k = 4 + Math.floor(Math.random() * 4);
  const ms = Math.floor(Math.random() * 400);
  const b = await runChild(config, true, (out) => out.includes(`step ${k}\n`), ms).done;
  t.true(b.out.startsWith('step 3\n'), `the first resume continues after the step-2 checkpoint: ${JSON.stringify(b.out)}`);
  t.log(`second kill ${ms} ms after step ${k}: ${b.signal ?? `exit ${b.code}`}, last report ${JSON.stringify(b.out.trim().split('\n').at(-1))}`);
  // 3: resumed to the end
  const c = await runChild(config, true).done;
  t.is(c.code, 0, c.err);
  t.true(c.out.endsWith('done\n'));

  const killedCfg = loadSftConfig(config);
  const ref = readSafetensors(join(refCfg.out, 'adapter', 'adapter_model.safetensors')).tensors;
  const got = readSafetensors(join(killedCfg.out, 'adapter', 'adapter_model.safetensors')).tensors;
  t.deepEqual(Object.keys(got).sort(), Object.keys(ref).sort());
  let maxDiff = 0;
  for (const [k, r] of Object.entries(ref)) {
    const g = got[k]!;
    t.deepEqual(g.shape, r.shape);
    for (let i = 0; i < r.data.length; i++) maxDiff = Math.max(maxDiff, Math.abs((g.data[i] as number) - (r.data[i] as number)));
  }
  t.true(maxDiff <= 1e-6, `max |adapter difference| ${maxDiff}`);
  // the B matrices moved away from their zero init, so the comparison is not trivially true
  const moved = Object.entries(ref).filter(([k]) => k.includes('lora_B')).some(([, r]) => r.data.some((x) => x !== 0));
  t.true(moved);

  // the metrics tell the same story: one row per step and eval, the same losses
  const strip = (rows: ReturnType<typeof readMetrics>) =>
    rows.map((r) => ({ step: r['step'], loss: r['train/loss'], eval_loss: r['eval/loss'], lr: r['train/lr'], grad_norm: r['train/grad_norm'] }));
  t.deepEqual(strip(readMetrics(killedCfg.out)), strip(readMetrics(refCfg.out)));
});
