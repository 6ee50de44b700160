import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tracker, WandbSink, repoRoot } from '@qrlhf/core';
import { fakeWandb, silentServer } from './wandb.fixture.js';

const here = dirname(fileURLToPath(import.meta.url));
const KEY = 'k'.repeat(40);
const tmp = () => mkdtempSync(join(tmpdir(), 'qrlhf-wandb-'));
const readRows = (p: string) =>
  readFileSync(p, 'utf8')
    .split('\n')
    .filter((l) => l)
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test('a run whose W&B server accepts and never answers ends by itself, with every JSONL line and one warning', async (t) => {
  t.timeout(90_000);
  const server = await silentServer();
  const dir = tmp();
  const timeoutMs = 1500;
  const started = Date.now();
  const result = await new Promise<{ code: number | null; out: string; err: string; killed: boolean }>((resolve) => {
    const child = spawn(process.execPath, ['--conditions=source', '--import=tsx', join(here, 'wandb.child.ts'), dir, String(timeoutMs)], {
      cwd: repoRoot(),
      env: { ...process.env, WANDB_API_KEY: KEY, WANDB_BASE_URL: server.url },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let killed = false;
    const killer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, 60_000);
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.on('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, out, err, killed });
    });
  });
  const elapsed = Date.now() - started;
  await server.close();
  t.false(result.killed, 'the child had to be killed: the run stalled');
  t.is(result.code, 0, result.err);
  t.is(result.out, 'done wandb=off\n');
  t.true(server.connections() >= 1, 'the SDK did reach the server');
  const warnings = result.err.split('\n').filter((l) => l.includes('warning'));
  t.is(warnings.length, 1, result.err);
  t.regex(warnings[0]!, /wandb disabled: init failed: no answer from http:\/\/127\.0\.0\.1:\d+ within 1\.5 s/);
  const rows = readRows(join(dir, 'metrics.jsonl'));
  t.is(rows.length, 200);
  t.deepEqual(rows[7], { step: 7, loss: 1 / 8, lr: 3e-4 });
  // bounded: the init timeout plus process start-up and slack, far from "forever"
  t.true(elapsed < timeoutMs + 30_000, `${elapsed} ms`);
  t.log(`child run with a silent W&B server ended in ${elapsed} ms (init timeout ${timeoutMs} ms)`);
});

test('without an API key no sink is made and nothing is said', async (t) => {
  delete process.env['WANDB_API_KEY'];
  const warnings: string[] = [];
  t.is(await WandbSink.create({ project: 'p', warn: (m) => warnings.push(m) }), null);
  const tr = await Tracker.create({ wandb: { project: 'p', warn: (m) => warnings.push(m) } });
  t.is(tr.wandb, null);
  t.deepEqual(warnings, []);
});

test('with a W&B server that answers, the logged rows reach its history and close ends the run', async (t) => {
  t.timeout(60_000);
  const server = await fakeWandb();
  const warnings: string[] = [];
  const sink = await WandbSink.create({ project: 'qrlhf-test', apiKey: KEY, baseUrl: server.url, timeoutMs: 20_000, warn: (m) => warnings.push(m) });
  t.teardown(() => server.close());
  if (!sink) return t.fail(warnings.join('\n'));
  const rows = Array.from({ length: 5 }, (_, step) => ({ step, loss: 2 - step / 10, note: `r${step}`, ok: step % 2 === 0 }));
  for (const r of rows) sink!.log(r);
  await sink!.close();
  t.deepEqual(warnings, []);
  t.true(server.completed(), `requests: ${server.requests.join(', ')}`);
  for (const r of rows) {
    const h = server.history.find((x) => x['step'] === r.step);
    t.truthy(h, `step ${r.step} uploaded (history ${JSON.stringify(server.history)})`);
    t.like(h!, r);
  }
});

test('an upload that hangs mid-run disables the sink after flushTimeoutMs with one warning', async (t) => {
  t.timeout(60_000);
  const server = await fakeWandb({ hangFiles: true });
  const warnings: string[] = [];
  const sink = await WandbSink.create({ project: 'p', apiKey: KEY, baseUrl: server.url, timeoutMs: 20_000, flushTimeoutMs: 800, warn: (m) => warnings.push(m) });
  t.teardown(() => server.close());
  if (!sink) return t.fail(warnings.join('\n'));
  for (let step = 0; step < 3; step++) sink!.log({ step, loss: 1 });
  // the SDK's file stream sends every 2 s; the first send hangs; the watchdog fires 0.8 s later
  for (let i = 0; i < 200 && warnings.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
  t.is(warnings.length, 1);
  t.regex(warnings[0]!, /wandb disabled: an upload to W&B has been pending for over 1 s/);
  t.false(sink!.active);
  sink!.log({ step: 4, loss: 1 }); // a no-op now
  await sink!.close();
  t.is(warnings.length, 1);
});

test('a close whose final upload hangs returns after closeTimeoutMs with one warning', async (t) => {
  t.timeout(60_000);
  const server = await fakeWandb({ hangFiles: true });
  const warnings: string[] = [];
  const sink = await WandbSink.create({ project: 'p', apiKey: KEY, baseUrl: server.url, timeoutMs: 20_000, closeTimeoutMs: 1000, warn: (m) => warnings.push(m) });
  t.teardown(() => server.close());
  if (!sink) return t.fail(warnings.join('\n'));
  sink!.log({ step: 0, loss: 1 });
  const t0 = Date.now();
  await sink!.close();
  const took = Date.now() - t0;
  t.is(warnings.length, 1, warnings.join('\n'));
  t.regex(warnings[0]!, /closing the W&B run took over 1 s/);
  t.true(took < 1000 + 20_000, `${took} ms`);
  t.false(sink!.active);
});
