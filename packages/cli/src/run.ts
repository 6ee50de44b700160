import { QrlhfError, fsFault } from '@qrlhf/core';

/**
 * Wraps a command handler: a QrlhfError (a fault the user can fix) prints one line and exits 1;
 * so does a filesystem fault (a full disk, a read-only filesystem, a missing permission, a file
 * where a folder belongs: see fsFault), named by its path and cause; anything else prints its
 * message, and its stack only with QRLHF_DEBUG=1, and exits 2.
 */
export function handle<A>(fn: (args: A) => Promise<void> | void): (args: A) => Promise<void> {
  return async (args: A) => {
    try {
      await fn(args);
    } catch (e) {
      reportAndExit(e);
    }
  };
}

export function reportAndExit(err0: unknown): never {
  const e = fsFault(err0);
  if (e instanceof QrlhfError) {
    process.stderr.write(`qrlhf: ${e.message}\n`);
    process.exit(1);
  }
  const err = e instanceof Error ? e : new Error(String(e));
  process.stderr.write(`qrlhf: internal error: ${err.message}\n`);
  if (process.env['QRLHF_DEBUG']) process.stderr.write(`${err.stack}\n`);
  else process.stderr.write('(set QRLHF_DEBUG=1 for the stack trace)\n');
  process.exit(2);
}
