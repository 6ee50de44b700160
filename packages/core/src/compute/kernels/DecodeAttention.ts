/**
 * The wasm kernel of qrlhf's DecodeAttention op (../ops.ts) on the native addon
 * (qrlhf_native.c, decodeAttention): rotary embedding of the step's queries and key, the key and
 * value written in place into preallocated caches, scores, softmax and the weighted sum of values,
 * for every row and kv head in one call. It replaces about sixteen tfjs kernels per layer (split,
 * rotate, concatenations that copy the whole cache at every step, two products, softmax) when the
 * model decodes (LlamaModel.decode). It can run only while the addon is loaded (canRun).
 */
import * as tf from '@tensorflow/tfjs';
import { dataOf, type TensorInfoLike, type WasmBackendLike } from './heap.js';
import { heapF32 } from './copy.js';
import { activeNative } from './native.js';
import { DECODE_ATTENTION, type DecodeAttentionDims } from '../ops.js';
import type { KernelArgs } from './stock.js';

interface NativeAttention {
  decodeAttention(heap: Float32Array, dims: Int32Array, offsets: Uint32Array): void;
}

/** Calls made (for tests: which path decoding took). */
export const decodeAttentionStats = { calls: 0 };

export function decodeAttentionCanRun(): boolean {
  return activeNative() !== null;
}

function decodeAttentionKernel(args: KernelArgs): TensorInfoLike {
  const nat = activeNative() as unknown as NativeAttention | null;
  if (!nat) throw new Error('DecodeAttention needs the native addon');
  const { qkv, cos, sin, bias, kCache, vCache } = args.inputs;
  const { B, Hkv, g, hd, maxLen, past } = args.attrs as unknown as DecodeAttentionDims;
  const backend = args.backend;
  const out = backend.makeOutput([B, Hkv * g * hd], 'float32');
  const off = (t: TensorInfoLike) => dataOf(backend, t).memoryOffset / 4;
  const offsets = Uint32Array.of(off(qkv!), off(cos!), off(sin!), bias ? off(bias) : 0xffffffff, off(kCache!), off(vCache!), off(out));
  nat.decodeAttention(heapF32(backend), Int32Array.of(B, Hkv, g, hd, maxLen, past), offsets);
  decodeAttentionStats.calls++;
  return out;
}

export const decodeAttentionConfig: tf.KernelConfig = {
  kernelName: DECODE_ATTENTION,
  backendName: 'wasm',
  kernelFunc: decodeAttentionKernel as unknown as tf.KernelFunc,
};
