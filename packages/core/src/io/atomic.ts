/**
 * Atomic outputs: a reader (or a run resumed after a crash) sees a whole old file or folder or a
 * whole new one, never a mix, never nothing.
 *
 * Files: written under a temporary name beside the target, then renamed over it (rename(2)
 * replaces a file atomically). A failed write removes its temporary file.
 *
 * Folders: rename(2) cannot replace a non-empty folder, and renaming the old one away first leaves
 * a moment with no folder at all. So the visible path is a symbolic link to a versioned sibling:
 *
 *     conv  ->  .conv.v-<stamp>-<pid>/        (the complete current version)
 *
 * A new version is built as `.conv.tmp-<stamp>-<pid>`, renamed to `.conv.v-<stamp>-<pid>` once
 * complete (so every `.v-` folder is whole), a new link to it is made as `.conv.link-<stamp>-<pid>`
 * and renamed over `conv` (atomic: a link is a file to rename(2)), then the old version is
 * removed. Readers open `conv/...` as before: the link is followed. The link is relative, so the
 * parent folder can be moved or copied (cp -r, tar keep links) as a whole.
 *
 * At the start of every write, leftovers of earlier runs that died are cleaned up (anything of
 * ours whose process is gone): unfinished builds, versions no longer linked, stray links, and the
 * `conv.tmp-PID` / `conv.old-PID` folders of the older two-rename scheme (an `.old-` folder is put
 * back when the path has no folder). One window remains, once per folder: when the path still holds
 * a plain folder (written before this scheme, or by hand), it is moved to a version name and the
 * link put in its place; a crash between those two renames is repaired by the next write, which
 * links the newest complete version. On Windows (no unprivileged symbolic links) the plain
 * two-rename swap is kept.
 */
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { FsFault, fsFault } from './fsfault.js';

/** Writes a file under a temporary name beside it, then renames: readers never see half a file. */
export function writeFileAtomic(path: string, data: string | Uint8Array): void {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}`);
  try {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } catch (e) {
    removeQuietly(tmp);
    throw fsFault(e, path, 'write');
  }
}

/** The steps of writeDirAtomic, in order, reported to `onStep` (tests kill the process there). */
export type DirStep = 'cleaned' | 'built' | 'completed' | 'linked' | 'moved-plain' | 'swapped' | 'done';

export interface WriteDirOptions {
  /** Called after each step; a test hook for fault injection. */
  onStep?: (step: DirStep) => void;
}

let counter = 0;
/** `<ms><3-digit counter>-<pid>`: unique, and ordered by time within a folder. */
function stamp(): string {
  return `${Date.now()}${String(counter++ % 1000).padStart(3, '0')}-${process.pid}`;
}

function removeQuietly(p: string): void {
  try {
    rmSync(p, { recursive: true, force: true });
  } catch {
    // best effort: the next write's clean-up tries again
  }
}

function lexists(p: string): boolean {
  try {
    lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

interface Entry {
  name: string;
  kind: 'tmp' | 'v' | 'link' | 'legacy-tmp' | 'legacy-old';
  order: bigint;
  pid: number;
}

/** Our entries beside `base` in `parent`. */
function entriesOf(parent: string, base: string): Entry[] {
  const ours = new RegExp(`^\\.${escapeRe(base)}\\.(tmp|v|link)-(\\d+)-(\\d+)$`);
  const legacy = new RegExp(`^${escapeRe(base)}\\.(tmp|old)-(\\d+)$`);
  const out: Entry[] = [];
  let names: string[];
  try {
    names = readdirSync(parent);
  } catch {
    return out;
  }
  for (const name of names) {
    const m = ours.exec(name);
    if (m) out.push({ name, kind: m[1] as 'tmp' | 'v' | 'link', order: BigInt(m[2]!), pid: Number(m[3]) });
    const l = legacy.exec(name);
    if (l) out.push({ name, kind: l[1] === 'tmp' ? 'legacy-tmp' : 'legacy-old', order: 0n, pid: Number(l[2]) });
  }
  return out;
}

/** The version folder `abs` links to when it is one of our links, else null. */
function linkedVersion(abs: string): string | null {
  let target: string;
  try {
    target = readlinkSync(abs);
  } catch {
    return null; // absent, or not a link
  }
  return new RegExp(`^\\.${escapeRe(basename(abs))}\\.v-\\d+-\\d+$`).test(target) ? target : null;
}

/**
 * Cleans up what writes to `dir` that died left behind (see the header), and repairs a path left
 * without its folder. Runs at the start of every writeDirAtomic; a run may call it on its outputs
 * at start too. Entries of live processes (a concurrent writer) are left alone.
 */
export function recoverDirAtomic(dir: string): void {
  const abs = resolve(dir);
  const parent = dirname(abs);
  const base = basename(abs);
  const entries = entriesOf(parent, base);
  if (entries.length === 0) return;
  const dead = (e: Entry) => !pidAlive(e.pid);
  // the older two-rename scheme: .old is the complete previous folder, .tmp the (maybe whole) new one
  for (const e of entries.filter((x) => x.kind.startsWith('legacy') && dead(x))) {
    if (e.kind === 'legacy-old' && !existsSync(abs)) {
      removeQuietly(abs); // a dangling link, if any
      renameSync(join(parent, e.name), abs);
    } else removeQuietly(join(parent, e.name));
  }
  let current = linkedVersion(abs);
  if (!existsSync(abs)) {
    // died between moving a plain folder away and linking: link the newest complete version
    const newest = entries.filter((e) => e.kind === 'v' && dead(e)).sort((a, b) => (a.order < b.order ? 1 : -1))[0];
    if (newest) {
      const link = join(parent, `.${base}.link-${stamp()}`);
      symlinkSync(newest.name, link);
      renameSync(link, abs);
      current = newest.name;
    }
  }
  for (const e of entries) {
    if (e.kind.startsWith('legacy') || e.name === current || !dead(e)) continue;
    removeQuietly(join(parent, e.name));
  }
}

/**
 * Builds a folder with `fill` (into a fresh temporary folder it is given), then makes `dir` show
 * it in one atomic step (see the header): a crash leaves `dir` the old folder or the new one.
 * A failure removes what it built; filesystem faults become an FsFault naming `dir`.
 */
export async function writeDirAtomic(
  dir: string,
  fill: (tmpDir: string) => Promise<void> | void,
  opts: WriteDirOptions = {},
): Promise<void> {
  const step = opts.onStep ?? (() => {});
  let abs = resolve(dir);
  // a link of the user's own (not one of our versions) is written through: its target is the folder
  if (lexists(abs) && lstatSync(abs).isSymbolicLink() && linkedVersion(abs) === null && existsSync(abs)) abs = realpathSync(abs);
  const parent = dirname(abs);
  const base = basename(abs);
  if (process.platform === 'win32') return writeDirTwoRenames(abs, fill);
  const plainId = stamp(); // reserved first: a plain folder moved aside is older than the new version
  const id = stamp();
  const tmp = join(parent, `.${base}.tmp-${id}`);
  const version = `.${base}.v-${id}`;
  const link = join(parent, `.${base}.link-${id}`);
  let swapped = false;
  try {
    mkdirSync(parent, { recursive: true });
    recoverDirAtomic(abs);
    step('cleaned');
    mkdirSync(tmp);
    await fill(tmp);
    step('built');
    renameSync(tmp, join(parent, version));
    step('completed');
    symlinkSync(version, link);
    step('linked');
    const old = linkedVersion(abs);
    let plainOld: string | null = null;
    if (old === null && lexists(abs) && lstatSync(abs).isDirectory()) {
      plainOld = `.${base}.v-${plainId}`;
      renameSync(abs, join(parent, plainOld));
      step('moved-plain');
    }
    renameSync(link, abs);
    swapped = true;
    step('swapped');
    if (old !== null) removeQuietly(join(parent, old));
    if (plainOld !== null) removeQuietly(join(parent, plainOld));
    step('done');
  } catch (e) {
    removeQuietly(tmp);
    removeQuietly(link);
    if (!swapped) removeQuietly(join(parent, version));
    throw renameFault(e, tmp, abs);
  }
}

/** A fault met inside the temporary folder, reported at the path it was meant to have. */
function renameFault(e: unknown, tmp: string, abs: string): unknown {
  if (e instanceof FsFault && (e.path === tmp || e.path.startsWith(tmp + sep))) {
    const p = join(abs, relative(tmp, e.path));
    return new FsFault(e.message.split(e.path).join(p), e.code, p, { cause: e });
  }
  return fsFault(e, abs, 'write the folder');
}

/** Windows: the older swap (rename the old folder away, the new one in); not atomic. */
async function writeDirTwoRenames(abs: string, fill: (tmpDir: string) => Promise<void> | void): Promise<void> {
  const tmp = `${abs}.tmp-${process.pid}`;
  const old = `${abs}.old-${process.pid}`;
  try {
    recoverDirAtomic(abs);
    removeQuietly(tmp);
    mkdirSync(tmp, { recursive: true });
    await fill(tmp);
    if (existsSync(abs)) renameSync(abs, old);
    renameSync(tmp, abs);
    removeQuietly(old);
  } catch (e) {
    removeQuietly(tmp);
    throw renameFault(e, tmp, abs);
  }
}
