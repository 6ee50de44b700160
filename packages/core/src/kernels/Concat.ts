/**
 * Concat for the wasm backend on the native addon: every input in one call of strided row copies
 * (the gradient of a split). Without the addon, or for other dtypes, tfjs's own kernel runs.
 */
import * as tf from '@tensorflow/tfjs';
import { aroundAxis, copyable, copyBlocks, type Block } from './copy.js';
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
  const [outer, inner] = aroundAxis(outShape, axis);
  const total = outShape[axis]!;
  const blocks: Block[] = [];
  let start = 0;
  for (const t of parts) {
    const s = t.shape[axis]!;
    blocks.push({ rows: outer, src: t, srcStart: 0, srcStride: s * inner, dst: out, dstStart: start * inner, dstStride: total * inner, width: s * inner });
    start += s;
  }
  copyBlocks(backend, blocks);
  return out;
}

export const concatConfig: tf.KernelConfig = {
  kernelName: tf.Concat,
  backendName: 'wasm',
  kernelFunc: concat as unknown as tf.KernelFunc,
};
