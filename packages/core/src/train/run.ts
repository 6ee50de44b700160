/**
 * The run folder of a training stage (sft, rloo, qrm): one owner at a time, one kind of run.
 *
 * - Kind: a run folder holds `.qrlhf-run` ({"kind": "sft"}); a stage writes only into a missing or
 *   empty folder or one of its own kind, as `convert` writes only over a model folder (issue 12
 *   item 13: sft, rloo and qrm gate wrote into any folder). Folders written before the marker
 *   existed are recognised by their files (`legacyKind`).
 * - Lock: `.lock` holds the owner's PID, created exclusively (O_EXCL); a second run into the same
 *   folder is refused naming that PID (issue 12 item 12: two runs interleaved metrics.jsonl and one
 *   died on the other's temporary file). A lock whose PID is no longer alive (a run killed with
 *   SIGKILL) is stale and taken over. Two processes that find the same stale lock at the same
 *   instant can both take it; qrlhf does not guard that case.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { QrlhfError } from '../errors.js';

const MARKER = '.qrlhf-run';
const LOCK = '.lock';

/** A held run folder; release() drops the lock (also safe to call twice). */
export interface RunFolder {
  out: string;
  kind: string;
  release(): void;
}

/** What a folder without a marker holds, from its files (run folders older than the marker). */
function legacyKind(dir: string, entries: string[]): string | null {
  if (entries.includes('config.json')) {
    try {
      const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
      if ('policy' in c && 'prompts' in c) return 'rloo';
      if ('data' in c && 'maxLength' in c) return 'sft';
    } catch {
      return null;
    }
  }
  if (entries.includes('heads.safetensors') || entries.includes('qrm.json')) return 'qrm';
  return null;
}

/** The kind of run a folder holds: its marker, else what its files say; null for an empty or missing folder. */
export function runFolderKind(dir: string): string | null | 'unknown' {
  if (!existsSync(dir)) return null;
  if (!statSync(dir).isDirectory()) throw new QrlhfError(`${dir}: exists and is not a folder`);
  const entries = readdirSync(dir).filter((f) => f !== LOCK);
  if (entries.length === 0) return null;
  if (entries.includes(MARKER)) {
    try {
      const k = (JSON.parse(readFileSync(join(dir, MARKER), 'utf8')) as { kind?: unknown }).kind;
      if (typeof k === 'string') return k;
    } catch {
      // fall through: a damaged marker says nothing
    }
  }
  return legacyKind(dir, entries) ?? 'unknown';
}

/** Refuses a non-empty folder that is not a run of `kind` (a missing or empty one is fine). */
export function checkRunFolderKind(out: string, kind: string): void {
  const found = runFolderKind(out);
  if (found !== null && found !== kind) {
    throw new QrlhfError(
      found === 'unknown'
        ? `${out}: the folder is not empty and holds no ${kind} run; choose another --out (or an empty folder)`
        : `${out}: the folder holds a ${found} run, not a ${kind} run; choose another --out`,
    );
  }
}

/** checkRunFolderKind, then creates the folder and its marker. */
export function claimRunFolder(out: string, kind: string): void {
  checkRunFolderKind(out, kind);
  mkdirSync(out, { recursive: true });
  if (!existsSync(join(out, MARKER))) {
    const fd = openSync(join(out, MARKER), 'w');
    try {
      writeSync(fd, JSON.stringify({ kind }) + '\n');
    } finally {
      closeSync(fd);
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the folder's lock for this process; refuses one held by a live process, takes over a stale one. */
export function lockRunFolder(out: string): () => void {
  mkdirSync(out, { recursive: true });
  const path = join(out, LOCK);
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, 'wx');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let pid = NaN;
      try {
        pid = Number.parseInt(readFileSync(path, 'utf8'), 10);
      } catch {
        continue; // removed meanwhile: try again
      }
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new QrlhfError(`${out}: another run (PID ${pid}) is writing into this folder; wait for it to end or choose another --out`);
      }
      rmSync(path, { force: true }); // stale: its owner is gone
      continue;
    }
    try {
      writeSync(fd, `${process.pid}\n`);
    } finally {
      closeSync(fd);
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      try {
        if (Number.parseInt(readFileSync(path, 'utf8'), 10) === process.pid) rmSync(path, { force: true });
      } catch {
        // already gone
      }
    };
  }
  throw new QrlhfError(`${out}: could not take the run folder's lock (${path})`);
}

/** claimRunFolder + lockRunFolder: the folder is `kind`'s and this process's until release(). */
export function openRunFolder(out: string, kind: string): RunFolder {
  const release = lockRunFolder(out);
  try {
    claimRunFolder(out, kind);
  } catch (e) {
    release();
    throw e;
  }
  return { out, kind, release };
}
