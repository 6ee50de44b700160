/**
 * GatherV2 for the wasm backend, for the case every model pass makes: rows of a float32 / int32
 * tensor picked along its first axis (the embedding lookup; sequenceLogProbs' response rows and
 * their spreading back). tfjs's wasm kernel walks every output element through a generic index
 * computation: an RLOO step's embedding lookup of 2,400 tokens × 96 took several milliseconds,
 * five times a step, where copying the rows takes a tenth of one. Here each row is one copy on
 * the heap (TypedArray.copyWithin, bytes as they are, so int32 data is exact), one-element rows
 * a plain loop. Other axes and batch dimensions go to tfjs's own kernel. An index outside
 * [0, rows) is an error naming it (tfjs's wasm kernel would read outside the tensor).
 */
import * as tf from '@tensorflow/tfjs';
import { dataOf, heapBuffer, sizeOf, type TensorInfoLike } from './heap.js';
import { runStock, setupStock, type KernelArgs } from './stock.js';

function gatherV2(args: KernelArgs): TensorInfoLike {
  const { backend } = args;
  const x = args.inputs['x']!;
  const indices = args.inputs['indices']!;
  const axis = tf.util.parseAxisParam(Number(args.attrs?.['axis'] ?? 0), x.shape)[0]!;
  const batchDims = Number(args.attrs?.['batchDims'] ?? 0);
  if (axis !== 0 || batchDims !== 0 || (x.dtype !== 'float32' && x.dtype !== 'int32') || indices.dtype !== 'int32' || x.shape.length === 0) {
    return runStock('GatherV2', args);
  }
  const rows = x.shape[0]!;
  const width = sizeOf(x.shape.slice(1));
  const n = sizeOf(indices.shape);
  const out = backend.makeOutput([...indices.shape, ...x.shape.slice(1)], x.dtype);
  if (n === 0 || width === 0) return out;
  const buf = heapBuffer(backend);
  const idx = new Int32Array(buf, dataOf(backend, indices).memoryOffset, n);
  for (let i = 0; i < n; i++) {
    const r = idx[i]!;
    if (r < 0 || r >= rows) {
      backend.disposeData(out.dataId);
      throw new Error(`GatherV2: index ${r} (position ${i}) is not in [0, ${rows - 1}]`);
    }
  }
  // Words copied as int32: exact for either dtype.
  const src = dataOf(backend, x).memoryOffset / 4;
  const dst = dataOf(backend, out).memoryOffset / 4;
  const heap = new Int32Array(buf);
  if (width === 1) {
    for (let i = 0; i < n; i++) heap[dst + i] = heap[src + idx[i]!]!;
  } else {
    for (let i = 0; i < n; i++) {
      const s = src + idx[i]! * width;
      heap.copyWithin(dst + i * width, s, s + width);
    }
  }
  return out;
}

export const gatherV2Config: tf.KernelConfig = {
  kernelName: tf.GatherV2,
  backendName: 'wasm',
  kernelFunc: gatherV2 as unknown as tf.KernelFunc,
  // the stock kernel (other axes) binds its wasm function in its setup
  setupFunc: ((backend: unknown) => setupStock('GatherV2', backend)) as unknown as tf.KernelSetupFunc,
};
