/**
 * SplitV for the wasm backend on the native addon: all outputs in one call of strided row copies.
 * tfjs's wasm SplitV slices each output with JavaScript loops when the slice is not contiguous,
 * which made splitting fused q/k/v products and the rotary halves the slowest kernel of a
 * training step. Without the addon, or for other dtypes, tfjs's own kernel runs.
 */
import * as tf from '@tensorflow/tfjs';
import { aroundAxis, copyable, copyBlocks, type Block } from './copy.js';
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
  const [outer, inner] = aroundAxis(x.shape, axis);
  const len = x.shape[axis]!;
  const outs: TensorInfoLike[] = [];
  const blocks: Block[] = [];
  let start = 0;
  for (const s of sizes) {
    const shape = x.shape.slice();
    shape[axis] = s;
    const out = backend.makeOutput(shape, x.dtype);
    outs.push(out);
    if (s > 0) blocks.push({ rows: outer, src: x, srcStart: start * inner, srcStride: len * inner, dst: out, dstStart: 0, dstStride: s * inner, width: s * inner });
    start += s;
  }
  copyBlocks(backend, blocks);
  return outs;
}

export const splitVConfig: tf.KernelConfig = {
  kernelName: tf.SplitV,
  backendName: 'wasm',
  kernelFunc: splitV as unknown as tf.KernelFunc,
};
