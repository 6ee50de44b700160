import test from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QrlhfError } from '../src/errors.js';
import { recoverDirAtomic, writeDirAtomic, writeFileAtomic, type DirStep } from '../src/io/atomic.js';
import { FsFault, fsFault } from '../src/io/fsfault.js';

const root = mkdtempSync(join(tmpdir(), 'qrlhf-atomic-'));
let n = 0;
const fresh = () => {
  const p = join(root, `case-${n++}`);
  mkdirSync(p);
  return p;
};
const child = fileURLToPath(new URL('./atomic.child.ts', import.meta.url));

/** Runs the child: writeDirAtomic(dir) with tag, killed after step killAt. Returns its signal. */
function write(dir: string, tag: string, killAt: DirStep | 'none'): NodeJS.Signals | null {
  const r = spawnSync(process.execPath, ['--conditions=source', '--import=tsx', child, dir, tag, killAt], { encoding: 'utf8' });
  if (r.status !== 0 && r.signal === null) throw new Error(r.stderr);
  return r.signal;
}

/** The tag of the complete folder at `dir`, or a description of what is wrong. */
function contents(dir: string): string {
  if (!existsSync(dir)) return 'no folder';
  const files = readdirSync(dir).sort();
  if (files.join() !== 'a.txt,b.txt') return `files ${files.join()}`;
  const a = readFileSync(join(dir, 'a.txt'), 'utf8');
  const b = readFileSync(join(dir, 'b.txt'), 'utf8');
  return a === b ? a : `torn ${a}/${b}`;
}

const STEPS: DirStep[] = ['cleaned', 'built', 'completed', 'linked', 'swapped', 'done'];

test('a SIGKILL after any step leaves the complete old folder or the complete new one, and the next write cleans up', (t) => {
  for (const [i, killAt] of STEPS.entries()) {
    const parent = fresh();
    const dir = join(parent, 'out');
    t.is(write(dir, 'old', 'none'), null);
    t.is(contents(dir), 'old');
    t.is(write(dir, 'new', killAt), 'SIGKILL');
    // before the link is swapped in the old folder is visible, from then on the new one
    t.is(contents(dir), i < STEPS.indexOf('swapped') ? 'old' : 'new', `killed after ${killAt}`);
    t.is(write(dir, 'next', 'none'), null);
    t.is(contents(dir), 'next');
    // nothing else is left: the link and the one version it points to
    const left = readdirSync(parent).sort();
    t.is(left.length, 2, `after a kill at ${killAt}: ${left.join(', ')}`);
    t.true(lstatSync(dir).isSymbolicLink());
    t.deepEqual(left, [readlinkSync(dir), 'out'].sort());
  }
});

test('a plain folder (an older layout) is replaced; a kill in its one window is repaired by the next write', (t) => {
  const parent = fresh();
  const dir = join(parent, 'out');
  mkdirSync(dir);
  writeFileSync(join(dir, 'a.txt'), 'plain');
  writeFileSync(join(dir, 'b.txt'), 'plain');
  t.is(write(dir, 'new', 'moved-plain'), 'SIGKILL');
  t.is(contents(dir), 'no folder'); // the window: between moving the plain folder aside and linking
  recoverDirAtomic(dir);
  t.is(contents(dir), 'new', 'the newest complete version is linked back');
  t.is(write(dir, 'next', 'none'), null);
  t.is(contents(dir), 'next');
  t.is(readdirSync(parent).length, 2);
});

test('leftovers of the older two-rename scheme: an .old folder is put back, a .tmp one removed', (t) => {
  const parent = fresh();
  const dir = join(parent, 'out');
  const dead = 2 ** 22 + 12345; // above Linux's pid_max default: no such process
  for (const [name, tag] of [[`out.old-${dead}`, 'old'], [`out.tmp-${dead}`, 'new']] as const) {
    mkdirSync(join(parent, name));
    writeFileSync(join(parent, name, 'a.txt'), tag);
    writeFileSync(join(parent, name, 'b.txt'), tag);
  }
  // the killed run of the issue: no output folder, both leftovers
  recoverDirAtomic(dir);
  t.is(contents(dir), 'old');
  t.deepEqual(readdirSync(parent), ['out']);
  // a leftover of a live process (this one) is not touched
  mkdirSync(join(parent, `.out.tmp-1-${process.pid}`));
  recoverDirAtomic(dir);
  t.true(existsSync(join(parent, `.out.tmp-1-${process.pid}`)));
});

test('a failing fill (ENOSPC) removes what it built, keeps the old folder and names the file it was writing', async (t) => {
  const parent = fresh();
  const dir = join(parent, 'model');
  await writeDirAtomic(dir, (tmp) => writeFileSync(join(tmp, 'a.txt'), 'old'));
  const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
  const e = await t.throwsAsync(
    writeDirAtomic(dir, (tmp) => {
      writeFileSync(join(tmp, 'config.json'), '{}');
      // what writeFileAtomic throws when the disk is full, inside the folder being built
      throw fsFault(enospc, join(tmp, 'model.safetensors'), 'write');
    }),
    { instanceOf: FsFault },
  );
  t.is(e!.message, `${join(dir, 'model.safetensors')}: cannot write: no space left on the device (ENOSPC)`);
  t.is(readFileSync(join(dir, 'a.txt'), 'utf8'), 'old');
  t.is(readdirSync(parent).length, 2, readdirSync(parent).join(', '));
  // a file write that fails leaves no temporary file either
  const f = join(parent, 'x.json');
  mkdirSync(f); // a folder where the file should go: rename(2) fails with EISDIR
  const e2 = t.throws(() => writeFileAtomic(f, 'data'), { instanceOf: QrlhfError });
  t.regex(e2!.message, /x\.json: cannot write: it is a folder, a file was expected \(EISDIR\)$/);
  t.false(readdirSync(parent).some((x) => x.includes('.tmp-')));
});

test('fsFault names the path and the cause, and finds what stands in the way', (t) => {
  const parent = fresh();
  const file = join(parent, 'f');
  writeFileSync(file, 'x');
  const errno = (code: string, syscall: string, path?: string) => Object.assign(new Error(`${code}: ...`), { code, syscall, path });
  const msg = (e: unknown) => (e as Error).message;
  t.is(msg(fsFault(errno('EACCES', 'open', '/a/b'))), '/a/b: cannot open: permission denied (EACCES)');
  t.is(msg(fsFault(errno('EROFS', 'mkdir', '/a'), '/a/b', 'write')), '/a/b: cannot write: the filesystem is read-only (EROFS)');
  t.is(msg(fsFault(errno('ENOTDIR', 'mkdir', join(file, 'y')))), `${join(file, 'y')}: cannot create the folder: ${file} is a file, not a folder (ENOTDIR)`);
  t.is(msg(fsFault(errno('EEXIST', 'mkdir', file), join(file, 'z'), 'write')), `${join(file, 'z')}: cannot write: ${file} is a file, not a folder (EEXIST)`);
  t.is(msg(fsFault(errno('ENOSPC', 'write'))), 'cannot write: no space left on the device (ENOSPC)');
  // not a filesystem fault: unchanged
  const plain = new Error('boom');
  t.is(fsFault(plain), plain);
  const user = new QrlhfError('x');
  t.is(fsFault(user), user);
});
