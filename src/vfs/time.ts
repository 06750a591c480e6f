import type { Timespec } from '../posix/file-system';

export type { Timespec };

// Date.now() has millisecond resolution; anchor the monotonic clock to it once so times
// carry sub-millisecond digits, as a kernel filesystem's would.
const originNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();

export function now(): Timespec {
  const t = originNs + process.hrtime.bigint();
  return { s: Number(t / 1_000_000_000n), ns: Number(t % 1_000_000_000n) };
}
