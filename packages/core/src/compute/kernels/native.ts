/**
 * qrlhf's native matrix products (packages/core/native/qrlhf_native.c, built by
 * packages/core/native/build.mjs after `npm ci` and in `npm run build`). When the addon is present
 * the wasm backend's BatchMatMul hands every float32 product to it: it reads and writes the wasm
 * heap in place (no copies), uses AVX-512 or AVX2 where the CPU has them and its own thread pool.
 * Without the addon (no compiler at install time, another OS, QRLHF_NATIVE=0) the XNNPACK path of
 * BatchMatMul.ts is used instead; results agree within float32 rounding either way.
 *
 * Environment: QRLHF_NATIVE=0 disables it; QRLHF_NATIVE_THREADS sets its threads (default: the
 * logical CPUs); QRLHF_NATIVE_SPIN_US how long an idle worker spins before it sleeps (default 200);
 * QRLHF_NATIVE_ARCH=avx2|portable forces a lower kernel set (for tests).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { threadsFromEnv } from './setup.js';

export interface NativeAddon {
  /** For every e: C_e = op(A_e)·op(B_e) on `heap`, at float offsets offsets[3e], [3e+1], [3e+2]. */
  gemm(heap: Float32Array, m: number, n: number, k: number, transposeA: number, transposeB: number, offsets: Uint32Array, packedB?: number): void;
  /** Writes op(B) [k, n] in the addon's panel layout at float offset dst; returns floats written. */
  packB(heap: Float32Array, k: number, n: number, transposeB: number, offset: number, dst: number): number;
  /** One decoding step of attention (see attention.ts). */
  decodeAttention(heap: Float32Array, dims: Int32Array, offsets: Uint32Array): void;
  /** Row copies: for every block (rows, src, srcStride, dst, dstStride, width) in spec. */
  copyBlocks(heap: Float32Array, spec: Uint32Array): void;
  /** Floats packB writes for op(B) [k, n]. */
  packedSize(k: number, n: number): number;
  init(threads: number, spinMicroseconds: number): { arch: string; threads: number; mr: number; nr: number };
}

export interface NativeInfo {
  /** The addon is loaded and used for matrix products. */
  active: boolean;
  /** 'avx512' | 'avx2' | 'portable' when active. */
  arch?: string;
  threads?: number;
  /** Why it is not active. */
  note?: string;
}

/** Where build.mjs writes the addon (the same relative path from src/compute/kernels and dist/compute/kernels). */
export function nativeAddonPath(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'native', 'build', 'qrlhf_native.node');
}

let addon: NativeAddon | null | undefined;
let info: NativeInfo = { active: false, note: 'not loaded yet' };

/** Loads the addon once (null when absent or disabled; nativeInfo().note says why). */
export function loadNative(): NativeAddon | null {
  if (addon !== undefined) return addon;
  addon = null;
  const off = process.env['QRLHF_NATIVE'];
  if (off !== undefined && off !== '' && off !== '1') {
    info = { active: false, note: `QRLHF_NATIVE=${off}` };
    return null;
  }
  const file = nativeAddonPath();
  if (!existsSync(file)) {
    info = { active: false, note: 'not built (node packages/core/native/build.mjs)' };
    return null;
  }
  try {
    const a = createRequire(import.meta.url)(file) as NativeAddon;
    const r = a.init(threadsFromEnv('QRLHF_NATIVE_THREADS', 64), Number(process.env['QRLHF_NATIVE_SPIN_US'] ?? 200));
    addon = a;
    info = { active: true, arch: r.arch, threads: r.threads };
  } catch (e) {
    info = { active: false, note: `failed to load (${e instanceof Error ? e.message : String(e)})` };
  }
  return addon;
}

export function nativeInfo(): NativeInfo {
  return { ...info };
}

/** For tests and benchmarks: route products to the addon (true) or to XNNPACK (false). */
let enabled = true;
export function setNativeEnabled(on: boolean): void {
  enabled = on;
}
export function activeNative(): NativeAddon | null {
  return enabled ? (addon ?? null) : null;
}
