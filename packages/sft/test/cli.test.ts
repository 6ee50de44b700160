/**
 * `qrlhf sft` on bad input: one line on stderr naming the file (and line), exit code 1, no stack.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '@qrlhf/core';
import { hhRows, tmp, writeTinyModel } from './fixture.js';

function qrlhf(args: string[]) {
  const r = spawnSync(process.execPath, ['--import=tsx', '--conditions=source', join(repoRoot(), 'packages/cli/src/bin.ts'), ...args], {
    cwd: repoRoot(),
    encoding: 'utf8',
  });
  // tfjs prints a banner on stdout-less runs; keep only qrlhf's own lines
  const lines = r.stderr.split('\n').filter((l) => l.startsWith('qrlhf'));
  return { code: r.status, lines, stderr: r.stderr };
}

test('a config with an unknown key: one line naming the file and the key, exit 1', (t) => {
  const cfg = join(tmp('cli'), 'c.json');
  writeFileSync(cfg, JSON.stringify({ model: 'm', data: 'd.jsonl', lora_rank: 8 }));
  const r = qrlhf(['sft', '--config', cfg]);
  t.is(r.code, 1, r.stderr);
  t.is(r.lines.length, 1, r.stderr);
  t.true(r.lines[0]!.startsWith(`qrlhf: ${cfg}: unknown key "lora_rank"`), r.lines[0]);
  t.false(r.stderr.includes('    at '), 'no stack trace');
});

test('a malformed data line through flags: one line naming the file and the line, exit 1', async (t) => {
  const d = tmp('cli');
  const model = await writeTinyModel(join(d, 'model'));
  const data = join(d, 'data.jsonl');
  writeFileSync(data, [JSON.stringify(hhRows(1)[0]), '{"chosen": oops}', ''].join('\n'));
  const r = qrlhf(['sft', '--model', model, '--data', data, '--out', join(d, 'run'), '--backend', 'cpu', '--max-steps', '1', '--quiet']);
  t.is(r.code, 1, r.stderr);
  t.true(r.lines.some((l) => l.startsWith(`qrlhf: ${data}:2:`)), r.stderr);
  t.false(r.stderr.includes('    at '), 'no stack trace');
});
