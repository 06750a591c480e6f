import { constants } from 'node:os';

export const E = constants.errno;

/** An error that the FUSE adapter answers with its errno. */
export class FsError extends Error {
  constructor(
    readonly errno: number,
    message?: string,
  ) {
    super(message ?? `errno ${errno}`);
  }
}

export function fail(errno: number, message?: string): never {
  throw new FsError(errno, message);
}
