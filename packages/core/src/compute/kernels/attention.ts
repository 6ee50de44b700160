/**
 * One decoding step of attention on the native addon (qrlhf_native.c, decodeAttention): rotary
 * embedding of the step's queries and key, the key and value written in place into preallocated
 * caches, scores, softmax and the weighted sum of values, for every row and kv head in one call.
 * It replaces about sixteen tfjs kernels per layer (split, rotate, concatenations that copy the
 * whole cache at every step, two products, softmax) when the model decodes (LlamaModel.decode).
 *
 * The caches are tensors this module writes into: they must be made by newDecodeCache() and never
 * shared (no clone, no Identity) with anything else.
 */
import * as tf from '@tensorflow/tfjs';
import { dataOf, type WasmBackendLike } from './heap.js';
import { heapF32 } from './copy.js';
import { activeNative } from './native.js';

export interface DecodeAttentionDims {
  B: number;
  Hkv: number;
  /** query heads per kv head */
  g: number;
  hd: number;
  maxLen: number;
  /** positions already in the caches; the step writes position `past` */
  past: number;
}

interface NativeAttention {
  decodeAttention(heap: Float32Array, dims: Int32Array, offsets: Uint32Array): void;
}

/** Calls made (for tests: which path decoding took). */
export const decodeAttentionStats = { calls: 0 };

/** True when decodeAttention can run (wasm backend with the native addon). */
export function decodeAttentionAvailable(): boolean {
  return tf.getBackend() === 'wasm' && activeNative() !== null;
}

/** A zero cache [B, Hkv, maxLen, hd] holding `prefix` ([B, Hkv, past, hd], may be null) in front. */
export function newDecodeCache(prefix: tf.Tensor4D | null, B: number, Hkv: number, maxLen: number, hd: number): tf.Tensor4D {
  return tf.tidy(() => {
    const past = prefix ? prefix.shape[2] : 0;
    const zeros = tf.zeros([B, Hkv, maxLen - past, hd]) as tf.Tensor4D;
    // concat always makes a new buffer here (two non-empty parts)
    return prefix && past > 0 ? (tf.concat([prefix, zeros], 2) as tf.Tensor4D) : zeros;
  });
}

/**
 * qkv [B, Hkv (g + 2) hd] (unrotated projections), cos / sin [B, Hkv (g + 2) hd], bias [B, past + 1]
 * or null; writes the step's key / value into kCache / vCache at `past` and returns the attention
 * output [B, Hkv g hd] (a tensor of the current scope).
 */
export function decodeAttention(
  qkv: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D, bias: tf.Tensor2D | null,
  kCache: tf.Tensor4D, vCache: tf.Tensor4D, dims: DecodeAttentionDims,
): tf.Tensor2D {
  const nat = activeNative() as unknown as NativeAttention | null;
  if (!nat || tf.getBackend() !== 'wasm') throw new Error('decodeAttention needs the wasm backend with the native addon');
  const { B, Hkv, g, hd, maxLen, past } = dims;
  const backend = tf.backend() as unknown as WasmBackendLike;
  const out = backend.makeOutput([B, Hkv * g * hd], 'float32');
  const off = (t: { dataId: object; shape: number[]; dtype: string }) => dataOf(backend, t).memoryOffset / 4;
  const offsets = Uint32Array.of(off(qkv), off(cos), off(sin), bias ? off(bias) : 0xffffffff, off(kCache), off(vCache), off(out));
  nat.decodeAttention(heapF32(backend), Int32Array.of(B, Hkv, g, hd, maxLen, past), offsets);
  decodeAttentionStats.calls++;
  return tf.engine().makeTensorFromTensorInfo(out as unknown as tf.TensorInfo) as tf.Tensor2D;
}
