/**
 * The stock wasm kernels that qrlhf's kernels replace or call (captured before replacing them).
 */
import * as tf from '@tensorflow/tfjs';
import type { TensorInfoLike, WasmBackendLike } from './heap.js';

export type KernelArgs = {
  inputs: Record<string, TensorInfoLike>;
  backend: WasmBackendLike;
  attrs?: Record<string, unknown>;
};
type KFunc = (args: KernelArgs) => TensorInfoLike;

const saved = new Map<string, tf.KernelConfig>();

/** Remembers tfjs's own wasm kernel for `name` (no-op after the first call). */
export function captureStock(name: string): tf.KernelConfig | undefined {
  if (!saved.has(name)) {
    const k = tf.getKernel(name, 'wasm');
    if (k) saved.set(name, k);
  }
  return saved.get(name);
}

export function stockConfig(name: string): tf.KernelConfig {
  const k = captureStock(name);
  if (!k) throw new Error(`tfjs has no stock wasm kernel ${name}`);
  return k;
}

export function runStock(name: string, args: KernelArgs): TensorInfoLike {
  return (stockConfig(name).kernelFunc as unknown as KFunc)(args);
}

/** Runs a stock kernel's setup (cwrap) on the backend, for kernels we call but replaced. */
export function setupStock(name: string, backend: unknown): void {
  const f = stockConfig(name).setupFunc;
  if (f) f(backend as tf.KernelBackend);
}

/** out = transpose(x, perm) with the stock wasm kernel; the caller disposes the result. */
export function transposeStock(backend: WasmBackendLike, x: TensorInfoLike, perm: number[]): TensorInfoLike {
  return runStock('Transpose', { inputs: { x }, backend, attrs: { perm } });
}
