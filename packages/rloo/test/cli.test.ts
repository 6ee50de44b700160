/**
 * `qrlhf rloo` end to end with a real (tiny, random) quantile reward model folder whose backbone
 * is the tiny policy: the config file's relative paths, flag overrides, the metrics, samples
 * scored by the QRM itself, and the errors a user can make.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '@qrlhf/core';
import { QuantileRewardModel, taus as makeTaus } from '@qrlhf/qrm';
import { tmp, writePrompts, writeRandomQrm, writeTinyPolicy } from './fixture.js';

interface Run { code: number | null; stdout: string; stderr: string }

function qrlhf(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=source', '--import=tsx', 'packages/cli/src/bin.ts', ...args], { cwd: repoRoot(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const dir = tmp('cli');
const K = 19;
const setup = (async () => {
  const policy = await writeTinyPolicy(join(dir, 'policy'));
  await writeRandomQrm(join(dir, 'qrm'), policy, { K, seed: 3 });
  writePrompts(join(dir, 'prompts.jsonl'), 6, { long: 1 });
  mkdirSync(join(dir, 'configs'));
  const cfg = {
    '//': 'relative paths against this file',
    policy: '../policy', qrm: '../qrm', prompts: '../prompts.jsonl', out: '../out',
    backend: 'cpu', utility: 'expectation', k: 2, batchSize: 2, steps: 3, lr: 0.01, loraR: 2, loraAlpha: 4,
    maxNewTokens: 5, maxPromptLength: 50, sampleEvery: 1, samplesPerLog: 2, checkpointEvery: 2,
  };
  writeFileSync(join(dir, 'configs', 'small.json'), JSON.stringify(cfg, null, 2));
  return { policy };
})();

test('qrlhf rloo --config FILE with flag overrides: metrics per step with one key per QRM tau, samples scored by the QRM', async (t) => {
  await setup;
  const out = join(dir, 'out-flags');
  const r = await qrlhf(['rloo', '--config', join(dir, 'configs', 'small.json'), '--utility', 'exponential', '--lambda', '3', '-k', '3', '--steps', '2', '--out', out, '--quiet']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /rloo: 2 steps \(fresh\); prompts 6 used, 1 filtered out/);
  const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  t.is(cfg['utility'], 'exponential');
  t.is(cfg['lambda'], 3);
  t.is(cfg['k'], 3);
  t.is(cfg['policy'], join(dir, 'policy'));
  t.is(cfg['batchSize'], 2);
  const rows = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number>);
  t.deepEqual(rows.map((x) => x['step']), [1, 2]);
  const qkeys = Object.keys(rows[0]!).filter((k) => /^reward\/q\d\.\d\d$/.test(k));
  t.deepEqual(qkeys, Array.from(makeTaus(K), (x) => `reward/q${x.toFixed(2)}`));
  // the samples' quantiles are what the QRM says about those responses; their utility is eq. 4 with lambda 3
  const samples = readFileSync(join(out, 'samples.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { prompt: string; response: string; quantiles: Record<string, number>; utility: number });
  t.is(samples.length, 4);
  const qrm = await QuantileRewardModel.load(join(dir, 'qrm'));
  const scores = await qrm.score(samples.map((s) => ({ prompt: s.prompt, response: s.response })));
  samples.forEach((s, i) => {
    const q = Object.values(s.quantiles);
    q.forEach((x, j) => t.true(Math.abs(x - scores[i]!.quantiles[j]!) < 1e-5));
    const u = q.reduce((a, x) => a - Math.exp(-3 * x), 0) / q.length;
    t.true(Math.abs(s.utility - u) < 1e-6);
  });
  qrm.dispose();
});

test('qrlhf rloo refuses bad settings with a message naming the file or flag', async (t) => {
  await setup;
  const bad = join(dir, 'configs', 'bad.json');
  writeFileSync(bad, JSON.stringify({ policy: '../policy', batchSzie: 4 }));
  let r = await qrlhf(['rloo', '--config', bad]);
  t.is(r.code, 1);
  t.regex(r.stderr, /bad\.json: unknown key "batchSzie" \(did you mean "batchSize"\?\)/);
  r = await qrlhf(['rloo', '--config', join(dir, 'configs', 'small.json'), '-k', '1']);
  t.is(r.code, 1);
  t.regex(r.stderr, /--k: expected an integer >= 2, got "1"/);
  r = await qrlhf(['rloo', '--policy', join(dir, 'policy'), '--prompts', join(dir, 'prompts.jsonl'), '--out', join(dir, 'out-noqrm')]);
  t.is(r.code, 1);
  t.regex(r.stderr, /"qrm" \(--qrm\) must be set/);
  r = await qrlhf(['rloo', '--config', join(dir, 'configs', 'small.json'), '--utility', 'riskish', '--out', join(dir, 'out-badutil')]);
  t.is(r.code, 1);
  t.regex(r.stderr, /utility "riskish": expected one of expectation, exponential/);
});
