/**
 * Concat for the wasm backend on the native addon: every input in one call of strided row copies
 * (the gradient of a split). Without the addon, or for other dtypes, tfjs's own kernel runs.
 */
import * as tf from '@tensorflow/tfjs';
import { copyable, copyAlongAxis } from './copy.js';
import { activeNative } from './native.js';
import { runStock, type KernelArgs } from './stock.js';
import type { TensorInfoLike, WasmBackendLike } from './heap.js';

function concat(args: { inputs: TensorInfoLike[]; backend: WasmBackendLike; attrs?: Record<string, unknown> }): TensorInfoLike {
  const { inputs, backend } = args;
  const list = Array.from(inputs);
  const first = list[0];
  const stock = () => runStock('Concat', args as unknown as KernelArgs);
  if (!activeNative() || !first || list.some((t) => !copyable(t) || t.dtype !== first.dtype)) return stock();
  const axis = tf.util.parseAxisParam(args.attrs!['axis'] as number, first.shape)[0]!;
  const parts = list.filter((t) => tf.util.sizeFromShape(t.shape) > 0);
  if (parts.length < 2) return stock();
  const outShape = tf.backend_util.computeOutShape(parts.map((t) => t.shape), axis);
  const out = backend.makeOutput(outShape, first.dtype);
  copyAlongAxis(backend, out, parts, axis, 'concat');
  return out;
}

export const concatConfig: tf.KernelConfig = {
  kernelName: tf.Concat,
  backendName: 'wasm',
  kernelFunc: concat as unknown as tf.KernelFunc,
};
