import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sharedDataFile } from '@qrlhf/core';
import { qrlhf } from './cli-helpers.js';

// Filesystem faults are user errors: one "qrlhf: PATH: cannot ...: CAUSE (CODE)" line, exit 1,
// never "internal error" (exit 2), and nothing half-written left behind.
const stories = sharedDataFile('models/stories260K/stories260K.bin');
const dir = mkdtempSync(join(tmpdir(), 'qrlhf-cli-fs-'));

async function fault(t: import('ava').ExecutionContext, args: string[], re: RegExp) {
  const r = await qrlhf(args);
  t.is(r.code, 1, r.stderr);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  t.is(lines.length, 1, r.stderr);
  t.regex(lines[0] ?? '', re);
  t.notRegex(r.stderr, /internal error/);
}

/** A small tmpfs (root only; skipped elsewhere): real ENOSPC and EROFS. */
function mountTmpfs(path: string, opts: string): boolean {
  if (process.getuid?.() !== 0) return false;
  mkdirSync(path, { recursive: true });
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', opts, 'tmpfs', path], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const umount = (path: string) => execFileSync('umount', [path], { stdio: 'ignore' });

if (!stories) test('filesystem faults (skipped: no ../shared/data/models/stories260K)', (t) => t.pass());
else {
  test('a file standing where a folder is needed: one line naming it', async (t) => {
    const file = join(dir, 'a-file');
    writeFileSync(file, 'x');
    await fault(t, ['convert', '--model', stories, '--out', join(file, 'conv')], /^qrlhf: .*a-file\/conv: cannot write the folder: .*a-file is a file, not a folder \(EEXIST\)$/);
    await fault(t, ['convert', '--model', stories, '--out', join(file, 'x', 'conv')], /a-file is a file, not a folder \(ENOTDIR\)$/);
  });

  test('a full disk (ENOSPC) and a read-only filesystem (EROFS), on real tmpfs mounts', async (t) => {
    const full = join(dir, 'full');
    const ro = join(dir, 'ro');
    if (!mountTmpfs(full, 'size=600k')) {
      t.log('skipped: cannot mount a tmpfs here (needs root)');
      t.pass();
      return;
    }
    try {
      // stories260K's model.safetensors is ~1 MB: the disk fills while it is written
      await fault(t, ['convert', '--model', stories, '--out', join(full, 'conv')], /^qrlhf: .*full\/conv\/model\.safetensors: cannot write: no space left on the device \(ENOSPC\)$/);
      t.deepEqual(readdirSync(full), [], 'the partial output is removed');
      t.true(mountTmpfs(ro, 'ro,size=64k'));
      try {
        await fault(t, ['convert', '--model', stories, '--out', join(ro, 'a', 'conv')], /^qrlhf: .*ro\/a\/conv: cannot write the folder: .*ro: the filesystem is read-only \(EROFS\)$/);
      } finally {
        umount(ro);
      }
    } finally {
      umount(full);
    }
  });
}
