/**
 * The safetensors format (SPEC §2): an 8-byte little-endian header length N, N bytes of JSON
 * ({name: {dtype, shape, data_offsets: [begin, end]}}, optional "__metadata__" of strings), then
 * the tensors' bytes, offsets relative to the start of that buffer.
 *
 * The reader trusts nothing in the file: every fault (short file, header beyond the file, bad JSON,
 * unknown dtype, offsets outside the buffer, overlaps, gaps, byte counts that disagree with the
 * shape) is a QrlhfError naming the file and the tensor.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { endianness } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError } from '../errors.js';
import { writeFileAtomic } from './atomic.js';

export type DType = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'U8';

/** A tensor outside tfjs. F16/BF16 are decoded to (and encoded from) Float32Array; I64 is held as Int32Array. */
export interface RawTensor {
  dtype: DType;
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array;
}

const BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1 };
const METADATA_KEY = '__metadata__';

if (endianness() !== 'LE') {
  // Typed-array views below assume the host byte order is the file's (little-endian).
  throw new Error('qrlhf safetensors: a little-endian host is required');
}

// ---------------------------------------------------------------------------------------------
// Half-precision conversions (IEEE 754 binary16 and bfloat16), both directions.

let halfTable: Float32Array | null = null;

/** binary16 bits -> float32 value, through a 65536-entry table built once. */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) t[h] = sign * frac * 2 ** -24; // zero and subnormals
    else if (exp === 31) t[h] = frac ? NaN : sign * Infinity;
    else t[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  halfTable = t;
  return t;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> binary16 bits, round to nearest even; overflow to infinity, NaN kept quiet. */
export function floatToHalfBits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  // Unbiased exponent; binary16 normals cover [-14, 15].
  const e = exp - 127;
  if (e > 15) return sign | 0x7c00;
  if (e >= -14) {
    // Normal: keep 10 of the 23 mantissa bits, round to nearest even on the 13 dropped.
    let h = ((e + 15) << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++; // a carry into the exponent is right
    return sign | h;
  }
  if (e < -25) return sign; // below half the smallest subnormal: zero
  // Subnormal: value = m * 2^-24 with the implicit bit made explicit.
  const full = mant | 0x800000; // 24 bits, value = full * 2^(e-23)
  const shift = -e - 1; // = (e-23) - (-24) negated: bits to drop so the unit is 2^-24
  let h = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (rest > halfway || (rest === halfway && (h & 1))) h++;
  return sign | h;
}

/** float32 -> bfloat16 bits: the upper half of the float32, rounded to nearest even. */
export function floatToBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x7fffff) return ((bits >>> 16) | 0x40) & 0xffff; // quiet NaN
  const rounded = bits + 0x7fff + ((bits >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

/** binary16 bits -> float32 value. */
export function halfBitsToFloat(h: number): number {
  return halfToFloatTable()[h & 0xffff]!;
}

/** bfloat16 bits -> float32 value. */
export function bf16BitsToFloat(b: number): number {
  u32[0] = (b & 0xffff) << 16;
  return f32[0]!;
}

// ---------------------------------------------------------------------------------------------
// Reading

interface HeaderEntry { name: string; dtype: DType; shape: number[]; begin: number; end: number }

function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(BYTES, s);
}

function decode(bytes: Uint8Array, dtype: DType, n: number, where: string): RawTensor['data'] {
  // Copy to a fresh, aligned buffer: the file's offsets need not be aligned to the element size.
  const buf = new Uint8Array(bytes).buffer; // a copy (Buffer#slice would only be a view)
  switch (dtype) {
    case 'F32':
      return new Float32Array(buf, 0, n);
    case 'I32':
      return new Int32Array(buf, 0, n);
    case 'U8':
      return new Uint8Array(buf, 0, n);
    case 'F16': {
      const t = halfToFloatTable();
      const src = new Uint16Array(buf, 0, n);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = t[src[i]!]!;
      return out;
    }
    case 'BF16': {
      const src = new Uint16Array(buf, 0, n);
      const out = new Float32Array(n);
      const o32 = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) o32[i] = src[i]! << 16;
      return out;
    }
    case 'I64': {
      const src = new BigInt64Array(buf, 0, n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = src[i]!;
        if (v > 2147483647n || v < -2147483648n) {
          throw new QrlhfError(`${where}: I64 value ${v} at index ${i} does not fit in int32`);
        }
        out[i] = Number(v);
      }
      return out;
    }
  }
}

/**
 * Reads a .safetensors file. Throws QrlhfError "FILE: fault" for anything malformed. Tensors must
 * tile the data buffer exactly (no overlap, no gap, nothing after the last), as the reference
 * implementation requires.
 */
export function readSafetensors(path: string): { tensors: Record<string, RawTensor>; metadata: Record<string, string> } {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new QrlhfError(`${path}: cannot read safetensors file (${(e as Error).message})`);
  }
  return parseSafetensors(buf, path);
}

/** Parses safetensors bytes; `where` names the source in error messages. */
export function parseSafetensors(
  buf: Uint8Array,
  where = '<buffer>',
): { tensors: Record<string, RawTensor>; metadata: Record<string, string> } {
  const { entries, metadata, dataStart } = parseHeader(buf, buf.length, where);
  const tensors: Record<string, RawTensor> = {};
  for (const e of entries) {
    const count = e.shape.reduce((a, b) => a * b, 1);
    const bytes = buf.subarray(dataStart + e.begin, dataStart + e.end);
    tensors[e.name] = { dtype: e.dtype, shape: e.shape, data: decode(bytes, e.dtype, count, `${where}: tensor "${e.name}"`) };
  }
  return { tensors, metadata };
}

/**
 * The header of a safetensors file of `fileSize` bytes, from a buffer that holds at least its
 * first 8 + N bytes, checked as parseSafetensors checks it (the tensors must tile the data buffer).
 */
function parseHeader(buf: Uint8Array, fileSize: number, where: string): { entries: HeaderEntry[]; metadata: Record<string, string>; dataStart: number } {
  const fail = (msg: string): never => {
    throw new QrlhfError(`${where}: not a valid safetensors file: ${msg}`);
  };
  if (fileSize < 8 || buf.length < 8) fail(`file is ${fileSize} bytes, shorter than the 8-byte header length`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n64 = dv.getBigUint64(0, true);
  if (n64 > BigInt(fileSize - 8)) {
    fail(`header length ${n64} reaches beyond the end of the file (${fileSize - 8} bytes after the length field)`);
  }
  const n = Number(n64);
  if (n < 2) fail(`header length ${n} is too short for a JSON object`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(8, 8 + n)));
  } catch (e) {
    fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header JSON is not an object');
  const dataStart = 8 + n;
  const dataLen = fileSize - dataStart;

  const metadata: Record<string, string> = {};
  const entries: HeaderEntry[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === METADATA_KEY) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`"${METADATA_KEY}" is not an object`);
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== 'string') fail(`"${METADATA_KEY}.${k}" is not a string`);
        metadata[k] = s as string;
      }
      continue;
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(`tensor "${name}": entry is not an object`);
    const e = v as Record<string, unknown>;
    if (!isDType(e['dtype'])) {
      fail(`tensor "${name}": unknown or unsupported dtype ${JSON.stringify(e['dtype'])} (supported: ${Object.keys(BYTES).join(', ')})`);
    }
    const dtype = e['dtype'] as DType;
    const shape = e['shape'];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor "${name}": shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    }
    const offs = e['data_offsets'];
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor "${name}": data_offsets ${JSON.stringify(offs)} is not a pair of non-negative integers`);
    }
    const [begin, end] = offs as [number, number];
    if (begin > end) fail(`tensor "${name}": data_offsets [${begin}, ${end}] begin after end`);
    if (end > dataLen) {
      fail(`tensor "${name}": data_offsets [${begin}, ${end}] lie outside the data buffer of ${dataLen} bytes`);
    }
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (count * BYTES[dtype] !== end - begin) {
      fail(`tensor "${name}": shape [${(shape as number[]).join(', ')}] of ${dtype} needs ${count * BYTES[dtype]} bytes ` +
        `but data_offsets [${begin}, ${end}] hold ${end - begin}`);
    }
    entries.push({ name, dtype, shape: shape as number[], begin, end });
  }

  // The tensors must tile [0, dataLen) exactly.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  let prev: HeaderEntry | null = null;
  for (const e of sorted) {
    if (e.begin < pos) fail(`tensor "${e.name}" [${e.begin}, ${e.end}] overlaps tensor "${prev!.name}" [${prev!.begin}, ${prev!.end}]`);
    if (e.begin > pos) fail(`gap of ${e.begin - pos} unused bytes before tensor "${e.name}" at data offset ${pos}`);
    pos = e.end;
    prev = e;
  }
  if (pos !== dataLen) fail(`${dataLen - pos} bytes after the last tensor are not covered by the header`);
  return { entries, metadata, dataStart };
}

/** A safetensors file opened for reading one tensor at a time (only the header is read up front). */
export interface SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  /** Every tensor's dtype and shape, by name, in file order. */
  readonly tensors: Record<string, { dtype: DType; shape: number[] }>;
  /** Reads and decodes one tensor (F16 / BF16 to float32): the file's bytes of that tensor only. */
  read(name: string): RawTensor;
  close(): void;
}

/**
 * Opens a .safetensors file and checks its header (as readSafetensors does) without reading the
 * data: a sharded checkpoint can then be loaded a tensor at a time, so the peak memory is what has
 * been built so far plus one tensor, never a whole file.
 */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  let size: number;
  try {
    fd = openSync(path, 'r');
    size = fstatSync(fd).size;
  } catch (e) {
    throw new QrlhfError(`${path}: cannot read safetensors file (${(e as Error).message})`);
  }
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, Math.min(8, size), 0);
    const n = size >= 8 ? Number(len.readBigUInt64LE(0)) : 0;
    const head = Buffer.alloc(size >= 8 && n <= size - 8 ? 8 + n : Math.min(size, 8));
    readSync(fd, head, 0, head.length, 0);
    const { entries, metadata, dataStart } = parseHeader(head, size, path);
    const byName = new Map(entries.map((e) => [e.name, e]));
    const tensors = Object.fromEntries([...entries].sort((a, b) => a.begin - b.begin).map((e) => [e.name, { dtype: e.dtype, shape: e.shape }]));
    return {
      path,
      metadata,
      tensors,
      read(name: string): RawTensor {
        const e = byName.get(name);
        if (!e) throw new QrlhfError(`${path}: no tensor "${name}" in this file`);
        const bytes = Buffer.alloc(e.end - e.begin);
        let got = 0;
        while (got < bytes.length) {
          const r = readSync(fd, bytes, got, bytes.length - got, dataStart + e.begin + got);
          if (r === 0) throw new QrlhfError(`${path}: tensor "${name}": the file ended early (was it changed while loading?)`);
          got += r;
        }
        const count = e.shape.reduce((a, b) => a * b, 1);
        return { dtype: e.dtype, shape: e.shape, data: decode(bytes, e.dtype, count, `${path}: tensor "${name}"`) };
      },
      close(): void {
        closeSync(fd);
      },
    };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

function toRaw(name: string, t: RawTensor | tf.Tensor, path: string): RawTensor {
  if (t instanceof tf.Tensor) {
    if (t.isDisposed) throw new QrlhfError(`${path}: tensor "${name}" is disposed`);
    switch (t.dtype) {
      case 'float32':
        return { dtype: 'F32', shape: [...t.shape], data: t.dataSync() as Float32Array };
      case 'int32':
        return { dtype: 'I32', shape: [...t.shape], data: t.dataSync() as Int32Array };
      case 'bool':
        return { dtype: 'U8', shape: [...t.shape], data: Uint8Array.from(t.dataSync() as Uint8Array) };
      default:
        throw new QrlhfError(`${path}: tensor "${name}" has tfjs dtype ${t.dtype}, which safetensors output does not support`);
    }
  }
  if (!isDType(t.dtype)) throw new QrlhfError(`${path}: tensor "${name}" has unknown dtype ${JSON.stringify(t.dtype)}`);
  return t;
}

function encode(t: RawTensor, dtype: DType, name: string, path: string): Uint8Array {
  const n = t.data.length;
  const isFloat = t.data instanceof Float32Array;
  switch (dtype) {
    case 'F32':
      return new Uint8Array(Float32Array.from(t.data).buffer);
    case 'F16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = floatToHalfBits(t.data[i]!);
      return new Uint8Array(out.buffer);
    }
    case 'BF16': {
      const out = new Uint16Array(n);
      for (let i = 0; i < n; i++) out[i] = floatToBf16Bits(t.data[i]!);
      return new Uint8Array(out.buffer);
    }
    case 'I32':
    case 'I64':
    case 'U8': {
      if (isFloat) throw new QrlhfError(`${path}: tensor "${name}" is ${dtype} but holds float data`);
      if (dtype === 'I32') return new Uint8Array(Int32Array.from(t.data).buffer);
      if (dtype === 'U8') {
        for (let i = 0; i < n; i++) {
          const v = t.data[i]!;
          if (v < 0 || v > 255) throw new QrlhfError(`${path}: tensor "${name}" (U8) value ${v} at index ${i} is outside 0..255`);
        }
        return Uint8Array.from(t.data);
      }
      const out = new BigInt64Array(n);
      for (let i = 0; i < n; i++) out[i] = BigInt(t.data[i]!);
      return new Uint8Array(out.buffer);
    }
  }
}

/**
 * The tf.Tensors among `tensors` read to host arrays with `await data()` (RawTensors pass as they
 * are). Writers of live tensors call this first: a GPU backend (webgpu) has no synchronous read,
 * so writeSafetensors' own read of a tf.Tensor works only on the CPU backends.
 */
export async function hostTensors(tensors: Record<string, RawTensor | tf.Tensor>, where = '<tensors>'): Promise<Record<string, RawTensor>> {
  const out: Record<string, RawTensor> = {};
  await Promise.all(
    Object.entries(tensors).map(async ([name, t]) => {
      if (!(t instanceof tf.Tensor)) {
        out[name] = t;
        return;
      }
      if (t.isDisposed) throw new QrlhfError(`${where}: tensor "${name}" is disposed`);
      const data = await t.data();
      switch (t.dtype) {
        case 'float32':
          out[name] = { dtype: 'F32', shape: [...t.shape], data: data as Float32Array };
          break;
        case 'int32':
          out[name] = { dtype: 'I32', shape: [...t.shape], data: data as Int32Array };
          break;
        case 'bool':
          out[name] = { dtype: 'U8', shape: [...t.shape], data: Uint8Array.from(data as Uint8Array) };
          break;
        default:
          throw new QrlhfError(`${where}: tensor "${name}" has tfjs dtype ${t.dtype}, which safetensors output does not support`);
      }
    }),
  );
  return out;
}

/** Serialises tensors to safetensors bytes (see writeSafetensors). */
export function serializeSafetensors(
  tensors: Record<string, RawTensor | tf.Tensor>,
  metadata?: Record<string, string>,
  opts: { dtype?: 'F32' | 'F16' | 'BF16' } = {},
  where = '<buffer>',
): Uint8Array {
  const names = Object.keys(tensors).sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new QrlhfError(`${where}: metadata "${k}" must be a string`);
    }
    header[METADATA_KEY] = metadata;
  }
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    if (name === METADATA_KEY || name.length === 0) throw new QrlhfError(`${where}: "${name}" is not a valid tensor name`);
    const raw = toRaw(name, tensors[name]!, where);
    const count = raw.shape.reduce((a, b) => a * b, 1);
    if (!raw.shape.every((d) => Number.isSafeInteger(d) && d >= 0) || count !== raw.data.length) {
      throw new QrlhfError(`${where}: tensor "${name}" has shape [${raw.shape.join(', ')}] but ${raw.data.length} values`);
    }
    const isFloatDtype = raw.dtype === 'F32' || raw.dtype === 'F16' || raw.dtype === 'BF16';
    const dtype: DType = isFloatDtype && opts.dtype ? opts.dtype : raw.dtype;
    const bytes = encode(raw, dtype, name, where);
    header[name] = { dtype, shape: raw.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  // Pad the header with spaces so the data buffer starts 8-byte aligned.
  const jsonBytes = new TextEncoder().encode(json);
  const pad = (8 - ((8 + jsonBytes.length) % 8)) % 8;
  json += ' '.repeat(pad);
  const head = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + head.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(head.length), true);
  out.set(head, 8);
  let pos = 8 + head.length;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}

/**
 * Writes tensors to a .safetensors file atomically: names sorted, header padded with spaces to an
 * 8-byte boundary. tf.Tensors are read synchronously (not disposed): on a GPU backend pass
 * `await hostTensors(...)` instead (saveHfFolder, saveLoraAdapter do). `opts.dtype` re-encodes floating tensors
 * (F32/F16/BF16 and float32 tf.Tensors) as F16 or BF16; integer tensors keep their dtype.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, RawTensor | tf.Tensor>,
  metadata?: Record<string, string>,
  opts: { dtype?: 'F32' | 'F16' | 'BF16' } = {},
): void {
  writeFileAtomic(path, serializeSafetensors(tensors, metadata, opts, path));
}

/**
 * Index of the first NaN or ±Infinity in `a`, or -1. One pass, no allocation: `v - v` is 0 for
 * every finite v and NaN otherwise (about a nanosecond a value; cheap next to reading the file).
 */
export function firstNonFinite(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) {
    const v = a[i]!;
    if (v - v !== 0) return i;
  }
  return -1;
}

/** `[i, j, ...]` of flat index `i` in a row-major tensor of `shape`. */
export function multiIndex(i: number, shape: readonly number[]): number[] {
  const out = new Array<number>(shape.length).fill(0);
  for (let k = shape.length - 1; k >= 0; k--) {
    const s = shape[k]!;
    out[k] = s > 0 ? i % s : 0;
    i = s > 0 ? Math.floor(i / s) : i;
  }
  return out;
}

/**
 * Throws a QrlhfError naming the file and the tensor when `data` holds a NaN or an infinity
 * (a broken checkpoint computes NaN everywhere downstream, silently).
 */
export function requireFinite(data: ArrayLike<number>, shape: readonly number[], where: string, name: string): void {
  const i = firstNonFinite(data);
  if (i >= 0) {
    throw new QrlhfError(`${where}: tensor "${name}" holds a non-finite value (${data[i]}) at [${multiIndex(i, shape).join(', ')}]: the file is damaged or the training that wrote it diverged`);
  }
}
