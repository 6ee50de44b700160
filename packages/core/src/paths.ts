import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The monorepo root: the nearest ancestor of this file holding a package.json with workspaces. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'packages')) && existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}

/**
 * `../shared/data` beside the repository (or $QRLHF_SHARED_DATA), or null when absent: a user's
 * fresh clone has no shared folder, and tests that need real data skip with a message then.
 */
export function sharedDataDir(): string | null {
  const env = process.env['QRLHF_SHARED_DATA'];
  if (env && existsSync(env)) return resolve(env);
  const dir = resolve(repoRoot(), '..', 'shared', 'data');
  return existsSync(dir) ? dir : null;
}

/** A file under the shared data folder, or null when the folder or the file is absent. */
export function sharedDataFile(rel: string): string | null {
  const dir = sharedDataDir();
  if (!dir) return null;
  const p = join(dir, rel);
  return existsSync(p) ? p : null;
}
