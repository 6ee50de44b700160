/**
 * `qrlhf serve --qrm DIR` as a reward endpoint: POST /v1/reward gives the in-process QRM's
 * quantiles and gate weights and the utility of eq. 4 (checked in float64 here), and OpenRLHF's
 * POST /get_reward gives {"rewards": [...]} equal to the utility chosen at start.
 */
import test from 'ava';
import { join } from 'node:path';
import { initBackend } from '@qrlhf/core';
import { QuantileRewardModel } from '@qrlhf/qrm';
import { tmp, writeRandomQrm, writeTinyPolicy } from '../packages/rloo/test/fixture.js';
import { call, startServe, type ServeProcess } from './engine-helpers.js';

const dir = tmp('reward');
const K = 9;
let server: ServeProcess | null = null;
let qrm: QuantileRewardModel;

test.before(async () => {
  await initBackend('cpu', { quiet: true });
  const policy = await writeTinyPolicy(join(dir, 'policy'));
  await writeRandomQrm(join(dir, 'qrm'), policy, { K, seed: 5 });
  qrm = await QuantileRewardModel.load(join(dir, 'qrm'));
  server = await startServe(['--qrm', join(dir, 'qrm'), '--utility', 'exponential', '--lambda', '5']);
});
test.after.always(async () => {
  await server?.kill();
  qrm?.dispose();
});

const prompts = ['\n\nHuman: tell me of owls?\n\nAssistant:', '\n\nHuman: why tea?\n\nAssistant:', '\n\nHuman: tell me of owls?\n\nAssistant:'];
const responses = [' they hoot.', ' it is warm and good.', ' zzz'];
/** eq. 4 in float64: mean_k -exp(-lambda q_k). */
const exp64 = (q: ArrayLike<number>, lambda: number) => Array.from(q).reduce((s, x) => s - Math.exp(-lambda * x), 0) / q.length;

test.serial('POST /v1/reward: quantiles, expectation, gate weights as in-process, the utility of eq. 4; a per-request utility overrides the default', async (t) => {
  const want = await qrm.score(prompts.map((p, i) => ({ prompt: p, response: responses[i]! })));
  let r = await call(`${server!.url}/reward`, { prompts, responses });
  t.is(r.status, 200, r.text);
  type Out = { taus: number[]; utility: string; results: { quantiles: number[]; expectation: number; utility: number; gate: number[] }[] };
  let out = r.json as Out;
  t.is(out.utility, 'exponential');
  t.deepEqual(out.taus, Array.from(qrm.taus));
  out.results.forEach((res, i) => {
    t.true(res.quantiles.every((x, k) => Math.abs(x - want[i]!.quantiles[k]!) <= 1e-6), `quantiles ${i}`);
    t.true(res.gate.every((x, k) => Math.abs(x - want[i]!.gate[k]!) <= 1e-6), `gate ${i}`);
    t.true(Math.abs(res.expectation - res.quantiles.reduce((a, b) => a + b, 0) / K) <= 1e-6);
    t.true(Math.abs(res.utility - exp64(res.quantiles, 5)) <= 1e-6, `utility ${i}`);
  });
  r = await call(`${server!.url}/reward`, { prompts, responses, utility: 'exponential', lambda: 1 });
  out = r.json as Out;
  out.results.forEach((res) => t.true(Math.abs(res.utility - exp64(res.quantiles, 1)) <= 1e-6));
});

test.serial("OpenRLHF's POST /get_reward: {rewards} equal to the start-up utility, with or without prompts", async (t) => {
  const query = prompts.map((p, i) => p + responses[i]);
  const ref = (await call(`${server!.url}/reward`, { prompts, responses })).json as { results: { utility: number; quantiles: number[] }[] };
  for (const body of [{ query, prompts }, { query }]) {
    const r = await call(server!.url.replace(/\/v1$/, '') + '/get_reward', body);
    t.is(r.status, 200, r.text);
    const out = r.json as { rewards: number[]; scores: number[]; extra_logs: Record<string, number[]> };
    t.deepEqual(out.rewards, ref.results.map((x) => x.utility));
    t.deepEqual(out.scores, out.rewards);
    t.deepEqual(out.extra_logs['q0.10'], ref.results.map((x) => x.quantiles[0]!));
  }
  const r = await call(server!.url.replace(/\/v1$/, '') + '/get_reward', { query: ['no turns here'] });
  t.is(r.status, 400);
  t.is((r.json as { error: { param: string } }).error.param, 'query[0]');
});

test.serial('bad reward requests: 4xx naming the field; the server keeps answering', async (t) => {
  const cases: [string, unknown, string][] = [
    ['/reward', { responses }, 'prompts'],
    ['/reward', { prompts, responses: responses.slice(1) }, 'responses'],
    ['/reward', { prompts, responses, utility: './evil.mjs' }, 'utility'],
    ['/reward', { prompts, responses, lambda: -1 }, 'lambda'],
    ['/completions', { prompt: 'x' }, 'model'],
  ];
  for (const [path, body, param] of cases) {
    const r = await call(server!.url + path, body);
    t.true(r.status >= 400 && r.status < 500, `${path}: ${r.text}`);
    t.is((r.json as { error: { param: string } }).error.param, param, r.text);
  }
  t.is((await call(`${server!.url}/reward`, { prompts: prompts.slice(0, 1), responses: responses.slice(0, 1) })).status, 200);
});
