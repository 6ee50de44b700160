import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '@qrlhf/core';

// `npm ci && npx qrlhf --help` must work without `npm run build`: the bin's fallback runs the
// TypeScript sources, and it must resolve @qrlhf/* to src/ without `--conditions=source` on the
// command line. QRLHF_FROM_SOURCE=1 takes that path even where a dist/ exists; a plain `node`
// (no execArgv, no NODE_OPTIONS) from another directory stands for npx.
function bin(args: string[]) {
  const env = { ...process.env, QRLHF_FROM_SOURCE: '1', QRLHF_DEBUG: '' };
  delete env['NODE_OPTIONS'];
  return spawnSync(process.execPath, [join(repoRoot(), 'packages/cli/bin/qrlhf.js'), ...args], {
    cwd: mkdtempSync(join(tmpdir(), 'qrlhf-bin-')),
    env,
    encoding: 'utf8',
    timeout: 120_000,
  });
}

test('the bin runs from the sources without a build: --help, and a user fault is a QrlhfError (exit 1)', (t) => {
  const help = bin(['--help']);
  t.is(help.status, 0, help.stderr);
  t.regex(help.stdout, /qrlhf <command> \[options\]/);
  t.regex(help.stdout, /qrm/);
  // One class of QrlhfError across packages: @qrlhf/core must resolve to the same (source) module
  // from the CLI and from @qrlhf/qrm, or the error would surface as an internal error (exit 2).
  const fault = bin(['qrm', 'fit', '--features', 'absent.safetensors', '--out', 'x']);
  t.is(fault.status, 1, fault.stderr);
  t.regex(fault.stderr, /^qrlhf: --features \S*absent\.safetensors: no such file\n$/);
});
