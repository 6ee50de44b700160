// The wasm backend in Node uses every core by default (large products on the thread pool) (QRLHF_WASM_THREADS overrides), leaves no
// global behind, computes the same products with one thread as with several, and a process that
// used it exits by itself.
import test from 'ava';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const child = path.join(here, 'kernel-threads.child.ts');
const cpus = Math.min(8, typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length);

function run(env: Record<string, string>): { code: number | null; out: Record<string, unknown>; err: string } {
  const r = spawnSync(process.execPath, ['--import=tsx', '--conditions=source', child], {
    env: { ...process.env, ...env }, encoding: 'utf8', timeout: 120_000,
  });
  const line = r.stdout.trim().split('\n').pop() || '{}';
  return { code: r.status, out: JSON.parse(line) as Record<string, unknown>, err: r.stderr };
}

test('default threads = logical CPUs; the process exits by itself; no global Worker; same numbers as 1 thread', (t) => {
  const multi = run({ QRLHF_WASM_THREADS: '' });
  t.is(multi.code, 0, multi.err);
  t.is(multi.out['threads'], cpus);
  t.is(multi.out['globalWorker'], 'undefined');
  t.is(multi.out['newListeners'], 0);
  if (cpus > 1) t.true(multi.out['pool'] as boolean, 'thread pool switch verified (pool.ts)');
  const single = run({ QRLHF_WASM_THREADS: '1' });
  t.is(single.code, 0, single.err);
  t.is(single.out['threads'], 1);
  // XNNPACK splits the work by output tiles, each summed the same way: identical results.
  t.deepEqual(multi.out['checksum'], single.out['checksum']);
});

test('QRLHF_WASM_THREADS rejects nonsense', (t) => {
  const bad = run({ QRLHF_WASM_THREADS: 'two' });
  t.not(bad.code, 0);
  t.regex(bad.err, /QRLHF_WASM_THREADS/);
});
