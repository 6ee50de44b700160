import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '@qrlhf/core';

/**
 * The Figure 3 runner end to end at toy size (configs/figure3-smoke.json): every stage through
 * the packages' public APIs, the output contract of `npm run figure3`, resume after a kill, and
 * no work redone on a finished run.
 */
function runner(out: string, opts: { killWhen?: RegExp; extra?: string[] } = {}): Promise<{ code: number | null; signal: string | null; stderr: string; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--conditions=source', '--import=tsx', 'experiments/figure3/run.ts', '--config', 'configs/figure3-smoke.json', '--out', out, ...(opts.extra ?? [])],
      { cwd: repoRoot(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      if (opts.killWhen && opts.killWhen.test(stderr)) child.kill('SIGKILL');
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 240_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stderr, stdout });
    });
  });
}

test('figure3 smoke: killed mid-way, resumed, writes the contract files; a finished run is not redone', async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), 'qrlhf-f3-')), 'run');
  const first = await runner(out, { killWhen: /sft: done in/ });
  t.is(first.signal, 'SIGKILL', first.stderr);
  t.false(existsSync(join(out, 'summary.json')));

  const second = await runner(out);
  t.is(second.code, 0, second.stderr);
  t.regex(second.stderr, /data: done already/);
  t.regex(second.stderr, /pretrain: done already/);
  t.regex(second.stderr, /sft: done already/);
  t.regex(second.stderr, /qrm: starting/);
  for (const f of ['figure3.png', 'figure3.svg', 'summary.md', 'summary.json']) t.true(existsSync(join(out, f)), f);

  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as {
    runs: Record<string, { final: { estimated: Record<string, number>; true: Record<string, number> }; seeds: unknown[]; qrm_mae: Record<string, number> }>;
  };
  const keys = ['q0.05', 'q0.10', 'q0.15', 'q0.20', 'q0.25', 'expectation'];
  t.deepEqual(Object.keys(summary.runs).sort(), ['risk-aware', 'risk-neutral']);
  for (const r of Object.values(summary.runs)) {
    t.deepEqual(Object.keys(r.final.estimated).sort(), [...keys].sort());
    t.deepEqual(Object.keys(r.final.true).sort(), [...keys].sort());
    t.deepEqual(Object.keys(r.qrm_mae).sort(), [...keys].sort());
    t.true(r.seeds.length >= 1);
    // The world's rewards lie in [0, 1]; its quantiles are non-decreasing in tau.
    for (let i = 0; i < 5; i++) {
      t.true(r.final.true[keys[i]!]! >= 0 && r.final.true[keys[i]!]! <= 1);
      if (i > 0) t.true(r.final.true[keys[i]!]! >= r.final.true[keys[i - 1]!]! - 1e-9);
    }
  }
  // The per-step metrics carry the QRM's quantiles and the world's true ones.
  const metrics = readFileSync(join(out, 'rl', 'risk-aware-seed1', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.true(metrics.length >= 1);
  for (const k of keys) {
    t.is(typeof metrics[0]![k], 'number', k);
    t.is(typeof metrics[0]![`true/${k}`], 'number', `true/${k}`);
  }

  const third = await runner(out);
  t.is(third.code, 0, third.stderr);
  t.notRegex(third.stderr, /: starting/);

  // every value a stage used is in the run folder's config.json, under its stage's own key
  const used = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { rloo: Record<string, unknown>; sft: Record<string, unknown>; pretrain: Record<string, unknown> };
  t.like(used.rloo, { microBatchSize: 32, lambda: 5, maxPromptLength: 347 });
  t.like(used.sft, { maxLength: 256, loraDropout: 0, schedule: 'cosine' });
  t.like(used.pretrain, { weightDecay: 0.01, maxPositionEmbeddings: 256, minLr: null });

  // Other settings never reuse a finished stage's outputs: one clear error.
  const fourth = await runner(out, { extra: ['--rloo.lambda', '3'] });
  t.is(fourth.code, 1);
  t.regex(fourth.stderr, /was made with other settings \(rloo\.lambda: 5 then, 3 now\)/);
  t.notRegex(fourth.stderr, /at .*\.ts:\d+/);
});
