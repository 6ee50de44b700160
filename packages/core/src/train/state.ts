import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import { QrlhfError, check } from '../errors.js';
import type { RngState } from '../random.js';
import type { AdamWState } from './adamw.js';

/** Everything a training loop needs to continue exactly where it stopped. */
export interface TrainingState {
  /** Updates done so far (the next update has this 0-based index). */
  step: number;
  /** The trainable variables' values, by name. */
  variables: Record<string, tf.Tensor>;
  /** AdamW.getState(). */
  optimizer: AdamWState;
  /** Rng.state() of the run's generator. */
  rng: RngState;
  /** Anything else JSON-serialisable: data position, epoch, a scheduler's own numbers... */
  extra: Record<string, unknown>;
}

/*
 * On-disk layout of a checkpoint directory:
 *   state.json                     {format, version, step, optimizerStep, rng, extra, tensorFile, tensorBytes}
 *   tensors-<step>-<nonce>.safetensors   variables as "variables/<name>", moments as "optimizer/<name>"
 *
 * A save writes a NEW tensor file under a fresh name (fsynced), then writes state.json under a
 * temporary name, fsyncs it and renames it over the old state.json (an atomic replace on POSIX),
 * fsyncs the directory, and only then deletes the tensor files state.json no longer names and any
 * leftovers of interrupted saves. Killed at any instant, the directory's state.json names either
 * the previous complete checkpoint or the new one, and the file it names is complete.
 */
const STATE_FILE = 'state.json';
const FORMAT = 'qrlhf-training-state';
const VERSION = 1;

type StDType = 'F32' | 'I32';
interface HeaderEntry {
  dtype: StDType;
  shape: number[];
  data_offsets: [number, number];
}

function fsyncDir(dir: string): void {
  try {
    const fd = openSync(dir, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // some platforms cannot fsync a directory; the rename is still atomic
  }
}

/** Writes tensors as a safetensors file, streaming one tensor at a time, fsynced. Returns its size. */
function writeTensorFile(path: string, tensors: [string, tf.Tensor, ArrayBufferView][]): number {
  const header: Record<string, HeaderEntry> = {};
  let offset = 0;
  for (const [name, t] of tensors) {
    if (t.dtype !== 'float32' && t.dtype !== 'int32') {
      throw new QrlhfError(`saveTrainingState: tensor "${name}" has dtype ${t.dtype}; only float32 and int32 are saved`);
    }
    const bytes = t.size * 4;
    header[name] = { dtype: t.dtype === 'float32' ? 'F32' : 'I32', shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // data starts 8-byte aligned
  const hbytes = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hbytes.length));
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, len);
    writeSync(fd, hbytes);
    for (const [, , data] of tensors) {
      const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      let done = 0;
      while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done);
    }
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return 8 + hbytes.length + offset;
}

function readTensorFile(path: string, expectedBytes: number): Record<string, tf.Tensor> {
  const buf = readFileSync(path);
  const bad = (why: string): QrlhfError => new QrlhfError(`${path}: corrupt checkpoint tensor file: ${why}`);
  if (buf.length !== expectedBytes) throw bad(`${buf.length} bytes, state.json says ${expectedBytes}`);
  if (buf.length < 8) throw bad('shorter than its 8-byte header length');
  const n = Number(buf.readBigUInt64LE(0));
  if (8 + n > buf.length) throw bad(`header length ${n} beyond the end of the file`);
  let header: Record<string, HeaderEntry>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, HeaderEntry>;
  } catch (e) {
    throw bad(`header is not JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  const base = 8 + n;
  const out: Record<string, tf.Tensor> = {};
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b, e] = h.data_offsets;
    const count = h.shape.reduce((a, d) => a * d, 1);
    if (e - b !== count * 4 || base + e > buf.length) throw bad(`tensor "${name}" offsets [${b}, ${e}] disagree with its shape or the file`);
    const bytes = new Uint8Array(count * 4);
    bytes.set(buf.subarray(base + b, base + e)); // copy: the result must be 4-byte aligned
    out[name] = h.dtype === 'F32' ? tf.tensor(new Float32Array(bytes.buffer), h.shape, 'float32') : tf.tensor(new Int32Array(bytes.buffer), h.shape, 'int32');
  }
  return out;
}

/**
 * Saves a training state into directory `dir` (created if needed), atomically: a crash or a
 * SIGKILL at any moment leaves `dir` holding either the previous complete checkpoint or this one.
 * Tensors are written bit-exactly (float32/int32); `extra` and `rng` go to state.json.
 * Not safe for two processes saving into the same directory at once.
 */
export async function saveTrainingState(dir: string, s: TrainingState): Promise<void> {
  check(Number.isInteger(s.step) && s.step >= 0, `saveTrainingState: step must be an integer >= 0, got ${s.step}`);
  mkdirSync(dir, { recursive: true });
  const tensorFile = `tensors-${s.step}-${process.pid}-${randomBytes(4).toString('hex')}.safetensors`;
  const entries: [string, tf.Tensor][] = [
    ...Object.entries(s.variables).map(([k, t]): [string, tf.Tensor] => [`variables/${k}`, t]),
    ...Object.entries(s.optimizer.tensors).map(([k, t]): [string, tf.Tensor] => [`optimizer/${k}`, t]),
  ];
  // Read with await data() (a GPU backend has no synchronous read), then written synchronously.
  const read = await Promise.all(entries.map(async ([k, t]): Promise<[string, tf.Tensor, ArrayBufferView]> => [k, t, await t.data()]));
  const tensorBytes = writeTensorFile(join(dir, tensorFile), read);
  let json: string;
  try {
    json = JSON.stringify(
      { format: FORMAT, version: VERSION, step: s.step, optimizerStep: s.optimizer.step, rng: s.rng, extra: s.extra, tensorFile, tensorBytes },
      null,
      1,
    );
  } catch (e) {
    rmSync(join(dir, tensorFile), { force: true });
    throw new QrlhfError(`saveTrainingState: the state is not JSON-serialisable: ${e instanceof Error ? e.message : String(e)}`);
  }
  const tmp = join(dir, `${STATE_FILE}.tmp-${process.pid}`);
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, json);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, STATE_FILE));
  fsyncDir(dir);
  // The new checkpoint is in place: clear what it replaced and leftovers of interrupted saves.
  for (const f of readdirSync(dir)) {
    if (f === tensorFile || f === STATE_FILE) continue;
    if ((f.startsWith('tensors-') && f.endsWith('.safetensors')) || f.startsWith(`${STATE_FILE}.tmp-`)) rmSync(join(dir, f), { force: true });
  }
}

function isRngState(x: unknown): x is RngState {
  if (typeof x !== 'object' || x === null) return false;
  const r = x as Record<string, unknown>;
  return typeof r['i'] === 'number' && typeof r['j'] === 'number' && Array.isArray(r['S']) && r['S'].length === 256;
}

/**
 * Loads the checkpoint in `dir`, or returns null when there is none (no directory, or no
 * state.json yet: a run killed before its first save). The returned tensors are new and belong
 * to the caller. A state.json or tensor file that is damaged (not by qrlhf's own writes, which
 * are atomic) throws a QrlhfError naming the file.
 */
export function loadTrainingState(dir: string): TrainingState | null {
  const statePath = join(dir, STATE_FILE);
  if (!existsSync(dir) || !statSync(dir).isDirectory() || !existsSync(statePath)) return null;
  let meta: Record<string, unknown>;
  try {
    meta = JSON.parse(readFileSync(statePath, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new QrlhfError(`${statePath}: not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  const bad = (field: string, want: string): QrlhfError => new QrlhfError(`${statePath}: field "${field}": expected ${want}, got ${JSON.stringify(meta[field])}`);
  if (meta['format'] !== FORMAT) throw bad('format', JSON.stringify(FORMAT));
  if (meta['version'] !== VERSION) throw bad('version', String(VERSION));
  const step = meta['step'];
  const optimizerStep = meta['optimizerStep'];
  const tensorFile = meta['tensorFile'];
  const tensorBytes = meta['tensorBytes'];
  if (typeof step !== 'number' || !Number.isInteger(step) || step < 0) throw bad('step', 'an integer >= 0');
  if (typeof optimizerStep !== 'number' || !Number.isInteger(optimizerStep) || optimizerStep < 0) throw bad('optimizerStep', 'an integer >= 0');
  if (typeof tensorFile !== 'string' || tensorFile.includes('/') || tensorFile.includes('\\')) throw bad('tensorFile', 'a file name');
  if (typeof tensorBytes !== 'number') throw bad('tensorBytes', 'a number');
  if (!isRngState(meta['rng'])) throw bad('rng', 'an Rng state {i, j, S[256]}');
  const extra = meta['extra'];
  if (typeof extra !== 'object' || extra === null || Array.isArray(extra)) throw bad('extra', 'an object');
  const tpath = join(dir, tensorFile);
  if (!existsSync(tpath)) throw new QrlhfError(`${statePath}: names tensor file ${tensorFile}, which is missing`);
  const all = readTensorFile(tpath, tensorBytes);
  const variables: Record<string, tf.Tensor> = {};
  const opt: Record<string, tf.Tensor> = {};
  for (const [k, t] of Object.entries(all)) {
    if (k.startsWith('variables/')) variables[k.slice('variables/'.length)] = t;
    else if (k.startsWith('optimizer/')) opt[k.slice('optimizer/'.length)] = t;
    else t.dispose();
  }
  return { step, variables, optimizer: { step: optimizerStep, tensors: opt }, rng: meta['rng'], extra: extra as Record<string, unknown> };
}

/** Disposes every tensor of a loaded state (after copying them into variables). */
export function disposeTrainingState(s: TrainingState): void {
  for (const t of Object.values(s.variables)) t.dispose();
  for (const t of Object.values(s.optimizer.tensors)) t.dispose();
}

/**
 * Refuses to resume a run whose checkpoint was made with other values of the settings that fix
 * the training trajectory (`keys`): the config saved in the checkpoint's `extra.config` against
 * the current one. A checkpoint without a saved config is accepted.
 */
export function checkResumableConfig<C extends object>(saved: unknown, current: C, keys: readonly (keyof C & string)[], where: string): void {
  if (typeof saved !== 'object' || saved === null) return;
  const s = saved as Record<string, unknown>;
  const diff = keys.filter((k) => JSON.stringify(s[k]) !== JSON.stringify(current[k]));
  if (diff.length) {
    throw new QrlhfError(
      `${where}: cannot resume: the checkpoint was made with different ${diff
        .map((k) => `"${k}" (${JSON.stringify(s[k])}, now ${JSON.stringify(current[k])})`)
        .join(', ')}`,
    );
  }
}

/**
 * Whether the run folder already holds a checkpoint; one that does is continued only when asked
 * (`resume`), never overwritten by a fresh start.
 */
export function checkpointGuard(out: string, ckptDir: string, resume: boolean): boolean {
  const has = existsSync(join(ckptDir, 'state.json'));
  if (has && !resume) {
    throw new QrlhfError(`${out}: this run folder already has a checkpoint; pass --resume to continue it, or choose another --out`);
  }
  return has;
}
