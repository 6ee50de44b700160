import test from 'ava';
import { mkdtempSync, readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../src/errors.js';
import { readSafetensors, writeSafetensors, type RawTensor } from '../src/io/safetensors.js';

const dir = mkdtempSync(join(tmpdir(), 'qrlhf-st-'));
let counter = 0;
const fresh = (name = 'f') => join(dir, `${name}-${counter++}.safetensors`);

/** Builds a safetensors file by hand (independently of the writer): length, header text, data. */
function handMade(header: string, data: Uint8Array, lengthField?: bigint): string {
  const head = Buffer.from(header, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthField ?? BigInt(head.length));
  const p = fresh('hand');
  writeFileSync(p, Buffer.concat([len, head, Buffer.from(data)]));
  return p;
}

function f32Bytes(values: number[]): Uint8Array {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}

/** binary16 value from its bits, in float64 arithmetic (the textbook formula). */
function halfValue(bits: number): number {
  const s = bits >> 15 ? -1 : 1;
  const e = (bits >> 10) & 31;
  const m = bits & 1023;
  if (e === 0) return s * (m / 1024) * 2 ** -14;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

test('a hand-made F32/I32/U8/I64 file is read exactly', (t) => {
  const a = f32Bytes([1.5, -2.25, 3e-8, 1e30, 0, -0]);
  const b = Buffer.alloc(8);
  b.writeInt32LE(-7, 0);
  b.writeInt32LE(2147483647, 4);
  const c = Uint8Array.from([0, 255, 17]);
  const d = Buffer.alloc(16);
  d.writeBigInt64LE(-123456789n, 0);
  d.writeBigInt64LE(42n, 8);
  const header = JSON.stringify({
    __metadata__: { format: 'pt' },
    'x.weight': { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
    ids: { dtype: 'I32', shape: [2], data_offsets: [24, 32] },
    bytes: { dtype: 'U8', shape: [3], data_offsets: [32, 35] },
    big: { dtype: 'I64', shape: [2, 1], data_offsets: [35, 51] },
  });
  const p = handMade(header, Buffer.concat([a, b, c, d]));
  const { tensors, metadata } = readSafetensors(p);
  t.deepEqual(metadata, { format: 'pt' });
  t.deepEqual(tensors['x.weight']!.shape, [2, 3]);
  t.is(tensors['x.weight']!.dtype, 'F32');
  t.deepEqual(Array.from(tensors['x.weight']!.data), [1.5, -2.25, Math.fround(3e-8), Math.fround(1e30), 0, -0]);
  t.deepEqual(Array.from(tensors['ids']!.data), [-7, 2147483647]);
  t.true(tensors['ids']!.data instanceof Int32Array);
  t.deepEqual(Array.from(tensors['bytes']!.data), [0, 255, 17]);
  t.deepEqual(Array.from(tensors['big']!.data), [-123456789, 42]);
  t.deepEqual(tensors['big']!.shape, [2, 1]);
});

test('F16 and BF16 are decoded with the binary16 / bfloat16 formulas', (t) => {
  const halfBits = [0x0000, 0x8000, 0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x3555, 0x7c00, 0xfc00, 0x7e00];
  const h = Buffer.alloc(halfBits.length * 2);
  halfBits.forEach((v, i) => h.writeUInt16LE(v, i * 2));
  const bfBits = [0x3f80, 0x4049, 0xbf80, 0x0001, 0x7f80];
  const bf = Buffer.alloc(bfBits.length * 2);
  bfBits.forEach((v, i) => bf.writeUInt16LE(v, i * 2));
  const header = JSON.stringify({
    h: { dtype: 'F16', shape: [halfBits.length], data_offsets: [0, h.length] },
    b: { dtype: 'BF16', shape: [bfBits.length], data_offsets: [h.length, h.length + bf.length] },
  });
  const { tensors } = readSafetensors(handMade(header, Buffer.concat([h, bf])));
  const got = Array.from(tensors['h']!.data);
  halfBits.forEach((bits, i) => {
    const want = halfValue(bits);
    if (Number.isNaN(want)) t.true(Number.isNaN(got[i]!));
    else t.is(got[i], want, `half 0x${bits.toString(16)}`);
  });
  t.is(got[2], 1);
  t.is(got[4], 65504);
  t.is(got[5], 2 ** -24);
  // bfloat16 = the upper 16 bits of a float32
  const want = bfBits.map((b) => {
    const x = Buffer.alloc(4);
    x.writeUInt32LE(b << 16 >>> 0);
    return x.readFloatLE(0);
  });
  t.deepEqual(Array.from(tensors['b']!.data), want);
  t.is(tensors['b']!.data[1], 3.140625);
});

test('writer: sorted names, space-padded 8-aligned header, contiguous data, metadata; round trip', (t) => {
  const p = fresh();
  const z: RawTensor = { dtype: 'F32', shape: [3], data: Float32Array.from([1, 2, 3]) };
  const a: RawTensor = { dtype: 'I32', shape: [1, 2], data: Int32Array.from([5, -6]) };
  const m: RawTensor = { dtype: 'U8', shape: [1], data: Uint8Array.from([9]) };
  const l: RawTensor = { dtype: 'I64', shape: [2], data: Int32Array.from([-1, 1 << 30]) };
  writeSafetensors(p, { z, a, m, l }, { note: 'hi' });
  const bytes = readFileSync(p);
  const n = Number(bytes.readBigUInt64LE(0));
  t.is((8 + n) % 8, 0);
  const headerText = bytes.subarray(8, 8 + n).toString('utf8');
  t.regex(headerText, /^\{.*\} *$/);
  const header = JSON.parse(headerText) as Record<string, { data_offsets: [number, number] }>;
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  t.deepEqual(names, ['a', 'l', 'm', 'z']);
  // data in name order, back to back
  t.deepEqual(header['a']!.data_offsets, [0, 8]);
  t.deepEqual(header['l']!.data_offsets, [8, 24]);
  t.deepEqual(header['m']!.data_offsets, [24, 25]);
  t.deepEqual(header['z']!.data_offsets, [25, 37]);
  t.is(bytes.length, 8 + n + 37);
  t.is(bytes.readBigInt64LE(8 + n + 8), -1n);
  t.is(bytes.readFloatLE(8 + n + 25 + 8), 3);
  const back = readSafetensors(p);
  t.deepEqual(back.metadata, { note: 'hi' });
  t.deepEqual(Array.from(back.tensors['z']!.data), [1, 2, 3]);
  t.deepEqual(Array.from(back.tensors['a']!.data), [5, -6]);
  t.deepEqual(back.tensors['a']!.shape, [1, 2]);
  t.deepEqual(Array.from(back.tensors['l']!.data), [-1, 1 << 30]);
  t.is(back.tensors['l']!.dtype, 'I64');
  t.deepEqual(Array.from(back.tensors['m']!.data), [9]);
  // no temporary file left behind
  t.deepEqual(readdirSync(dir).filter((f) => f.includes('.tmp')), []);
});

test('writer: F16 output matches hand-computed binary16 bits (round to nearest even)', (t) => {
  // [value, expected bits], worked out by hand from the binary16 layout.
  const cases: [number, number][] = [
    [0, 0x0000],
    [-0, 0x8000],
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [65504, 0x7bff], // largest finite
    [65520, 0x7c00], // halfway to 65536: rounds to even = infinity
    [1e6, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // exactly half of it: ties to even (0)
    [3 * 2 ** -26, 0x0001], // 0.75 ulp: rounds up
    [1 / 3, 0x3555], // 0.333251953125
    [1 + 2 ** -11, 0x3c00], // tie between 1 and 1+2^-10: even (1)
    [1 + 3 * 2 ** -11, 0x3c02], // tie between 1+2^-10 and 1+2^-9: even (mantissa 2)
    [0.1, 0x2e66],
  ];
  const p = fresh();
  const data = Float32Array.from(cases.map((c) => c[0]));
  writeSafetensors(p, { x: { dtype: 'F32', shape: [cases.length], data } }, undefined, { dtype: 'F16' });
  const bytes = readFileSync(p);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString()) as Record<string, { dtype: string }>;
  t.is(header['x']!.dtype, 'F16');
  cases.forEach(([v, bits], i) => {
    t.is(bytes.readUInt16LE(8 + n + 2 * i), bits, `F16 of ${v}`);
  });
  const nan = fresh();
  writeSafetensors(nan, { x: { dtype: 'F32', shape: [1], data: Float32Array.from([NaN]) } }, undefined, { dtype: 'F16' });
  t.true(Number.isNaN(readSafetensors(nan).tensors['x']!.data[0]!));
  // and back: decoded values equal the formula
  const back = readSafetensors(p).tensors['x']!;
  t.is(back.dtype, 'F16');
  cases.forEach(([, bits], i) => t.is(back.data[i], halfValue(bits)));
});

test('writer: BF16 output matches hand-computed bits (round to nearest even)', (t) => {
  const fromBits = (b: number) => {
    const x = Buffer.alloc(4);
    x.writeUInt32LE(b >>> 0);
    return x.readFloatLE(0);
  };
  const cases: [number, number][] = [
    [1, 0x3f80],
    [-1, 0xbf80],
    [Math.PI, 0x4049], // float32 0x40490fdb: low half 0x0fdb < 0x8000, truncates
    [fromBits(0x3f808000), 0x3f80], // exact tie, even stays
    [fromBits(0x3f818000), 0x3f82], // exact tie, odd rounds up
    [fromBits(0x3f808001), 0x3f81], // just above the tie
    [fromBits(0x7f7fffff), 0x7f80], // max float32 rounds to infinity
    [Infinity, 0x7f80],
    [0, 0],
  ];
  const p = fresh();
  writeSafetensors(p, { b: { dtype: 'F32', shape: [cases.length], data: Float32Array.from(cases.map((c) => c[0])) } }, undefined, { dtype: 'BF16' });
  const bytes = readFileSync(p);
  const n = Number(bytes.readBigUInt64LE(0));
  cases.forEach(([v, bits], i) => t.is(bytes.readUInt16LE(8 + n + 2 * i), bits, `BF16 of ${v}`));
  const back = readSafetensors(p).tensors['b']!;
  cases.forEach(([, bits], i) => t.is(back.data[i], fromBits(bits << 16)));
});

test('writer: tf.Tensors in, keeps F16 inputs as F16, integer tensors untouched by opts.dtype', (t) => {
  const p = fresh();
  const w = tf.tensor2d([[1, 2], [3, 4.5]]);
  const ids = tf.tensor1d([3, -1], 'int32');
  const half: RawTensor = { dtype: 'F16', shape: [2], data: Float32Array.from([0.5, -8]) };
  writeSafetensors(p, { w, ids, half });
  const back = readSafetensors(p).tensors;
  t.is(back['w']!.dtype, 'F32');
  t.deepEqual(back['w']!.shape, [2, 2]);
  t.deepEqual(Array.from(back['w']!.data), [1, 2, 3, 4.5]);
  t.is(back['ids']!.dtype, 'I32');
  t.deepEqual(Array.from(back['ids']!.data), [3, -1]);
  t.is(back['half']!.dtype, 'F16');
  t.deepEqual(Array.from(back['half']!.data), [0.5, -8]);
  const p2 = fresh();
  writeSafetensors(p2, { w, ids }, undefined, { dtype: 'BF16' });
  const back2 = readSafetensors(p2).tensors;
  t.is(back2['w']!.dtype, 'BF16');
  t.is(back2['ids']!.dtype, 'I32');
  t.false(w.isDisposed);
  w.dispose();
  ids.dispose();
});

test('writer: shape that disagrees with the data is refused', (t) => {
  const e = t.throws(() => writeSafetensors(fresh(), { x: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }), {
    instanceOf: QrlhfError,
  });
  t.regex(e!.message, /"x".*shape \[2, 2\].*3 values/);
});

// ---- every kind of bad file -----------------------------------------------------------------

function rejects(t: import('ava').ExecutionContext, path: string, fault: RegExp): void {
  const e = t.throws(() => readSafetensors(path), { instanceOf: QrlhfError });
  t.true(e!.message.includes(path), `names the file: ${e!.message}`);
  t.regex(e!.message, fault);
}

const okTensor = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };

test('bad file: shorter than 8 bytes', (t) => {
  const p = fresh('short');
  writeFileSync(p, Buffer.from([1, 2, 3]));
  rejects(t, p, /3 bytes, shorter than the 8-byte header length/);
  const empty = fresh('empty');
  writeFileSync(empty, Buffer.alloc(0));
  rejects(t, empty, /0 bytes/);
});

test('bad file: header length beyond the file', (t) => {
  const header = JSON.stringify({ a: okTensor });
  rejects(t, handMade(header, new Uint8Array(8), BigInt(header.length + 100)), /header length \d+ reaches beyond the end of the file/);
  // an absurd 64-bit length must not wrap around or allocate
  rejects(t, handMade(header, new Uint8Array(8), 0xffffffffffffffffn), /reaches beyond the end of the file/);
});

test('bad file: truncated data (a real file cut short)', (t) => {
  const p = fresh();
  writeSafetensors(p, { a: { dtype: 'F32', shape: [4], data: new Float32Array(4) }, b: { dtype: 'F32', shape: [4], data: new Float32Array(4) } });
  const bytes = readFileSync(p);
  const cut = fresh('cut');
  writeFileSync(cut, bytes.subarray(0, bytes.length - 5));
  rejects(t, cut, /tensor "b": data_offsets \[16, 32\] lie outside the data buffer of 27 bytes/);
});

test('bad file: header that is not JSON, or not an object', (t) => {
  rejects(t, handMade('{"a": {"dtype": "F32", ', new Uint8Array(0)), /header is not valid JSON/);
  rejects(t, handMade('[1, 2]', new Uint8Array(0)), /header JSON is not an object/);
});

test('bad file: unknown dtype', (t) => {
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F8_E4M3', shape: [8], data_offsets: [0, 8] } }), new Uint8Array(8)), /tensor "a": unknown or unsupported dtype "F8_E4M3"/);
  rejects(t, handMade(JSON.stringify({ a: { shape: [2], data_offsets: [0, 8] } }), new Uint8Array(8)), /tensor "a": unknown or unsupported dtype undefined/);
});

test('bad file: malformed shape or offsets', (t) => {
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }), new Uint8Array(8)), /tensor "a": shape \[-2\]/);
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F32', shape: [2], data_offsets: [0] } }), new Uint8Array(8)), /tensor "a": data_offsets \[0\]/);
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }), new Uint8Array(8)), /begin after end/);
});

test('bad file: offsets outside the buffer', (t) => {
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }), new Uint8Array(8)), /tensor "a": data_offsets \[0, 16\] lie outside the data buffer of 8 bytes/);
});

test('bad file: overlapping tensors', (t) => {
  const header = JSON.stringify({
    a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
    b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
  });
  rejects(t, handMade(header, new Uint8Array(12)), /tensor "b" \[4, 12\] overlaps tensor "a" \[0, 8\]/);
  // two names on the very same bytes
  const twin = JSON.stringify({ a: okTensor, b: okTensor });
  rejects(t, handMade(twin, new Uint8Array(8)), /overlaps/);
});

test('bad file: shape and dtype that disagree with the byte count', (t) => {
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }), new Uint8Array(8)), /tensor "a": shape \[3\] of F32 needs 12 bytes but data_offsets \[0, 8\] hold 8/);
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'F16', shape: [2, 2], data_offsets: [0, 16] } }), new Uint8Array(16)), /shape \[2, 2\] of F16 needs 8 bytes but .* hold 16/);
});

test('bad file: gaps and trailing bytes not covered by the header', (t) => {
  const gap = JSON.stringify({ a: okTensor, b: { dtype: 'F32', shape: [1], data_offsets: [12, 16] } });
  rejects(t, handMade(gap, new Uint8Array(16)), /gap of 4 unused bytes before tensor "b"/);
  rejects(t, handMade(JSON.stringify({ a: okTensor }), new Uint8Array(12)), /4 bytes after the last tensor/);
});

test('bad file: metadata must be strings; I64 beyond int32 is refused', (t) => {
  rejects(t, handMade(JSON.stringify({ __metadata__: { n: 3 }, a: okTensor }), new Uint8Array(8)), /"__metadata__.n" is not a string/);
  const d = Buffer.alloc(8);
  d.writeBigInt64LE(1n << 40n);
  rejects(t, handMade(JSON.stringify({ a: { dtype: 'I64', shape: [1], data_offsets: [0, 8] } }), d), /does not fit in int32/);
});

test('missing file is a QrlhfError naming it', (t) => {
  const p = join(dir, 'nope.safetensors');
  rejects(t, p, /cannot read/);
});
