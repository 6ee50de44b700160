// Issue 3's numerics requirement: training losses are unchanged (to 1e-5 relative) by qrlhf's
// kernels. Five LoRA gradient steps of a small Llama, run in fresh processes with tfjs's stock
// wasm kernels, with qrlhf's XNNPACK kernels and with the native addon, give the same losses.
import test from 'ava';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'kernel-loss.child.ts');

function losses(env: Record<string, string>): number[] {
  const r = spawnSync(process.execPath, ['--import=tsx', '--conditions=source', child], {
    env: { ...process.env, ...env }, encoding: 'utf8', timeout: 180_000,
  });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return (JSON.parse(r.stdout.trim().split('\n').pop()!) as { losses: number[] }).losses;
}

test('training losses with qrlhf kernels equal the stock kernels to 1e-5 relative, step by step', (t) => {
  const stock = losses({ QRLHF_STOCK_KERNELS: '1', QRLHF_WASM_THREADS: '1', QRLHF_NATIVE: '0' });
  const xnn = losses({ QRLHF_NATIVE: '0' });
  const native = losses({ QRLHF_NATIVE: '' });
  t.is(stock.length, 5);
  t.true(stock[4]! < stock[0]! - 1e-3, `the steps train: ${stock}`);
  for (let s = 0; s < 5; s++) {
    t.true(Math.abs(xnn[s]! - stock[s]!) <= 1e-5 * Math.abs(stock[s]!), `step ${s}: XNNPACK ${xnn[s]} vs stock ${stock[s]}`);
    t.true(Math.abs(native[s]! - stock[s]!) <= 1e-5 * Math.abs(stock[s]!), `step ${s}: native ${native[s]} vs stock ${stock[s]}`);
  }
});
