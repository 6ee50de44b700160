/**
 * UnsortedSegmentSum for the wasm backend (tfjs ships none): out[s, ...] = Σ_{i: ids[i] = s} x[i, ...].
 * It is the gradient of gather (training an embedding). Runs directly on the wasm heap; ids
 * outside [0, numSegments) are skipped, as TensorFlow does. float32 sums are rounded to float32
 * after every addition (the same as a float32 accumulator); int32 sums wrap like int32.
 */
import * as tf from '@tensorflow/tfjs';
import { dataOf, heapBuffer, sizeOf, type TensorInfoLike, type WasmBackendLike } from './heap.js';
import type { KernelArgs } from './stock.js';

export function unsortedSegmentSumImpl(args: KernelArgs): TensorInfoLike {
  const { inputs, backend } = args;
  const x = inputs['x']!;
  const ids = inputs['segmentIds']!;
  const numSegments = Number(args.attrs?.['numSegments']);
  if (!Number.isInteger(numSegments) || numSegments < 0) {
    throw new Error(`UnsortedSegmentSum: numSegments must be a non-negative integer, got ${numSegments}`);
  }
  if (ids.dtype !== 'int32') throw new Error(`UnsortedSegmentSum: segmentIds must be int32, got ${ids.dtype}`);
  if (x.dtype !== 'float32' && x.dtype !== 'int32') {
    throw new Error(`UnsortedSegmentSum: x must be float32 or int32, got ${x.dtype}`);
  }
  // segmentIds cover the leading dimensions of x; the rest is one row of `inner` values.
  const idShape = ids.shape;
  for (let d = 0; d < idShape.length; d++) {
    if (x.shape[d] !== idShape[d]) {
      throw new Error(`UnsortedSegmentSum: segmentIds shape [${idShape}] must be a prefix of x shape [${x.shape}]`);
    }
  }
  const rows = sizeOf(idShape);
  const innerShape = x.shape.slice(idShape.length);
  const inner = sizeOf(innerShape);
  const out = backend.makeOutput([numSegments, ...innerShape], x.dtype);
  const buf = heapBuffer(backend);
  const idv = new Int32Array(buf, dataOf(backend, ids).memoryOffset, rows);
  const total = numSegments * inner;
  if (x.dtype === 'float32') {
    const o = new Float32Array(buf, dataOf(backend, out).memoryOffset, total);
    const xv = new Float32Array(buf, dataOf(backend, x).memoryOffset, rows * inner);
    o.fill(0);
    for (let i = 0; i < rows; i++) {
      const s = idv[i]!;
      if (s < 0 || s >= numSegments) continue;
      const ob = s * inner, xb = i * inner;
      for (let j = 0; j < inner; j++) o[ob + j] += xv[xb + j]!;
    }
  } else {
    const o = new Int32Array(buf, dataOf(backend, out).memoryOffset, total);
    const xv = new Int32Array(buf, dataOf(backend, x).memoryOffset, rows * inner);
    o.fill(0);
    for (let i = 0; i < rows; i++) {
      const s = idv[i]!;
      if (s < 0 || s >= numSegments) continue;
      const ob = s * inner, xb = i * inner;
      for (let j = 0; j < inner; j++) o[ob + j] = (o[ob + j]! + xv[xb + j]!) | 0;
    }
  }
  return out;
}

export const unsortedSegmentSumConfig: tf.KernelConfig = {
  kernelName: tf.UnsortedSegmentSum,
  backendName: 'wasm',
  kernelFunc: unsortedSegmentSumImpl as unknown as tf.KernelFunc,
};
