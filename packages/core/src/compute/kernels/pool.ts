/**
 * When the XNNPACK thread pool is used. Waking the second thread costs tens of microseconds, and
 * much more when another process holds that core; for the hundreds of small kernels of a decoding
 * step that is slower than one thread (measured: 5m decoding at batch 1 went from 7.5 to 29 ms a
 * step with the pool always on, on a loaded machine). So the pool is off by default and turned on
 * only around large products (BatchMatMul decides, see useThreads).
 *
 * Mechanism: tfjs's C++ passes its global `threadpool` pointer to every XNNPACK run, and NULL
 * means "run on the calling thread". The pointer's heap address is read from the binary
 * (threadpoolSlot in wasm-module.ts) and verified here: with 0 written there, tfjs's own
 * get_threads_count() must say -1 (no pool), and with the pointer back, the pool's size. If the
 * check fails the pool simply stays on for everything.
 */
import type { WasmModuleLike } from './wasm-module.js';

interface PoolState { heap: () => Int32Array; slot: number; ptr: number }
let state: PoolState | null = null;

/** Products of at least this many FLOPs use the pool (about 1 ms on one thread: waking a thread
 *  that another process has preempted costs up to ~1 ms on a shared machine). */
export const THREADED_MIN_FLOPS = 2.5e7;

/** Turns the pool off by default if the slot checks out; returns whether it did. */
export function initPoolSwitch(m: WasmModuleLike, threads: number): boolean {
  state = null;
  const slot = m.qrlhfPoolSlot;
  if (slot == null || threads <= 1 || slot % 4 !== 0) return false;
  const heap = (): Int32Array => new Int32Array(m.wasmMemory ? m.wasmMemory.buffer : m.HEAPU8.buffer);
  const i = slot >> 2;
  const ptr = heap()[i]!;
  if (ptr === 0 || m.tfjs.getThreadsCount() !== threads) return false;
  heap()[i] = 0;
  const off = m.tfjs.getThreadsCount();
  heap()[i] = ptr;
  const on = m.tfjs.getThreadsCount();
  if (off !== -1 || on !== threads) return false;
  heap()[i] = 0;
  state = { heap, slot: i, ptr };
  return true;
}

export function poolSwitchActive(): boolean {
  return state !== null;
}

/** Runs fn with the thread pool on (when the switch is active; otherwise it is always on). */
export function withThreads<T>(fn: () => T): T {
  const s = state;
  if (!s) return fn();
  s.heap()[s.slot] = s.ptr;
  try {
    return fn();
  } finally {
    s.heap()[s.slot] = 0;
  }
}
