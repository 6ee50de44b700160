/**
 * SplitV for the wasm backend on the native addon: all outputs in one call of strided row copies.
 * tfjs's wasm SplitV slices each output with JavaScript loops when the slice is not contiguous,
 * which made splitting fused q/k/v products and the rotary halves the slowest kernel of a
 * training step. Without the addon, or for other dtypes, tfjs's own kernel runs.
 */
import * as tf from '@tensorflow/tfjs';
import { copyable, copyAlongAxis } from './copy.js';
import { activeNative } from './native.js';
import { runStock, type KernelArgs } from './stock.js';
import type { TensorInfoLike } from './heap.js';

function splitV(args: KernelArgs): TensorInfoLike[] {
  const x = args.inputs['x']!;
  const { backend } = args;
  const axis = tf.util.parseAxisParam(args.attrs!['axis'] as number, x.shape)[0]!;
  const sizes = tf.backend_util.prepareSplitSize(x as unknown as tf.Tensor, args.attrs!['numOrSizeSplits'] as number[] | number, axis);
  if (!activeNative() || !copyable(x) || x.shape.some((d) => d === 0)) {
    return runStock('SplitV', args) as unknown as TensorInfoLike[];
  }
  const outs = sizes.map((size) => {
    const shape = x.shape.slice();
    shape[axis] = size;
    return backend.makeOutput(shape, x.dtype);
  });
  copyAlongAxis(backend, x, outs, axis, 'split');
  return outs;
}

export const splitVConfig: tf.KernelConfig = {
  kernelName: tf.SplitV,
  backendName: 'wasm',
  kernelFunc: splitV as unknown as tf.KernelFunc,
};
