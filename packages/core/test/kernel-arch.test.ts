// The native addon has three sets of kernels (AVX-512, AVX2 + FMA, portable C) chosen by the CPU;
// QRLHF_NATIVE_ARCH selects a lower one, so every set is checked here against float64, whatever
// the machine (a set the CPU cannot run is not selectable above what it supports).
import test from 'ava';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { loadNative, nativeInfo } from '../src/compute/kernels/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const child = path.join(here, 'kernel-arch.child.ts');
loadNative();
const maybe = nativeInfo().active ? test : test.skip;

for (const arch of ['avx2', 'portable'] as const) {
  maybe(`native products with QRLHF_NATIVE_ARCH=${arch} agree with float64 within k·eps·Σ|ab|`, (t) => {
    const r = spawnSync(process.execPath, ['--import=tsx', '--conditions=source', child], {
      env: { ...process.env, QRLHF_NATIVE_ARCH: arch }, encoding: 'utf8', timeout: 120_000,
    });
    t.is(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as { arch: string; active: boolean; worst: number; count: number; packed: number; native: number };
    t.true(out.active);
    // avx2 is only selectable on a CPU that has it; otherwise the addon falls to portable
    t.true(out.arch === arch || (arch === 'avx2' && out.arch === 'portable'), `got ${out.arch}`);
    t.is(out.count, 8 * 4 * 3);
    t.true(out.native >= out.count, 'the products ran on the addon');
    t.true(out.packed >= 8 * 4, 'reused right operands were packed');
    t.true(out.worst <= 1, `worst error ${out.worst} of the float32 bound`);
  });
}
