/**
 * The errno `fn` fails with, undefined when it succeeds. An error that carries no errno is
 * not an answer of the filesystem: it is thrown on, so a bug never reads as "succeeded".
 */
export async function errno(fn: () => unknown): Promise<number | undefined> {
  try {
    await fn();
    return undefined;
  } catch (err) {
    const n = (err as { errno?: number }).errno;
    if (n === undefined) throw err;
    return n;
  }
}
