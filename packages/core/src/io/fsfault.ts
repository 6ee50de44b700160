/**
 * Filesystem faults as user errors. A full disk, a read-only filesystem, a missing permission, a
 * file where a folder is expected (and the reverse) are faults a user can fix, so they surface as
 * one QrlhfError naming the path and the cause ("runs/x/model.safetensors: cannot write: no space
 * left on the device (ENOSPC)"), never as an internal error.
 *
 * Why it needs more than the errno: Node's recursive mkdir reports ENOENT on a read-only
 * filesystem, and ENOTDIR names the path asked for rather than the file standing in its way; so
 * `explain` looks at the nearest existing ancestor to name the real cause.
 */
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { QrlhfError } from '../errors.js';

/** A filesystem fault: a QrlhfError that keeps the errno code and the path it is about. */
export class FsFault extends QrlhfError {
  constructor(
    message: string,
    readonly code: string,
    readonly path: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const CAUSES: Record<string, string> = {
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  EROFS: 'the filesystem is read-only',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOTDIR: 'a part of the path is not a folder',
  EISDIR: 'it is a folder, a file was expected',
  ENOENT: 'no such file or folder',
  EEXIST: 'it already exists',
  ENOTEMPTY: 'the folder is not empty',
  EBUSY: 'it is busy (a mount point, or in use)',
  ENAMETOOLONG: 'the name is too long',
  ELOOP: 'too many levels of symbolic links',
  EMFILE: 'too many open files',
  ENFILE: 'too many open files in the system',
  EXDEV: 'it is on another filesystem',
  EIO: 'input/output error',
  EFBIG: 'the file is too large',
};

/** An errno error from node:fs (or a child process): it has a string code like "EACCES". */
export function isErrnoError(e: unknown): e is NodeJS.ErrnoException & { code: string } {
  return e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string' && /^E[A-Z0-9]+$/.test((e as NodeJS.ErrnoException).code!);
}

/** The nearest ancestor of `p` (or `p` itself) that exists. */
function nearestExisting(p: string): string {
  let d = resolve(p);
  while (!existsSync(d) && dirname(d) !== d) d = dirname(d);
  return d;
}

/** The cause of an errno `code` on `path`, looking at the filesystem where the errno misleads. */
function explain(code: string, path: string, syscall: string | undefined): { code: string; cause: string } {
  if (code === 'ENOTDIR' || (code === 'EEXIST' && syscall === 'mkdir')) {
    // the first component of the path that exists and is not a folder
    const chain: string[] = [];
    for (let d = resolve(path); dirname(d) !== d; d = dirname(d)) chain.unshift(d);
    for (const c of chain) {
      let isDir: boolean;
      try {
        isDir = statSync(c).isDirectory();
      } catch {
        break;
      }
      if (!isDir) return { code, cause: `${c} is a file, not a folder` };
    }
  }
  if (code === 'ENOENT' && (syscall === 'mkdir' || syscall === 'open' || syscall === 'rename')) {
    // mkdir -p on a read-only filesystem says ENOENT: ask the ancestor that exists
    const anc = nearestExisting(path);
    try {
      if (statSync(anc).isDirectory()) accessSync(anc, constants.W_OK);
    } catch (e) {
      if (isErrnoError(e) && (e.code === 'EROFS' || e.code === 'EACCES')) return { code: e.code, cause: `${anc}: ${CAUSES[e.code]}` };
    }
  }
  return { code, cause: CAUSES[code] ?? 'filesystem error' };
}

/**
 * The FsFault for an errno error `e` met while trying to `action` ("write", "create the folder")
 * `path` (default: the path the error names); anything else is returned unchanged.
 */
export function fsFault(e: unknown, path?: string, action?: string): unknown {
  if (e instanceof QrlhfError || !isErrnoError(e)) return e;
  const p = path ?? e.path ?? (e as { dest?: string }).dest;
  const what = action ?? (e.syscall ? SYSCALL_ACTIONS[e.syscall] ?? e.syscall : 'access');
  // a write on an open descriptor names no path: still a user fault, said as well as it can be
  if (p === undefined) return CAUSES[e.code] ? new FsFault(`cannot ${what}: ${CAUSES[e.code]} (${e.code})`, e.code, '', { cause: e }) : e;
  const { code, cause } = explain(e.code, p, e.syscall);
  return new FsFault(`${p}: cannot ${what}: ${cause} (${code})`, code, p, { cause: e });
}

const SYSCALL_ACTIONS: Record<string, string> = {
  open: 'open',
  write: 'write',
  read: 'read',
  mkdir: 'create the folder',
  rename: 'rename',
  unlink: 'remove',
  rmdir: 'remove the folder',
  rm: 'remove',
  scandir: 'list the folder',
  stat: 'read',
  lstat: 'read',
  symlink: 'link',
  copyfile: 'copy',
  access: 'access',
  fsync: 'write',
  close: 'write',
};

/**
 * Checks, before any work, that `path` can be written as a `kind`: where it exists it is that kind
 * (a folder given for a file, or a file for a folder, is refused), and the folder it goes into (its
 * nearest existing ancestor) is a folder this process may write. A run that would find out only
 * when it saves, after hours, finds out at once. Throws an FsFault naming the path and the cause.
 */
export function checkWritable(path: string, kind: 'file' | 'folder'): void {
  const abs = resolve(path);
  let isDir: boolean | null = null;
  try {
    isDir = statSync(abs).isDirectory();
  } catch {
    // absent (or a dangling link): what matters is the folder above
  }
  if (isDir === true && kind === 'file') throw new FsFault(`${path}: is a folder; expected the path of a file to write`, 'EISDIR', path);
  if (isDir === false && kind === 'folder') throw new FsFault(`${path}: exists and is not a folder`, 'ENOTDIR', path);
  const anc = nearestExisting(isDir === true ? abs : dirname(abs));
  if (!statSync(anc).isDirectory()) throw new FsFault(`${path}: cannot write: ${anc} is a file, not a folder (ENOTDIR)`, 'ENOTDIR', path);
  try {
    accessSync(anc, constants.W_OK);
  } catch (e) {
    if (!isErrnoError(e)) throw e;
    throw new FsFault(`${path}: cannot write: ${anc}: ${CAUSES[e.code] ?? e.code} (${e.code})`, e.code, path, { cause: e });
  }
}
