/**
 * Prepares the wasm backend: loads it, registers qrlhf's kernels on it (see kernels/index.ts) and,
 * in Node, makes it use every core.
 *
 * Threads. tfjs runs its wasm backend on one thread in Node. setupWasm() replaces the factory
 * tfjs registered for 'wasm' by one that starts the threaded SIMD build itself
 * (wasm-module.ts explains how, and why that needs no global patch) and returns tfjs's own
 * `BackendWasm` class around it (subclassed only to run release hooks, see heap.ts). The thread
 * count is `QRLHF_WASM_THREADS` if set (1 = tfjs's single-threaded build), else the number of
 * logical CPUs (at most 8, the workers the build pre-spawns). If the threaded build cannot start,
 * the single-threaded one is used and wasmInfo().note says why. The workers are unref()ed, so a
 * process exits by itself; nothing needs to be shut down.
 */
import os from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { markHookable, runReleaseHooks } from './heap.js';
import { loadThreadedWasm, releaseIdleWorkers, type WasmModuleLike } from './wasm-module.js';
import { initPoolSwitch } from './pool.js';
import { nativeInfo, type NativeInfo } from './native.js';
import { QrlhfError } from '../../errors.js';

export interface WasmInfo {
  /** XNNPACK threads in use (1 until the backend is initialised). */
  threads: number;
  /** 'threaded-simd' / 'single-simd' (qrlhf's loader) or 'stock' (tfjs's own loader, one thread). */
  build: 'threaded-simd' | 'single-simd' | 'stock';
  /** qrlhf's kernels registered (false with QRLHF_STOCK_KERNELS=1). */
  kernels: boolean;
  /** The pool is on only around large matrix products (pool.ts); false: on for every XNNPACK op. */
  poolOnlyForLargeProducts?: boolean;
  /** Why the threaded build is not used, when it is not. */
  note?: string;
  /** qrlhf's native matrix products (native.ts): used when active. */
  native: NativeInfo;
}

const info: Omit<WasmInfo, 'native'> = { threads: 1, build: 'stock', kernels: false };
let prepared = false;

export function wasmInfo(): WasmInfo {
  return { ...info, native: nativeInfo() };
}

/** Threads from the environment variable `name` if set, else the logical CPU count, within [1, max]. */
export function threadsFromEnv(name: string, max: number): number {
  const env = process.env[name];
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}: expected an integer >= 1, got "${env}"`);
    return Math.min(n, max);
  }
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  return Math.max(1, Math.min(cpus, max));
}

/** Threads wanted: QRLHF_WASM_THREADS, else the logical CPU count, within [1, 8]. */
export function wantedWasmThreads(): number {
  return threadsFromEnv('QRLHF_WASM_THREADS', 8);
}

interface WasmPackage {
  BackendWasm: new (wasm: WasmModuleLike) => tf.KernelBackend;
  setThreadsCount(n: number): void;
  getThreadsCount(): number;
}

type Factory = () => tf.KernelBackend | Promise<tf.KernelBackend>;

function registryFactory(name: string): Factory | null {
  const engine = tf.engine() as unknown as { registryFactory: Record<string, { factory: Factory } | undefined> };
  return engine.registryFactory[name]?.factory ?? null;
}

/**
 * Makes the module's JS-side `_malloc` (the one tfjs's BackendWasm calls for every tensor) throw
 * when the heap cannot hold the request. Why: a wasm32 heap ends at 4 GiB, and tfjs takes malloc's
 * null as offset 0 and writes the tensor there, over the allocator's own records and the first
 * tensors; the next `free` then loops for ever (issue 12: an SFT step at B 8 × T 1024 that never
 * ended, with half the time in the allocator). The emscripten glue's own calls use the export
 * directly and are unaffected.
 */
export function guardMalloc(m: WasmModuleLike): void {
  // The glue's `_malloc` replaces itself by the raw export on its first call
  // (`_malloc = Module._malloc = asm.malloc`): the setter takes that as the function to guard.
  let raw = m._malloc;
  const guarded = (n: number): number => {
    const p = raw(n);
    if (p === 0 && n > 0) {
      const heap = (m.wasmMemory ? m.wasmMemory.buffer : m.HEAPU8.buffer).byteLength;
      throw new QrlhfError(
        `out of memory: the wasm backend could not allocate ${mib(n)} for a tensor (its heap is at ${mib(heap)} of the 4096 MiB ` +
          'a wasm32 heap can address); lower the batch size or the sequence length',
      );
    }
    return p;
  };
  Object.defineProperty(m, '_malloc', {
    configurable: true,
    enumerable: true,
    get: () => guarded,
    set: (f: (n: number) => number) => {
      raw = f;
    },
  });
}

function mib(bytes: number): string {
  return `${Math.ceil(bytes / 2 ** 20)} MiB`;
}

/**
 * Returns null on success, or why the wasm backend cannot be used.
 */
export async function setupWasm(): Promise<string | null> {
  let pkg: WasmPackage;
  try {
    pkg = (await import('@tensorflow/tfjs-backend-wasm')) as unknown as WasmPackage;
  } catch (e) {
    return `failed to load (${e instanceof Error ? e.message : String(e)})`;
  }
  if (prepared) return null;
  prepared = true;
  let threads: number;
  try {
    threads = wantedWasmThreads();
  } catch (e) {
    return e instanceof Error ? e.message : String(e);
  }
  const { registerWasmKernels } = await import('./index.js');
  info.kernels = registerWasmKernels();

  const stockFactory = registryFactory('wasm');
  const alreadyUp = (tf.engine() as unknown as { registry: Record<string, unknown> }).registry['wasm'] !== undefined;
  if (!stockFactory || alreadyUp) {
    info.note = alreadyUp ? 'the wasm backend was initialised before setupWasm()' : 'no wasm backend factory';
    return null;
  }
  const Base = pkg.BackendWasm;
  class QrlhfWasmBackend extends Base {
    override disposeData(dataId: object, force = false): boolean {
      const freed = super.disposeData(dataId, force);
      if (freed) runReleaseHooks(dataId);
      return freed;
    }
  }
  const factory = async (): Promise<tf.KernelBackend> => {
    {
      try {
        const m = await loadThreadedWasm(threads);
        pkg.setThreadsCount(threads);
        guardMalloc(m);
        const backend = new QrlhfWasmBackend(m);
        releaseIdleWorkers(m);
        markHookable(backend);
        info.threads = pkg.getThreadsCount();
        info.poolOnlyForLargeProducts = initPoolSwitch(m, info.threads);
        info.build = threads > 1 ? 'threaded-simd' : 'single-simd';
        return backend;
      } catch (e) {
        info.note = `qrlhf's wasm loader failed (${e instanceof Error ? e.message : String(e)}); using tfjs's, one thread`;
      }
    }
    // tfjs's own loader (single-threaded SIMD build in Node).
    const stock = await stockFactory();
    const sw = (stock as unknown as { wasm?: WasmModuleLike }).wasm;
    if (sw) guardMalloc(sw);
    info.threads = 1;
    info.build = 'stock';
    return stock;
  };
  tf.removeBackend('wasm');
  tf.registerBackend('wasm', factory, 2);
  return null;
}
