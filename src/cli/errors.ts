/** A problem the user can fix (bad arguments, missing volume, busy mount point): one line, exit 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message);
  }
}
