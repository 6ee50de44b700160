/**
 * Real `qrlhf serve` processes for the engine tests: each is a child process on a loopback port
 * chosen by the OS (--port 0), found from the line the server prints when it listens.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { repoRoot } from '@qrlhf/core';

export interface ServeProcess {
  /** Base URL ending in /v1. */
  url: string;
  proc: ChildProcess;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
}

/** Starts `qrlhf serve ARGS --host 127.0.0.1 --port 0 --backend cpu`; rejects if it does not listen within timeoutMs. */
export function startServe(args: string[], timeoutMs = 90_000): Promise<ServeProcess> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['--conditions=source', '--import=tsx', 'packages/cli/src/bin.ts', 'serve', ...args, '--host', '127.0.0.1', '--port', '0', '--backend', 'cpu'], {
      cwd: repoRoot(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    const kill = async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
    };
    const timer = setTimeout(() => {
      void kill();
      reject(new Error(`qrlhf serve ${args.join(' ')}: not listening after ${timeoutMs} ms; stderr: ${err}`));
    }, timeoutMs);
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString('utf8');
      const m = /listening on (http:\/\/\S+\/v1)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1]!, proc, kill, stderr: () => err });
      }
    });
    proc.stderr!.on('data', (c: Buffer) => (err += c.toString('utf8')));
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`qrlhf serve exited (${code}) before listening: ${err}`));
    });
  });
}

/** POST (or GET without a body) and the parsed answer with its status. */
export async function call(url: string, body?: unknown): Promise<{ status: number; json: unknown; text: string }> {
  const res = await fetch(url, body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  return { status: res.status, json, text };
}
