/**
 * BatchMatMul for the wasm backend that reaches XNNPACK's fast path in every layout.
 *
 * tfjs's C++ kernel runs XNNPACK only for an unbatched product with no transposed operand and
 * otherwise falls back to a naive triple loop (~1-3 GFLOP/s). This kernel instead
 *  1. makes the operands plain (row-major, not transposed) with the wasm Transpose kernel, or
 *     computes the transposed product Cᵀ = Bᵀ·Aᵀ when that needs less copying / packing;
 *  2. folds the batch into the rows when the right operand is shared by every batch entry
 *     (x[B,T,d]·W), so a whole layer is one product;
 *  3. otherwise runs one XNNPACK product per batch entry on views of the heap (temporary tensor
 *     ids that point into the operands' memory);
 *  4. keeps a transposed copy of a right operand that is used transposed again and again (the
 *     weights of x·Wᵀ, the tied LM head): XNNPACK caches its packed weights by the right
 *     operand's tensor id, so a persistent plain copy means a persistent packed operator.
 *     The copy is freed when the original's memory is (a release hook of the qrlhf backend);
 *  5. keeps the naive loop when it is cheaper: packing a one-off right operand costs about
 *     11 ns per element, which dominates products with few output rows.
 * When qrlhf's native addon is built (native.ts), every float32 product goes to it instead, in one
 * call for the whole batch, with no copies; the above is the fallback.
 * Numerics: XNNPACK sums in a different order than the naive loop, so results agree with it
 * within float32 rounding (tests compare both against a float64 reference).
 */
import * as tf from '@tensorflow/tfjs';
import {
  dataOf, dropView, isHookable, makeView, onRelease, sizeOf,
  type DataId, type TensorInfoLike, type WasmBackendLike,
} from './heap.js';
import { runStock, setupStock, transposeStock, type KernelArgs } from './stock.js';
import { THREADED_MIN_FLOPS, withThreads } from './pool.js';
import { activeNative, loadNative } from './native.js';
import { heapF32 } from './copy.js';

type XnnFn = (
  aId: number, aShape: Uint8Array, aRank: number, bId: number, bShape: Uint8Array, bRank: number,
  transposeA: number, transposeB: number, outId: number,
) => void;
let xnnCall: XnnFn | null = null;

function setup(backend: unknown): void {
  loadNative();
  setupStock('BatchMatMul', backend);
  setupStock('Transpose', backend);
  const b = backend as WasmBackendLike;
  xnnCall = b.wasm.cwrap('BatchMatMul', null, [
    'number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number',
  ]) as unknown as XnnFn;
}

function shapeBytes(s: number[]): Uint8Array {
  return new Uint8Array(new Int32Array(s).buffer);
}

/**
 * One XNNPACK product out[r, c] = x[r, k] · y[k, c] on C++ tensor ids (all plain); on the thread
 * pool only when it is large enough to gain from it (pool.ts).
 */
function xnnProduct(xId: number, r: number, k: number, yId: number, c: number, outId: number): void {
  const run = () => xnnCall!(xId, shapeBytes([1, r, k]), 3, yId, shapeBytes([1, k, c]), 3, 0, 0, outId);
  if (2 * r * k * c >= THREADED_MIN_FLOPS) withThreads(run);
  else run();
}

// ------------------------------------------------------------ right-operand bookkeeping
interface RightState {
  uses: number;
  /** (k, n) of the XNNPACK operator C++ cached under the tensor's own id, if any. */
  own?: { k: number; n: number };
  /** A plain (transposed) copy kept for a right operand used transposed. */
  plain?: { info: TensorInfoLike; k: number; n: number };
  /** op(B) in the native addon's panel layout, per transpose flag ('N' / 'T'). */
  packed?: Partial<Record<'N' | 'T', { info: TensorInfoLike; k: number; n: number }>>;
}
const rightStates = new WeakMap<DataId, RightState>();

function rightState(backend: WasmBackendLike, t: TensorInfoLike): RightState {
  let s = rightStates.get(t.dataId);
  if (!s) {
    s = { uses: 0 };
    rightStates.set(t.dataId, s);
    if (isHookable(backend)) {
      const st = s;
      onRelease(t.dataId, () => {
        if (st.plain) backend.disposeData(st.plain.info.dataId, true);
        for (const p of Object.values(st.packed ?? {})) backend.disposeData(p.info.dataId, true);
        st.plain = undefined;
        st.packed = undefined;
        st.own = undefined;
      });
    }
  }
  return s;
}

// ------------------------------------------------------------ cost model (seconds)
const NAIVE_RATE = 2e9; // FLOP/s of the stock triple loop
const XNN_RATE = 30e9; // FLOP/s of XNNPACK's product
const PACK = 11e-9; // per element of a right operand packed by XNNPACK
const MOVE = 1.5e-9; // per element transposed
const CALL = 4e-6; // per product

/** Strides to map a flat broadcast batch index to the index of each operand's batch. */
function batchMaps(outerA: number[], outerB: number[], outer: number[]): [number[], number[]] {
  const bo = sizeOf(outer);
  const ia = new Array<number>(bo);
  const ib = new Array<number>(bo);
  const r = outer.length;
  const pa = [...new Array<number>(r - outerA.length).fill(1), ...outerA];
  const pb = [...new Array<number>(r - outerB.length).fill(1), ...outerB];
  for (let o = 0; o < bo; o++) {
    let rem = o;
    let a = 0, b = 0, sa = 1, sb = 1;
    for (let d = r - 1; d >= 0; d--) {
      const dim = outer[d]!;
      const idx = rem % dim;
      rem = Math.floor(rem / dim);
      if (pa[d]! !== 1) a += idx * sa;
      if (pb[d]! !== 1) b += idx * sb;
      sa *= pa[d]!;
      sb *= pb[d]!;
    }
    ia[o] = a;
    ib[o] = b;
  }
  return [ia, ib];
}

export function broadcastOuter(a: number[], b: number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const x = a[a.length - r + i] ?? 1;
    const y = b[b.length - r + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) {
      throw new Error(`matMul: batch dimensions [${a}] and [${b}] do not broadcast`);
    }
    out.push(x === 1 ? y : x);
  }
  return out;
}

/** Which path the last call took (for tests and the benchmark's diagnostics). */
export const matMulStats = { native: 0, packedOperands: 0, naive: 0, folded: 0, batched: 0, swapped: 0, plainCopies: 0 };

/**
 * The whole product on qrlhf's native addon (native.ts), in place on the heap: one call for the
 * batch (a shared right operand with a plain left one folds the batch into rows). A right operand
 * used again and again (weights) is packed once into the addon's panel layout and kept until its
 * memory is released: decoding then streams each weight front to back, and no product repacks it.
 */
function nativeProduct(
  backend: WasmBackendLike, a: TensorInfoLike, b: TensorInfoLike, m: number, k: number, n: number,
  transposeA: boolean, transposeB: boolean, outerA: number[], outerB: number[], outer: number[], outShape: number[],
): TensorInfoLike {
  const nat = activeNative()!;
  const bo = sizeOf(outer);
  const batchB = sizeOf(outerB);
  let packed: TensorInfoLike | null = null;
  if (batchB === 1 && isHookable(backend)) {
    const st = rightState(backend, b);
    st.uses++;
    const key = transposeB ? 'T' : 'N';
    let pk = st.packed?.[key];
    if (pk && (pk.k !== k || pk.n !== n)) {
      backend.disposeData(pk.info.dataId, true);
      pk = undefined;
      delete st.packed![key];
    }
    if (!pk && st.uses >= 2) {
      const info = backend.makeOutput([nat.packedSize(k, n)], 'float32');
      nat.packB(heapF32(backend), k, n, transposeB ? 1 : 0, dataOf(backend, b).memoryOffset / 4, dataOf(backend, info).memoryOffset / 4);
      pk = { info, k, n };
      (st.packed ??= {})[key] = pk;
      matMulStats.packedOperands++;
    }
    if (pk) packed = pk.info;
  }
  const out = backend.makeOutput(outShape, 'float32');
  const a0 = dataOf(backend, a).memoryOffset / 4, b0 = dataOf(backend, b).memoryOffset / 4;
  const c0 = dataOf(backend, out).memoryOffset / 4;
  const heap = heapF32(backend);
  const packedOff = packed ? dataOf(backend, packed).memoryOffset / 4 : -1;
  if (batchB === 1 && !transposeA && sizeOf(outerA) === bo) {
    nat.gemm(heap, bo * m, n, k, 0, transposeB ? 1 : 0, Uint32Array.of(a0, b0, c0), packedOff);
  } else {
    const [ia, ib] = bo === 1 ? [[0], [0]] : batchMaps(outerA, outerB, outer);
    const offs = new Uint32Array(3 * bo);
    for (let o = 0; o < bo; o++) {
      offs[3 * o] = a0 + ia[o]! * m * k;
      offs[3 * o + 1] = b0 + ib[o]! * k * n;
      offs[3 * o + 2] = c0 + o * m * n;
    }
    nat.gemm(heap, m, n, k, transposeA ? 1 : 0, transposeB ? 1 : 0, offs, packedOff);
  }
  matMulStats.native++;
  return out;
}

export function batchMatMulImpl(args: KernelArgs): TensorInfoLike {
  const { inputs, backend } = args;
  const a = inputs['a']!;
  const b = inputs['b']!;
  const transposeA = Boolean(args.attrs?.['transposeA']);
  const transposeB = Boolean(args.attrs?.['transposeB']);
  if (a.dtype !== 'float32' || b.dtype !== 'float32' || xnnCall === null) return runStock('BatchMatMul', args);
  const ra = a.shape.length, rb = b.shape.length;
  const m = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
  const k = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
  const kb = transposeB ? b.shape[rb - 1]! : b.shape[rb - 2]!;
  const n = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
  if (k !== kb) return runStock('BatchMatMul', args); // stock raises tfjs's own error
  const outerA = a.shape.slice(0, -2), outerB = b.shape.slice(0, -2);
  const outer = broadcastOuter(outerA, outerB);
  const batchA = sizeOf(outerA), batchB = sizeOf(outerB), bo = sizeOf(outer);
  const outShape = [...outer, m, n];
  if (m === 0 || n === 0 || k === 0 || bo === 0) return runStock('BatchMatMul', args);
  if (activeNative()) return nativeProduct(backend, a, b, m, k, n, transposeA, transposeB, outerA, outerB, outer, outShape);

  // A transpose of a matrix with a dimension of 1 moves no memory: only copy when it does.
  const copyA = transposeA && m > 1 && k > 1; // direct needs plain A [m, k]
  const copyB = transposeB && n > 1 && k > 1; // direct needs plain B [k, n]
  const copyAs = !transposeA && m > 1 && k > 1; // swapped needs plain Aᵀ [k, m]
  const copyBs = !transposeB && n > 1 && k > 1; // swapped needs plain Bᵀ [n, k]
  const flops = 2 * bo * m * n * k;
  const naive = flops / NAIVE_RATE;
  const compute = flops / XNN_RATE;
  // Direct orientation: out = plain(A) · plain(B).
  let direct: number;
  let st: RightState | null = null;
  if (batchB === 1) {
    st = rightState(backend, b);
    const warm = copyB
      ? (st.plain !== undefined && st.plain.k === k && st.plain.n === n) || (st.uses >= 2 && isHookable(backend))
      : (st.own !== undefined && st.own.k === k && st.own.n === n) || (st.own === undefined && st.uses >= 2);
    direct = compute + CALL + (copyA ? batchA * m * k * MOVE : 0) + (warm ? 0 : k * n * (PACK + (copyB ? MOVE : 0)));
  } else {
    direct = compute + bo * CALL + (copyA ? batchA * m * k * MOVE : 0) +
      (copyB ? batchB * k * n * MOVE : 0) + bo * k * n * PACK;
  }
  // Swapped orientation: outᵀ = plain(Bᵀ) · plain(Aᵀ), then transpose the result.
  const swapped = compute + (batchA === 1 ? CALL : bo * CALL) + (copyBs ? batchB * k * n * MOVE : 0) +
    (copyAs ? batchA * m * k * MOVE : 0) + (batchA === 1 ? 1 : bo) * k * m * PACK +
    (m > 1 && n > 1 ? bo * m * n * MOVE : 0);
  if (st) st.uses++;
  // tfjs's loop broadcasts only when one operand's batch is the whole output batch.
  const stockOk = batchA === bo || batchB === bo;
  if (stockOk && naive <= direct && naive <= swapped) {
    matMulStats.naive++;
    return runStock('BatchMatMul', args);
  }
  const temps: TensorInfoLike[] = [];
  const plain = (t: TensorInfoLike, batch: number, rows: number, cols: number, copy: boolean): TensorInfoLike =>
    copy ? keep(temps, transposeStock(backend, reshaped(t, [batch, cols, rows]), [0, 2, 1])) : t;
  try {
    if (direct <= swapped) {
      const x = plain(a, batchA, m, k, copyA);
      if (batchB === 1) {
        const s = st!;
        let yId: number;
        let dropY = false;
        if (copyB) {
          if (s.plain && (s.plain.k !== k || s.plain.n !== n)) {
            backend.disposeData(s.plain.info.dataId);
            s.plain = undefined;
          }
          if (!s.plain && s.uses >= 2 && isHookable(backend)) {
            s.plain = { info: transposeStock(backend, reshaped(b, [n, k]), [1, 0]), k, n };
            matMulStats.plainCopies++;
          }
          yId = dataOf(backend, s.plain ? s.plain.info : plain(b, 1, k, n, true)).id;
        } else if (s.own === undefined || (s.own.k === k && s.own.n === n)) {
          // XNNPACK caches the packed operator under this tensor's own id.
          yId = dataOf(backend, b).id;
          s.own = { k, n };
        } else {
          yId = makeView(backend, dataOf(backend, b).memoryOffset, k * n);
          dropY = true;
        }
        matMulStats.folded++;
        // The right operand is shared: the rows of all batch entries (bo === batchA) are one
        // contiguous [bo·m, k] matrix, so the whole batch is one product.
        const out = backend.makeOutput([bo * m, n], 'float32');
        xnnProduct(dataOf(backend, x).id, bo * m, k, yId, n, dataOf(backend, out).id);
        if (dropY) dropView(backend, yId);
        out.shape = outShape;
        return out;
      }
      const y = plain(b, batchB, k, n, copyB);
      matMulStats.batched++;
      const out = backend.makeOutput(outShape, 'float32');
      perEntry(backend, x, m, k, y, n, out, outerA, outerB, outer);
      return out;
    }
    matMulStats.swapped++;
    const xs = plain(b, batchB, n, k, copyBs);
    const ys = plain(a, batchA, k, m, copyAs);
    const tmp = backend.makeOutput([bo, n, m], 'float32');
    if (batchA === 1 && batchB === bo) {
      // One right operand (Aᵀ) for every entry: fold the batch of Bᵀ into rows.
      const yId = makeView(backend, dataOf(backend, ys).memoryOffset, k * m);
      xnnProduct(dataOf(backend, xs).id, bo * n, k, yId, m, dataOf(backend, tmp).id);
      dropView(backend, yId);
    } else {
      perEntry(backend, xs, n, k, ys, m, tmp, outerB, outerA, outer);
    }
    if (m === 1 || n === 1) {
      tmp.shape = outShape;
      return tmp;
    }
    keep(temps, tmp);
    const out = transposeStock(backend, tmp, [0, 2, 1]);
    out.shape = outShape;
    return out;
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

function keep(list: TensorInfoLike[], t: TensorInfoLike): TensorInfoLike {
  list.push(t);
  return t;
}
function reshaped(t: TensorInfoLike, shape: number[]): TensorInfoLike {
  return { dataId: t.dataId, shape, dtype: t.dtype };
}

/** out[o] = x[ix(o)] · y[iy(o)] for every broadcast batch entry o, on heap views. */
function perEntry(
  backend: WasmBackendLike, x: TensorInfoLike, r: number, k: number,
  y: TensorInfoLike, c: number, out: TensorInfoLike, outerX: number[], outerY: number[], outer: number[],
): void {
  const [ix, iy] = batchMaps(outerX, outerY, outer);
  const xo = dataOf(backend, x).memoryOffset, yo = dataOf(backend, y).memoryOffset;
  const oo = dataOf(backend, out).memoryOffset;
  for (let o = 0; o < ix.length; o++) {
    const xId = makeView(backend, xo + ix[o]! * r * k * 4, r * k);
    const yId = makeView(backend, yo + iy[o]! * k * c * 4, k * c);
    const outId = makeView(backend, oo + o * r * c * 4, r * c);
    xnnProduct(xId, r, k, yId, c, outId);
    dropView(backend, xId);
    dropView(backend, yId);
    dropView(backend, outId);
  }
}

export const batchMatMulConfig: tf.KernelConfig = {
  kernelName: tf.BatchMatMul,
  backendName: 'wasm',
  setupFunc: setup as unknown as tf.KernelSetupFunc,
  kernelFunc: batchMatMulImpl as unknown as tf.KernelFunc,
};
