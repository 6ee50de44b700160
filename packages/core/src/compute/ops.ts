/**
 * qrlhf's own ops: computations tfjs has no op for, which the language-model library calls by
 * name through tfjs's kernel registry (`tf.engine().runKernel`) and a backend may implement as a
 * kernel (one file per kernel under kernels/). The library never imports a kernel: it asks
 * whether the current backend has one that can run now, and falls back to plain tfjs ops when not.
 *
 *   DecodeAttention   one decoding step of attention on caches written in place (kernels/DecodeAttention.ts)
 */
import * as tf from '@tensorflow/tfjs';

/** The registry name of the decoding-attention op. */
export const DECODE_ATTENTION = 'QrlhfDecodeAttention';

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

/** Per `op/backend`, whether its registered kernel can run now (a native addon may be switched off). */
const runnable = new Map<string, () => boolean>();

/** Registers a kernel for one of the ops above, with a test of whether it can run at call time. */
export function registerOpKernel(config: tf.KernelConfig, canRun: () => boolean): void {
  if (tf.getKernel(config.kernelName, config.backendName)) tf.unregisterKernel(config.kernelName, config.backendName);
  tf.registerKernel(config);
  runnable.set(`${config.kernelName}/${config.backendName}`, canRun);
}

function canRunOp(name: string): boolean {
  const b = tf.getBackend();
  return tf.getKernel(name, b) !== undefined && (runnable.get(`${name}/${b}`)?.() ?? false);
}

/** True when the current backend can run decodeAttention (wasm with qrlhf's native addon). */
export function decodeAttentionAvailable(): boolean {
  return canRunOp(DECODE_ATTENTION);
}

/**
 * One decoding step of attention for every row and kv head: qkv [B, Hkv (g + 2) hd] are the step's
 * unrotated projections grouped per kv head (its g queries, its key, its value), cos / sin the
 * rotary rows of the same layout (queries pre-scaled by 1/sqrt(hd)), bias [B, past + 1] additive
 * (or null: nothing hidden). Writes the step's rotated key and its value into kCache / vCache
 * [B, Hkv, maxLen, hd] at position `past` and returns the attention output [B, Hkv g hd].
 * The caches are written in place: they must not share memory with any other tensor (make them
 * with a concat or zeros of their own, never a clone or reshape of another tensor).
 */
export function decodeAttention(
  qkv: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D, bias: tf.Tensor2D | null,
  kCache: tf.Tensor4D, vCache: tf.Tensor4D, dims: DecodeAttentionDims,
): tf.Tensor2D {
  const inputs: tf.NamedTensorMap = bias ? { qkv, cos, sin, bias, kCache, vCache } : { qkv, cos, sin, kCache, vCache };
  return tf.engine().runKernel(DECODE_ATTENTION, inputs, { ...dims }) as tf.Tensor2D;
}
