import test from 'ava';
import { spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng, repoRoot } from '@qrlhf/core';
import { createWorld } from '@qrlhf/world';

/**
 * The Figure 3 runner end to end at toy size (configs/figure3-smoke.json): every stage through
 * the packages' public APIs, the output contract of `npm run figure3`, resume after a kill, and
 * no work redone on a finished run.
 */
/** A node process on the sources (tsx), its output collected; `killWhen` kills it once stderr matches. */
function runNode(args: string[], opts: { killWhen?: RegExp } = {}): Promise<{ code: number | null; signal: string | null; stderr: string; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--conditions=source', '--import=tsx', ...args], { cwd: repoRoot(), stdio: ['ignore', 'pipe', 'pipe'] });
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

/** The runner on the smoke config into `out`. */
function runner(out: string, opts: { killWhen?: RegExp; extra?: string[] } = {}) {
  return runNode(['experiments/figure3/run.ts', '--config', 'configs/figure3-smoke.json', '--out', out, ...(opts.extra ?? [])], opts);
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
  // the smoke config turns on the QRM's on-policy ratings and its reward backbone
  t.regex(second.stderr, /qrm: 48 on-policy rating rows \(16 SFT samples/);
  t.regex(second.stderr, /qrm: reward backbone trained on \d+ rating rows/);
  for (const f of ['figure3.png', 'figure3.svg', 'summary.md', 'summary.json']) t.true(existsSync(join(out, f)), f);

  type Iv = { value: number; ci: [number, number] };
  type Sides<T> = { estimated: Record<string, T>; true: Record<string, T> };
  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')) as {
    runs: Record<string, {
      final: Sides<number>; start: Sides<number>; seeds: { seed: number; true: Record<string, number>; start: { true: Record<string, number> } }[]; qrm_mae: Record<string, number>;
      qrm_mae_start: Record<string, number>; ci: { final: Sides<[number, number]>; gain: Sides<Iv> };
    }>;
    difference: { runs: string[] } & Sides<Iv>;
    claims: { id: string; pass: boolean | null; text: string }[];
    lambda: { rule: string; lambda: number };
    qrm: { beta: number; debiasPenalties: number[]; attributes: string[]; gateWeights: { final: Record<string, number> } };
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
  // The SFT policy's values beside the final ones, and intervals around every difference.
  const within = (x: number, c: [number, number]) => c[0] <= x + 1e-9 && x <= c[1] + 1e-9;
  for (const r of Object.values(summary.runs)) {
    t.deepEqual(Object.keys(r.start.true).sort(), [...keys].sort());
    t.deepEqual(Object.keys(r.qrm_mae_start).sort(), [...keys].sort());
    t.is(typeof r.seeds[0]!.start.true['q0.05'], 'number');
    for (const k of keys) {
      t.true(within(r.final.true[k]!, r.ci.final.true[k]!), `final ${k} inside its interval`);
      const g = r.ci.gain.true[k]!;
      t.true(Math.abs(g.value - (r.final.true[k]! - r.start.true[k]!)) < 1e-9, `gain ${k} = final − start`);
      t.true(within(g.value, g.ci));
    }
  }
  // both runs start from the same SFT policy, evaluated once per seed
  t.deepEqual(summary.runs['risk-aware']!.start, summary.runs['risk-neutral']!.start);
  t.deepEqual(summary.difference.runs, ['risk-aware', 'risk-neutral']);
  for (const k of [...keys, 'q0.50', 'q0.95']) {
    const d = summary.difference.true[k]!;
    if (k !== 'q0.50' && k !== 'q0.95') t.true(Math.abs(d.value - (summary.runs['risk-aware']!.final.true[k]! - summary.runs['risk-neutral']!.final.true[k]!)) < 1e-9, k);
    t.true(within(d.value, d.ci), `difference ${k} inside its interval`);
  }
  // the claims are computed from those intervals and end summary.md
  const claim = (id: string) => summary.claims.find((c) => c.id === id)!;
  const gainE = Object.values(summary.runs).map((r) => r.ci.gain.true['expectation']!);
  t.is(claim('a').pass, gainE.every((g) => g.ci[0] > 0));
  t.is(claim('b').pass, summary.difference.true['q0.05']!.ci[0] > 0 && summary.difference.true['q0.10']!.ci[0] > 0);
  t.is(claim('c').pass, Math.abs(summary.difference.true['expectation']!.value) / summary.runs['risk-neutral']!.final.true['expectation']! <= 0.03);
  const md = readFileSync(join(out, 'summary.md'), 'utf8');
  for (const id of ['a', 'b', 'c']) t.true(md.includes(`- ${claim(id).pass ? 'PASS' : 'FAIL'} ${claim(id).text}`), `claim ${id} in summary.md`);
  t.regex(md, /## Claims\n\n(- .*\n)+$/);
  t.regex(md, /true q0\.95: risk-aware − risk-neutral/);
  t.deepEqual(summary.lambda, { rule: 'fixed', lambda: 5 });
  t.is(summary.qrm.debiasPenalties.length, summary.qrm.attributes.length);
  t.true(Math.abs(summary.qrm.beta - Object.values(summary.qrm.gateWeights.final).reduce((a, b) => a + b, 0)) < 1e-9);
  // the evaluation prompts are not RL prompts
  const promptsOf = (f: string) => readFileSync(join(out, 'data', f), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { prompt: string }).prompt);
  const rl = new Set(promptsOf('prompts.jsonl'));
  t.deepEqual(promptsOf('eval_prompts.jsonl').filter((p) => rl.has(p)), []);

  // The per-step metrics carry the QRM's quantiles (reward/…) and the world's exact ones (truth/…).
  const metrics = readFileSync(join(out, 'rl', 'risk-aware-seed1', 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.true(metrics.length >= 1);
  for (const k of keys) {
    t.is(typeof metrics[0]![`reward/${k}`], 'number', `reward/${k}`);
    t.is(typeof metrics[0]![`truth/${k}`], 'number', `truth/${k}`);
    t.false(k in metrics[0]! || `true/${k}` in metrics[0]!, `no flat ${k}`);
  }
  // both figures have their six panels, the truth one under "true …" titles
  t.true(readFileSync(join(out, 'figure3-true.svg'), 'utf8').includes('true quantile τ = 0.05'));
  t.is((readFileSync(join(out, 'figure3.svg'), 'utf8').match(/<polyline /g) ?? []).length, 12);

  const third = await runner(out);
  t.is(third.code, 0, third.stderr);
  t.notRegex(third.stderr, /: starting/);

  // canonical.ts: the run's QRM and the truth on hand-written responses; its true column against
  // the world computed here
  const canonRun = await runNode(['experiments/figure3/canonical.ts', out, '4']);
  t.is(canonRun.code, 0, canonRun.stderr);
  const canon = canonRun.stdout;
  const rowsOut = canon.split('\n').filter((l) => /^\| [a-z+]+ \| \d/.test(l));
  t.is(rowsOut.length, 9, canon);
  const evalPrompts = readFileSync(join(out, 'data', 'eval_prompts.jsonl'), 'utf8').trim().split('\n').slice(0, 4).map((l) => (JSON.parse(l) as { prompt: string }).prompt);
  const w = createWorld(1);
  const trueAnswer = evalPrompts.reduce((a, p, i) => a + w.trueExpectation(p, w.renderResponse(p, ['answer'], new Rng(i + 1))), 0) / 4;
  const cells = rowsOut[0]!.split('|').map((x) => x.trim());
  t.is(cells[1], 'answer');
  t.is(cells[2]!.split(' / ')[1], trueAnswer.toFixed(3));

  // The RL jobs ran in 2 worker processes (the default `parallel`), their lines prefixed with the
  // job; the same jobs in this process (parallel 1) give the same numbers, step by step.
  t.regex(second.stderr, /2 worker processes side by side/);
  t.regex(second.stderr, /\[risk-aware seed 1\] \[figure3\] rloo risk-aware seed 1: starting/);
  const serial = join(out, '..', 'serial');
  for (const d of ['data', 'pretrain', 'base', 'sft', 'qrm', 'lambda']) cpSync(join(out, d), join(serial, d), { recursive: true });
  const fifth = await runner(serial, { extra: ['--parallel', '1'] });
  t.is(fifth.code, 0, fifth.stderr);
  t.notRegex(fifth.stderr, /worker processes/);
  const s1 = JSON.parse(readFileSync(join(serial, 'summary.json'), 'utf8')) as typeof summary;
  t.deepEqual(s1.runs, summary.runs);
  t.deepEqual(s1.difference, summary.difference);
  const steps = (dir: string) => readFileSync(join(dir, 'rl', 'risk-aware-seed1', 'metrics.jsonl'), 'utf8').trim().split('\n')
    .map((l) => Object.fromEntries(Object.entries(JSON.parse(l) as Record<string, unknown>).filter(([k]) => !/time|sec|per_s|it_s/i.test(k))));
  t.deepEqual(steps(serial), steps(out));

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

  // The default config's lambda rule ('mean-budget', lambda.ts) on this run's QRM and SFT policy:
  // lambda is a grid value whose best-of-n choice stays within the budget, as is every smaller one.
  const budget = join(out, '..', 'budget');
  for (const d of ['data', 'pretrain', 'base', 'sft', 'qrm']) cpSync(join(out, d), join(budget, d), { recursive: true });
  // the smoke config's rloo.lambda 5 would be ignored by the rule: refused with one line
  const refused = await runner(budget, { extra: ['--lambda-rule', 'mean-budget'] });
  t.is(refused.code, 1);
  t.regex(refused.stderr, /rloo\.lambda 5 would not be used: lambdaRule 'mean-budget' chooses the risk-aware run's lambda \(add --lambda-rule fixed/);
  const sixth = await runner(budget, { extra: ['--lambda-rule', 'mean-budget', '--lambda-prompts', '16', '--rloo.lambda', '1'] });
  t.is(sixth.code, 0, sixth.stderr);
  t.regex(sixth.stderr, /lambda \(rule mean-budget\): [\d.]+ \(best of 4 by the utility gives up [\d.]+ % of the estimated mean/);
  const lam = (JSON.parse(readFileSync(join(budget, 'summary.json'), 'utf8')) as { lambda: { rule: string; lambda: number; budget: number; samples: number; curve: { lambda: number; loss: number }[] } }).lambda;
  t.like(lam, { rule: 'mean-budget', budget: 0.03, samples: 4 });
  t.is(lam.curve.length, 29);
  const k = lam.curve.findIndex((p) => p.lambda === lam.lambda);
  t.true(k >= 0 && lam.curve.slice(0, k + 1).every((p) => p.loss <= 0.03) && (k === 28 || lam.curve[k + 1]!.loss > 0.03), JSON.stringify(lam.curve));
});
