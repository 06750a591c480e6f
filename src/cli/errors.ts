import { isNativeModuleMismatch, nativeModuleMismatchMessage } from '../native-modules';

/** A problem the user can fix (bad arguments, missing volume, busy mount point): one line, exit 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}

/**
 * The error as the user should read it, when it is one they can act on: a UsageError,
 * a volume that cannot be opened, a native module built for another Node.js.
 * Undefined for a bug (the caller prints the stack).
 */
export function userFacingError(err: unknown): UsageError | undefined {
  if (err instanceof UsageError) return err;
  if (isNativeModuleMismatch(err)) return new UsageError(nativeModuleMismatchMessage(err));
  if ((err as Error | undefined)?.name === 'VolumeError') return new UsageError((err as Error).message);
  return undefined;
}
