import { QrlhfError } from '@qrlhf/core';

/**
 * Wraps a command handler: a QrlhfError (a fault the user can fix) prints one line and exits 1;
 * anything else prints its message, and its stack only with QRLHF_DEBUG=1, and exits 2.
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

export function reportAndExit(e: unknown): never {
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
