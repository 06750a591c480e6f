/**
 * `cp` of a large file within a volume (coreutils cp uses copy_file_range, which pogfs
 * serves by reference: whole blocks get one more reference, no byte is read or written)
 * beside writing the same file into the volume: wall time and the stored bytes each adds.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { seconds, sh } from './shell';

export interface CopyRangeBench {
  mib: number;
  write: { seconds: number; storedBytes: number };
  cp: { seconds: number; storedBytes: number };
}

export function benchCopyRange(work: string, pogfs: string, mib: number): CopyRangeBench {
  const vol = join(work, 'copy-vol');
  const mnt = join(work, 'copy-mnt');
  const source = join(work, 'copy.src');
  mkdirSync(mnt);
  sh(`head -c ${mib * 1024 * 1024} /dev/urandom > '${source}'`);
  sh(`${pogfs} init '${vol}' && ${pogfs} mount '${vol}' '${mnt}'`);
  try {
    const stored = () => (JSON.parse(sh(`${pogfs} stats '${mnt}' --json`)) as { storedBytes: number }).storedBytes;
    const big = join(mnt, 'big');
    // Each step ends with its data committed (sync FILE: fsync), so neither pays for the other.
    const timed = (cmd: string) => {
      const before = stored();
      const s = seconds(cmd);
      return { seconds: s, storedBytes: stored() - before };
    };
    const write = timed(`cp '${source}' '${big}' && sync '${big}'`);
    const cp = timed(`cp '${big}' '${big}.copy' && sync '${big}.copy'`);
    const same = sh(`cmp '${big}' '${big}.copy' && echo same`).trim();
    if (same !== 'same') throw new Error('the copy differs from its original');
    return { mib, write, cp };
  } finally {
    sh(`grep -q ' ${mnt} ' /proc/mounts && ${pogfs} umount '${mnt}' || true`);
    rmSync(source, { force: true });
  }
}

export function printCopyRange(r: CopyRangeBench): void {
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  console.log(`\ncp of a ${r.mib} MiB file within one mount (copy_file_range, by reference), beside writing it:`);
  console.log(`  write (cp from the disk)  ${r.write.seconds.toFixed(2)} s  stored bytes +${mib(r.write.storedBytes)}`);
  console.log(
    `  cp within the mount       ${r.cp.seconds.toFixed(2)} s  stored bytes +${mib(r.cp.storedBytes)}  (${((100 * r.cp.seconds) / r.write.seconds).toFixed(1)}% of the time, ${((100 * r.cp.storedBytes) / Math.max(1, r.write.storedBytes)).toFixed(2)}% of the bytes; targets < 5%, < 1%)`,
  );
}
