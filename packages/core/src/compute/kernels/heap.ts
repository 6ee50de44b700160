/**
 * Access to the wasm backend's internals that qrlhf's kernels need: a tensor's id and offset on
 * the wasm heap, temporary tensor ids that point into the middle of another tensor's memory
 * ("views"), and a hook that runs when a tensor's memory is released (only on the backend that
 * setupWasm() constructs; see QrlhfWasmBackend in setup.ts).
 */
import type { WasmModuleLike } from './wasm-module.js';

export type DataId = object;
export interface TensorInfoLike {
  dataId: DataId;
  shape: number[];
  dtype: string;
}
interface TensorData {
  id: number;
  memoryOffset: number;
  shape: number[];
  dtype: string;
  refCount: number;
}
export interface WasmBackendLike {
  wasm: WasmModuleLike;
  dataIdMap: { get(d: DataId): TensorData | undefined; has(d: DataId): boolean };
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: string, memoryOffset?: number, values?: unknown): TensorInfoLike;
  disposeData(dataId: DataId, force?: boolean): boolean;
}

/** The backend's record of a tensor (id, heap offset). */
export function dataOf(backend: WasmBackendLike, t: TensorInfoLike): TensorData {
  const d = backend.dataIdMap.get(t.dataId);
  if (!d) throw new Error('qrlhf wasm kernel: tensor not found on the wasm backend');
  return d;
}

/** The current heap (the memory can grow, which replaces its buffer). */
export function heapBuffer(backend: WasmBackendLike): ArrayBufferLike {
  const m = backend.wasm;
  return m.wasmMemory ? m.wasmMemory.buffer : m.HEAPU8.buffer;
}

export function f32View(backend: WasmBackendLike, t: TensorInfoLike, size: number): Float32Array {
  return new Float32Array(heapBuffer(backend), dataOf(backend, t).memoryOffset, size);
}

/** Registers a temporary C++ tensor id for `size` floats at `offset`; free it with dropView. */
export function makeView(backend: WasmBackendLike, offset: number, size: number): number {
  const id = backend.dataIdNextNumber++;
  backend.wasm.tfjs.registerTensor(id, size, offset);
  return id;
}
export function dropView(backend: WasmBackendLike, id: number): void {
  // Also releases any XNNPACK operator cached for this id.
  backend.wasm.tfjs.disposeData(id);
}

// ---------------------------------------------------------------- release hooks
const hooks = new WeakMap<DataId, (() => void)[]>();
let hookable: WeakSet<object> = new WeakSet();

/** Marks a backend instance as one that calls runReleaseHooks when memory is freed. */
export function markHookable(backend: object): void {
  hookable.add(backend);
}
export function isHookable(backend: object): boolean {
  return hookable.has(backend);
}
/** Runs `fn` when the memory of `dataId` is released (only call when isHookable(backend)). */
export function onRelease(dataId: DataId, fn: () => void): void {
  const list = hooks.get(dataId);
  if (list) list.push(fn);
  else hooks.set(dataId, [fn]);
}
export function runReleaseHooks(dataId: DataId): void {
  const list = hooks.get(dataId);
  if (!list) return;
  hooks.delete(dataId);
  for (const fn of list) fn();
}
/** For tests: forget which backends are hookable. */
export function resetHookable(): void {
  hookable = new WeakSet();
}

export function sizeOf(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}
