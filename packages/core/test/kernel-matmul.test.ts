// qrlhf's wasm BatchMatMul / _FusedMatMul against a float64 reference and tfjs's own kernel, on
// random shapes (tiny, odd, the ones a Llama uses), every transpose combination and batch
// broadcasting. The bound is the classic one for a float32 dot product summed in any order:
// |c - exact| <= k·eps·Σ|a_q·b_q| (eps = 2^-24), so the test holds whatever order XNNPACK sums in.
import test from 'ava';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../src/compute/backend.js';
import { matMulStats, nativeInfo, setNativeEnabled, loadNative } from '../src/compute/kernels/index.js';
import { stockConfig } from '../src/compute/kernels/stock.js';
import { wasmInfo } from '../src/compute/kernels/setup.js';

const EPS = 2 ** -24;

function rnd(shape: number[], seed: number): tf.Tensor {
  return tf.randomUniform(shape, -1, 1, 'float32', seed);
}

/** float64 product with broadcast batch dims; also returns Σ|a·b| per output element. */
function reference(a: tf.Tensor, b: tf.Tensor, tA: boolean, tB: boolean) {
  const ra = a.shape.length, rb = b.shape.length;
  const m = tA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
  const k = tA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
  const n = tB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
  const oa = a.shape.slice(0, -2), ob = b.shape.slice(0, -2);
  const r = Math.max(oa.length, ob.length);
  const pa = [...Array<number>(r - oa.length).fill(1), ...oa];
  const pb = [...Array<number>(r - ob.length).fill(1), ...ob];
  const outer = pa.map((x, i) => (x === 1 ? pb[i]! : x));
  const bo = outer.reduce((x, y) => x * y, 1);
  const ad = a.dataSync(), bd = b.dataSync();
  const val = new Float64Array(bo * m * n), mag = new Float64Array(bo * m * n);
  for (let o = 0; o < bo; o++) {
    let rem = o, ia = 0, ib = 0, sa = 1, sb = 1;
    for (let d = r - 1; d >= 0; d--) {
      const idx = rem % outer[d]!;
      rem = Math.floor(rem / outer[d]!);
      if (pa[d] !== 1) ia += idx * sa;
      if (pb[d] !== 1) ib += idx * sb;
      sa *= pa[d]!;
      sb *= pb[d]!;
    }
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0, g = 0;
        for (let q = 0; q < k; q++) {
          const av = tA ? ad[ia * m * k + q * m + i]! : ad[ia * m * k + i * k + q]!;
          const bv = tB ? bd[ib * k * n + j * k + q]! : bd[ib * k * n + q * n + j]!;
          s += av * bv;
          g += Math.abs(av * bv);
        }
        val[o * m * n + i * n + j] = s;
        mag[o * m * n + i * n + j] = g;
      }
    }
  }
  return { val, mag, shape: [...outer, m, n], k };
}

function stockMatMul(a: tf.Tensor, b: tf.Tensor, tA: boolean, tB: boolean): tf.Tensor {
  const info = (stockConfig('BatchMatMul').kernelFunc as unknown as (x: object) => tf.TensorInfo)({
    inputs: { a, b }, backend: tf.backend(), attrs: { transposeA: tA, transposeB: tB },
  });
  return tf.engine().makeTensorFromTensorInfo(info);
}

test.before(async () => {
  await initBackend('wasm', { quiet: true });
});

test('wasm backend runs qrlhf kernels', (t) => {
  t.is(tf.getBackend(), 'wasm');
  t.true(wasmInfo().kernels);
});

const shapes: [number, number, number][] = [
  [1, 1, 1], [1, 7, 5], [3, 5, 2], [2, 1, 3], [17, 33, 9], [64, 64, 64], [31, 37, 129], [96, 64, 80],
  [1, 256, 1024], [12, 256, 512], [256, 128, 8], [8, 256, 128],
];
const batches: [number[], number[]][] = [[[], []], [[2], [2]], [[3], []], [[], [3]], [[2, 3], [1, 3]], [[2, 1], [1, 3]]];

/** Checks every shape × layout × batch combination; returns how many products were checked. */
function checkLayouts(t: import('ava').ExecutionContext, list: [number, number, number][], seed0: number): number {
  let seed = seed0;
  let checked = 0;
  for (const [m, k, n] of list) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        for (const [ba, bb] of batches) {
          if (m * k * n > 100_000 && ba.length + bb.length > 0) continue;
          const a = rnd([...ba, ...(tA ? [k, m] : [m, k])], seed++);
          const b = rnd([...bb, ...(tB ? [n, k] : [k, n])], seed++);
          const ref = reference(a, b, tA, tB);
          // tfjs's kernel is itself wrong when both operands broadcast ([2,1]·[1,3]): compare
          // with it only where one operand's batch is the output's.
          const sizeA = ba.reduce((x, y) => x * y, 1), sizeB = bb.reduce((x, y) => x * y, 1);
          const bo = ref.shape.slice(0, -2).reduce((x, y) => x * y, 1);
          const st = sizeA === bo || sizeB === bo ? stockMatMul(a, b, tA, tB).dataSync() : ref.val;
          // Three calls: the right operand's plain copy / packed operator is reused from the third on.
          for (let rep = 0; rep < 3; rep++) {
            const c = tf.matMul(a, b, tA, tB);
            t.deepEqual(c.shape, ref.shape);
            const cd = c.dataSync();
            for (let i = 0; i < cd.length; i++) {
              const bound = ref.k * EPS * ref.mag[i]! + 1e-30;
              if (Math.abs(cd[i]! - ref.val[i]!) > bound || Math.abs(cd[i]! - st[i]!) > 2 * bound) {
                t.fail(`m${m} k${k} n${n} tA${tA} tB${tB} batch[${ba}]x[${bb}] i${i}: ${cd[i]} vs ${ref.val[i]} (stock ${st[i]})`);
                return checked;
              }
            }
            c.dispose();
            checked++;
          }
          a.dispose();
          b.dispose();
        }
      }
    }
  }
  return checked;
}

test.serial('BatchMatMul (XNNPACK path) matches float64 within k·eps·Σ|ab| and the stock kernel, all layouts', (t) => {
  setNativeEnabled(false);
  try {
    const before = { ...matMulStats };
    t.true(checkLayouts(t, shapes, 1) > 300);
    // Every path was taken.
    for (const key of ['naive', 'folded', 'batched', 'swapped', 'plainCopies'] as const) {
      t.true(matMulStats[key] > before[key], `path ${key} not exercised`);
    }
  } finally {
    setNativeEnabled(true);
  }
});

// The native addon's blocking: row panels of 12 (AVX-512) / 6 / 4, column panels of 32 / 16 / 8,
// k in blocks of 256, m in blocks of 192 rows, n in blocks of 3072 columns; products with at
// most 8 rows stream B without packing; tall products with at most 32 columns read A in place
// (k in blocks of 4096); other narrow ones are computed as Cᵀ = Bᵀ·Aᵀ.
const nativeShapes: [number, number, number][] = [
  ...shapes, [200, 513, 40], [5, 300, 3100], [1000, 64, 19], [100, 5000, 7], [3, 700, 33], [8, 1, 70], [13, 257, 33], [9, 17, 4],
];
const maybeNative = loadNative() ? test.serial : test.skip;
maybeNative('BatchMatMul (native path) matches float64 within k·eps·Σ|ab| and the stock kernel, all layouts', (t) => {
  t.true(nativeInfo().active);
  const before = matMulStats.native, packedBefore = matMulStats.packedOperands;
  t.true(checkLayouts(t, nativeShapes, 5000) > 350);
  t.true(matMulStats.native > before + 350, 'products went to the native addon');
  // the right operand is reused by the three calls: packed once, then read packed
  t.true(matMulStats.packedOperands > packedBefore + 40, 'reused right operands were packed');
});

maybeNative('the native addon refuses operands outside the heap instead of touching memory', (t) => {
  const addon = loadNative()!;
  const heap = new Float32Array(new SharedArrayBuffer(4 * 1000));
  t.throws(() => addon.gemm(heap, 10, 10, 10, 0, 0, Uint32Array.of(0, 100, 950)), { instanceOf: RangeError });
  t.throws(() => addon.gemm(heap, 10, 10, 10, 0, 0, Uint32Array.of(0, 100)), { instanceOf: TypeError });
  heap.fill(1);
  addon.gemm(heap, 10, 10, 10, 0, 0, Uint32Array.of(0, 100, 200));
  t.deepEqual([...heap.subarray(200, 300)], new Array<number>(100).fill(10));
});

test('_FusedMatMul agrees (linear; bias + relu, batched left operand and shared weights)', (t) => {
  const a = rnd([2, 40, 24], 99), w = rnd([24, 32], 98), bias = rnd([32], 97);
  const ref = reference(a, w, false, false);
  const plain = tf.fused.matMul({ a, b: w }).dataSync();
  for (let i = 0; i < plain.length; i++) t.true(Math.abs(plain[i]! - ref.val[i]!) <= 24 * EPS * ref.mag[i]! + 1e-30);
  const fused = tf.fused.matMul({ a, b: w, bias, activation: 'relu' }).dataSync();
  const bd = bias.dataSync();
  for (let i = 0; i < fused.length; i++) {
    const want = Math.max(0, ref.val[i]! + bd[i % 32]!);
    t.true(Math.abs(fused[i]! - want) <= 24 * EPS * (ref.mag[i]! + Math.abs(bd[i % 32]!)) + 1e-6);
  }
  tf.dispose([a, w, bias]);
});

test('gradients through matMul with transposed weights equal float64 products', (t) => {
  // dL/dx and dL/dW of sum(x·Wᵀ ⊙ g): gx = g·W, gW = gᵀ·x (tfjs's matMul gradient uses both layouts).
  const x = rnd([60, 16], 5), w = rnd([24, 16], 6), g = rnd([60, 24], 7);
  const { gx, gw } = tf.tidy(() => {
    const f = (xx: tf.Tensor, ww: tf.Tensor) => tf.sum(tf.mul(tf.matMul(xx, ww, false, true), g));
    const [gx, gw] = tf.grads(f)([x, w]);
    return { gx: gx!, gw: gw! };
  });
  const refX = reference(g, w, false, false);
  const gd = gx.dataSync();
  for (let i = 0; i < gd.length; i++) t.true(Math.abs(gd[i]! - refX.val[i]!) <= 24 * EPS * refX.mag[i]! + 1e-30);
  const g2 = g, x2 = x;
  const refW = reference(g2, x2, true, false);
  const wd = gw.dataSync();
  for (let i = 0; i < wd.length; i++) t.true(Math.abs(wd[i]! - refW.val[i]!) <= 2 * 60 * EPS * refW.mag[i]! + 1e-30);
  tf.dispose([x, w, g, gx, gw]);
});

test.serial('a cached transposed copy is freed with its original', (t) => {
  setNativeEnabled(false);
  t.teardown(() => setNativeEnabled(true));
  const backend = tf.backend() as unknown as { numDataIds(): number };
  const x = rnd([20, 32], 11);
  const base = backend.numDataIds();
  const w = rnd([48, 32], 12);
  const copies = matMulStats.plainCopies;
  for (let i = 0; i < 4; i++) tf.matMul(x, w, false, true).dispose();
  t.is(matMulStats.plainCopies, copies + 1, 'one plain copy, reused');
  t.is(backend.numDataIds(), base + 2, 'the weight and its plain copy');
  w.dispose();
  t.is(backend.numDataIds(), base, 'both released');
  x.dispose();
});

maybeNative('a packed right operand is made once, reused, and freed with its original', (t) => {
  const backend = tf.backend() as unknown as { numDataIds(): number };
  const x = rnd([3, 32], 21);
  const base = backend.numDataIds();
  const w = rnd([32, 48], 22);
  const packed = matMulStats.packedOperands;
  const ref = reference(x, w, false, false);
  for (let i = 0; i < 4; i++) {
    const y = tf.matMul(x, w);
    const yd = y.dataSync();
    for (let j = 0; j < yd.length; j++) t.true(Math.abs(yd[j]! - ref.val[j]!) <= 32 * EPS * ref.mag[j]! + 1e-30);
    y.dispose();
  }
  t.is(matMulStats.packedOperands, packed + 1, 'packed at the second use, then reused');
  t.is(backend.numDataIds(), base + 2, 'the weight and its packed copy');
  w.dispose();
  t.is(backend.numDataIds(), base, 'both released');
  x.dispose();
});
