import { spawn } from 'node:child_process';
import { repoRoot } from '@qrlhf/core';

export interface RunResult { code: number | null; stdout: string; stderr: string }

/**
 * Runs the qrlhf CLI from the TypeScript sources (what `npm run qrlhf` runs), from the repo root,
 * so the test exercises the code in the tree rather than a possibly stale dist/.
 */
export function qrlhf(args: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--conditions=source', '--import=tsx', 'packages/cli/src/bin.ts', ...args], {
      cwd: repoRoot(),
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, QRLHF_DEBUG: '' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`qrlhf ${args.join(' ')}: no exit after ${opts.timeoutMs ?? 120000} ms`));
    }, opts.timeoutMs ?? 120000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** stderr lines that are not the backend-choice diagnostic. */
export function messageLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('backend:'));
}
