import { spawn } from 'node:child_process';
import yargs from 'yargs';
import type { CommandModule } from 'yargs';
import { QrlhfError, repoRoot } from '@qrlhf/core';
import { PARSER_CONFIGURATION } from '../src/options.js';

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

/**
 * Runs one command inside this process (quicker than a spawn): parse errors are thrown instead of
 * exiting; returns the text yargs printed (help). A handler still ends the process on a fault
 * through handle(), as on the command line, so use this for runs that succeed.
 */
export async function runInProcess(command: CommandModule, args: string[]): Promise<string> {
  const printed: string[] = [];
  const log = console.log;
  console.log = (...x: unknown[]) => void printed.push(x.join(' '));
  try {
    await yargs()
      .scriptName('qrlhf')
      .parserConfiguration(PARSER_CONFIGURATION)
      .command(command)
      .strict()
      .exitProcess(false)
      .fail((msg, err) => {
        throw err ?? new QrlhfError(msg);
      })
      .parseAsync(args);
  } finally {
    console.log = log;
  }
  return printed.join('\n');
}
