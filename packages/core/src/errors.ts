/**
 * The one error type for faults a user can cause: a bad config, a bad file, a bad data row.
 * The message names the place (file, line, field) and what was expected; the CLI prints it
 * without a stack trace and exits non-zero.
 */
export class QrlhfError extends Error {
  override readonly name = 'QrlhfError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Throws a QrlhfError unless `cond` holds. */
export function check(cond: unknown, message: string | (() => string)): asserts cond {
  if (!cond) throw new QrlhfError(typeof message === 'string' ? message : message());
}
