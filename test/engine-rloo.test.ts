/**
 * RLOO with `engine.kind: openai` against real `qrlhf serve` processes (loopback, OS-chosen ports).
 *
 * "The same" as `engine.kind: local`: the learner draws one seed per prompt and row j of a prompt
 * samples from Rng(`${seed}:${j}`) in both engines, on the same weights (the server loads the
 * adapter the learner saved, float32 for float32), so the rollouts are token for token the same,
 * and so are the metrics and the adapter. That holds on one backend and kernel set; across
 * backends, or against vLLM (other kernels, bf16), the rollouts are the same only in distribution.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadTrainingState, readSafetensors, type Metrics } from '@qrlhf/core';
import { readRlooMetrics, runRloo, type RlooConfig } from '@qrlhf/rloo';
import { smallConfig, stubReward, tmp, writePrompts, writeTinyPolicy } from '../packages/rloo/test/fixture.js';
import { startServe, type ServeProcess } from './engine-helpers.js';

const dir = tmp('engine');
const policyP = writeTinyPolicy(join(dir, 'policy'));
const prompts = writePrompts(join(dir, 'prompts.jsonl'), 12);
const servers: ServeProcess[] = [];
test.after.always(async () => {
  for (const s of servers) await s.kill();
});

async function serve(): Promise<ServeProcess> {
  const s = await startServe(['--model', await policyP]);
  servers.push(s);
  return s;
}

function config(out: string, engine: Record<string, unknown> | null, over: Partial<RlooConfig> = {}): RlooConfig {
  const base = smallConfig({ policy: '', prompts, out, steps: 3, batchSize: 3, checkpointEvery: 1, sampleEvery: 1, samplesPerLog: 6, ...over });
  return { ...base, ...(engine ? { engine: { retries: 2, backoffMs: 50, timeoutMs: 30000, ...engine } } : {}) } as RlooConfig;
}

async function run(out: string, engine: Record<string, unknown> | null, hooks: Parameters<typeof runRloo>[1] = {}, over: Partial<RlooConfig> = {}) {
  const cfg = config(out, engine, over);
  cfg.policy = await policyP;
  return runRloo(cfg, { reward: stubReward(), quiet: true, ...hooks });
}

const withoutTime = (rows: Metrics[]) => rows.map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'time/step_s')));
const samples = (out: string) => readFileSync(join(out, 'samples.jsonl'), 'utf8');
const adapterTensors = (out: string) => readSafetensors(join(out, 'adapter', 'adapter_model.safetensors')).tensors;

function sameAdapter(t: import('ava').ExecutionContext, a: string, b: string): void {
  const A = adapterTensors(a);
  const B = adapterTensors(b);
  t.deepEqual(Object.keys(A).sort(), Object.keys(B).sort());
  for (const k of Object.keys(A)) t.deepEqual(Array.from(A[k]!.data as Float32Array), Array.from(B[k]!.data as Float32Array), k);
}

let localOut = '';
let oneOut = '';

test.serial('one server: the same rollouts, metrics and final adapter as engine local', async (t) => {
  localOut = join(dir, 'local');
  await run(localOut, null);
  const s = await serve();
  oneOut = join(dir, 'one');
  await run(oneOut, { kind: 'openai', baseUrl: s.url });
  t.is(samples(oneOut), samples(localOut));
  t.deepEqual(withoutTime(readRlooMetrics(oneOut)), withoutTime(readRlooMetrics(localOut)));
  sameAdapter(t, oneOut, localOut);
  const cfg = JSON.parse(readFileSync(join(oneOut, 'config.json'), 'utf8')) as { engine: { kind: string; baseUrl: string } };
  t.is(cfg.engine.kind, 'openai');
  t.is(cfg.engine.baseUrl, s.url);
});

test.serial('two servers share the batch: same metrics keys; a server killed mid-step leaves the run as an undisturbed one', async (t) => {
  const [a, b] = [await serve(), await serve()];
  const twoOut = join(dir, 'two');
  await run(twoOut, { kind: 'openai', baseUrls: [a.url, b.url], concurrency: 1 });
  const rows = readRlooMetrics(twoOut);
  t.deepEqual(rows.map((r) => Object.keys(r).sort()), readRlooMetrics(localOut).map((r) => Object.keys(r).sort()));
  sameAdapter(t, twoOut, localOut);

  // kill server a once step 2's requests are out (the step's first requests go to both servers)
  const killedOut = join(dir, 'killed');
  let killed = false;
  const retried: string[] = [];
  await run(killedOut, { kind: 'openai', baseUrls: [a.url, b.url], concurrency: 1 }, {
    onEngineRetry: (url, error) => retried.push(`${url} ${error}`),
    onStep: (step) => {
      if (step === 1) setImmediate(() => void a.kill().then(() => (killed = true)));
    },
  });
  t.true(killed);
  t.true(retried.length >= 1 && retried.every((r) => r.startsWith(a.url)), retried.join('; '));
  t.not(a.proc.signalCode, null, 'server a was killed');
  t.deepEqual(readRlooMetrics(killedOut).map((r) => r['step']), [1, 2, 3]);
  t.is(samples(killedOut), samples(localOut));
  sameAdapter(t, killedOut, localOut);
});

test.serial('every server down: one clear error, the last checkpoint intact, and --resume on a new server ends as an undisturbed run', async (t) => {
  const [a, b] = [await serve(), await serve()];
  const out = join(dir, 'down');
  const err = await t.throwsAsync(
    run(out, { kind: 'openai', baseUrls: [a.url, b.url] }, {
      onStep: (step) => {
        if (step === 1) {
          // both gone before step 2's requests
          a.proc.kill('SIGKILL');
          b.proc.kill('SIGKILL');
        }
      },
    }),
  );
  t.regex(err!.message, /^engine: rollout request failed 3 times across 2 server\(s\): http:\/\/127\.0\.0\.1:\d+\/v1 \(ECONN\w+\); http:\/\/127\.0\.0\.1:\d+\/v1 \(ECONN\w+\)\. The last checkpoint \(step 1, .*checkpoints\) is intact: start the servers and rerun with --resume$/);
  t.is(err!.constructor.name, 'QrlhfError');
  const st = loadTrainingState(join(out, 'checkpoints'));
  t.is(st?.step, 1);
  t.deepEqual(readRlooMetrics(out).map((r) => r['step']), [1]);
  const c = await serve();
  const r = await run(out, { kind: 'openai', baseUrl: c.url }, {}, { resume: true });
  t.is(r.resumedFrom, 1);
  t.deepEqual(withoutTime(readRlooMetrics(out)), withoutTime(readRlooMetrics(localOut)));
  sameAdapter(t, out, localOut);
});
