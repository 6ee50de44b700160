/**
 * Before/after table for issue 3: runs `qrlhf bench --stock` (tfjs's wasm kernels, one thread),
 * `qrlhf bench` with QRLHF_NATIVE=0 (qrlhf's wasm kernels on XNNPACK, all cores: what a machine
 * without a C compiler gets) and `qrlhf bench` (with the native addon) in fresh processes, one
 * after the other, on the same machine, and prints them as one markdown table. Heavy: run it under
 * the CPU lock.
 *
 *   flock /tmp/cpu.lock node --conditions=source --import=tsx scripts/bench-compare.ts \
 *     [--suite matmul,train,sample] [--models 5m,25m] [--json out.json] [--quick]
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface Row { [k: string]: unknown }
interface Result { backend: string; threads: number; kernels: string; native?: { arch: string; threads: number } | null; matmul: Row[]; train: Row[]; sample: Row[] }
type Mode = 'stock' | 'xnnpack' | 'native';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
};
const passOn = ['--suite', flag('suite') ?? 'matmul,train,sample', '--models', flag('models') ?? '5m,25m', '--backend', 'wasm'];
if (argv.includes('--quick')) passOn.push('--quick');

const dir = mkdtempSync(path.join(os.tmpdir(), 'qrlhf-bench-'));
function bench(mode: Mode): Result {
  const file = path.join(dir, `${mode}.json`);
  const args = ['--conditions=source', '--import=tsx', path.join(root, 'packages/cli/src/bin.ts'), 'bench', ...passOn, '--json', file];
  if (mode === 'stock') args.push('--stock');
  const env = { ...process.env, QRLHF_NATIVE: mode === 'native' ? '' : '0' };
  process.stderr.write(`running (${mode}): node ${args.join(' ')}\n`);
  const r = spawnSync(process.execPath, args, { cwd: root, env, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error(`bench (${mode}) failed with status ${r.status}`);
  return JSON.parse(readFileSync(file, 'utf8')) as Result;
}

try {
  const before = bench('stock');
  const mid = bench('xnnpack');
  const after = bench('native');
  const nat = after.native ? `native ${after.native.arch}, ${after.native.threads} threads` : 'native addon not loaded';
  const lines: string[] = [
    `| | tfjs wasm, ${before.threads} thread, stock kernels | qrlhf wasm kernels (XNNPACK), ${mid.threads} threads | qrlhf, ${nat} | speed-up over stock |`,
    '|---|---:|---:|---:|---:|',
  ];
  const fx = (x: unknown, d = 1) => (typeof x === 'number' ? x.toFixed(d) : String(x));
  before.matmul.forEach((b, i) => {
    const m = mid.matmul[i]!, a = after.matmul[i]!;
    lines.push(`| matmul ${b['what']} (${b['batch']}×${b['m']}×${b['k']}×${b['n']}${b['transposeA'] ? ' tA' : ''}${b['transposeB'] ? ' tB' : ''}) GFLOP/s | ${fx(b['gflops'])} | ${fx(m['gflops'])} | ${fx(a['gflops'])} | ${fx(Number(a['gflops']) / Number(b['gflops']))}× |`);
  });
  before.train.forEach((b, i) => {
    const m = mid.train[i]!, a = after.train[i]!;
    lines.push(`| train ${b['model']} LoRA step: s (GFLOP/s, 6·N·T) | ${fx(b['step_s'], 2)} (${fx(b['gflops'])}) | ${fx(m['step_s'], 2)} (${fx(m['gflops'])}) | ${fx(a['step_s'], 2)} (${fx(a['gflops'])}) | ${fx(Number(b['step_s']) / Number(a['step_s']))}× |`);
  });
  before.sample.forEach((b, i) => {
    const m = mid.sample[i]!, a = after.sample[i]!;
    lines.push(`| sample ${b['model']} batch ${b['batch']}: new tokens/s | ${fx(b['tokens_per_s'], 0)} | ${fx(m['tokens_per_s'], 0)} | ${fx(a['tokens_per_s'], 0)} | ${fx(Number(a['tokens_per_s']) / Number(b['tokens_per_s']))}× |`);
  });
  process.stdout.write('\n' + lines.join('\n') + '\n');
  const out = flag('json');
  if (out) writeFileSync(out, JSON.stringify({ before, xnnpack: mid, after }, null, 2) + '\n');
} finally {
  rmSync(dir, { recursive: true, force: true });
}
