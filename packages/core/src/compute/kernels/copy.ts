/**
 * Strided block copies on the wasm heap through the native addon (split and concatenation of
 * 4-byte data along any axis are row copies of an [outer, axis · inner] view).
 */
import { dataOf, heapBuffer, sizeOf, type TensorInfoLike, type WasmBackendLike } from './heap.js';
import { activeNative } from './native.js';

let heapCache: { buf: ArrayBufferLike; f32: Float32Array } | null = null;
/** The whole heap as floats (cached until the memory grows). */
export function heapF32(backend: WasmBackendLike): Float32Array {
  const buf = heapBuffer(backend);
  if (!heapCache || heapCache.buf !== buf) heapCache = { buf, f32: new Float32Array(buf) };
  return heapCache.f32;
}

/** Data the copy kernels can move as 4-byte words. */
export function copyable(t: TensorInfoLike): boolean {
  return t.dtype === 'float32' || t.dtype === 'int32';
}

interface Block {
  rows: number;
  src: TensorInfoLike;
  /** floats from the start of src */
  srcStart: number;
  srcStride: number;
  dst: TensorInfoLike;
  dstStart: number;
  dstStride: number;
  width: number;
}

/** Runs the blocks in one native call (the addon must be active). */
function copyBlocks(backend: WasmBackendLike, blocks: Block[]): void {
  const spec = new Uint32Array(6 * blocks.length);
  blocks.forEach((b, i) => {
    spec[6 * i] = b.rows;
    spec[6 * i + 1] = dataOf(backend, b.src).memoryOffset / 4 + b.srcStart;
    spec[6 * i + 2] = b.srcStride;
    spec[6 * i + 3] = dataOf(backend, b.dst).memoryOffset / 4 + b.dstStart;
    spec[6 * i + 4] = b.dstStride;
    spec[6 * i + 5] = b.width;
  });
  activeNative()!.copyBlocks(heapF32(backend), spec);
}

/** [outer, inner] of a shape around `axis` (outer: product before it, inner: after it). */
function aroundAxis(shape: readonly number[], axis: number): [number, number] {
  return [sizeOf(shape.slice(0, axis)), sizeOf(shape.slice(axis + 1))];
}

/**
 * Copies between `whole` and `parts`, its consecutive slices along `axis` in order: 'split' fills
 * the parts from the whole, 'concat' the whole from the parts. One native call of row copies.
 */
export function copyAlongAxis(
  backend: WasmBackendLike, whole: TensorInfoLike, parts: TensorInfoLike[], axis: number, direction: 'split' | 'concat',
): void {
  const [outer, inner] = aroundAxis(whole.shape, axis);
  const wholeStride = whole.shape[axis]! * inner;
  const blocks: Block[] = [];
  let start = 0;
  for (const p of parts) {
    const width = p.shape[axis]! * inner;
    if (width > 0) {
      const w = { t: whole, start, stride: wholeStride };
      const q = { t: p, start: 0, stride: width };
      const [src, dst] = direction === 'split' ? [w, q] : [q, w];
      blocks.push({ rows: outer, src: src.t, srcStart: src.start, srcStride: src.stride, dst: dst.t, dstStart: dst.start, dstStride: dst.stride, width });
    }
    start += width;
  }
  copyBlocks(backend, blocks);
}
