import { constants } from 'node:os';

export const E = constants.errno;

/** An error that answers a filesystem call with a Linux errno (the FUSE adapter replies with it). */
export class FsError extends Error {
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    super(message ?? `errno ${errno}`);
  }
}

/**
 * Throws the errno. No stack trace is taken: these are answers (ENOENT for every name
 * that does not exist yet), not bugs, and capturing a stack costs more than the lookup.
 */
export function fail(errno: number, message?: string): never {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  const err = new FsError(errno, message);
  Error.stackTraceLimit = limit;
  throw err;
}
