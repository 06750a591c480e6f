/**
 * fsck and gc on a volume of about 1 GiB in about 50,000 files, against reading every
 * file once through the mount (cold caches both times): the target is a full fsck no
 * slower than that read, and `--quick` under a tenth of it.
 */
import { execFileSync } from 'node:child_process';
import { dropCaches, seconds, sh } from './shell';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export interface FsckBench {
  files: number;
  bytes: number;
  catSeconds: number;
  fsckSeconds: number;
  fsckMBps: number;
  quickSeconds: number;
  gcSeconds: number;
}




export function benchFsck(work: string, pogfs: string, files: number, totalMiB: number): FsckBench {
  const vol = join(work, 'fsck-vol');
  const mnt = join(work, 'fsck-mnt');
  mkdirSync(mnt);
  sh(`${pogfs} init '${vol}' && ${pogfs} mount '${vol}' '${mnt}'`);
  try {
    // Sizes spread around the mean, all unique, written by one process to keep it quick.
    const script = `
import os, random
rnd = random.Random(7)
root, n, mean = ${JSON.stringify(mnt)}, ${files}, ${Math.floor((totalMiB * 1024 * 1024) / files)}
for i in range(n):
    d = os.path.join(root, 'd%03d' % (i % 500))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'f%06d' % i), 'wb') as f:
        f.write(os.urandom(rnd.randint(mean // 2, mean * 3 // 2)))
`;
    execFileSync('python3', ['-c', script]);
    const bytes = Number(sh(`du -sb --apparent-size '${mnt}' | cut -f1`).trim());
    dropCaches();
    const catSeconds = seconds(`find '${mnt}' -type f -print0 | xargs -0 cat > /dev/null`);
    sh(`${pogfs} umount '${mnt}'`);
    dropCaches();
    const t = process.hrtime.bigint();
    const report = JSON.parse(sh(`${pogfs} fsck '${vol}' --json; true`)) as { stats: { mbPerSecond: number } };
    const fsckSeconds = Number(process.hrtime.bigint() - t) / 1e9;
    dropCaches();
    const quickSeconds = seconds(`${pogfs} fsck '${vol}' --quick --json > /dev/null; true`);
    dropCaches();
    const gcSeconds = seconds(`${pogfs} gc '${vol}' --json > /dev/null`);
    return { files, bytes, catSeconds, fsckSeconds, fsckMBps: report.stats.mbPerSecond, quickSeconds, gcSeconds };
  } finally {
    sh(`grep -q ' ${mnt} ' /proc/mounts && ${pogfs} umount '${mnt}' || true`);
  }
}

export function printFsck(r: FsckBench): void {
  console.log(`\nfsck/gc on ${r.files} files, ${(r.bytes / 2 ** 30).toFixed(2)} GiB (cold caches):`);
  console.log(`  cat every file through the mount  ${r.catSeconds.toFixed(2)} s  (${(r.bytes / r.catSeconds / 1e6).toFixed(0)} MB/s)`);
  console.log(`  pogfs fsck (full, re-hashes)      ${r.fsckSeconds.toFixed(2)} s  (${r.fsckMBps.toFixed(0)} MB/s hashed)  ratio to cat ${(r.fsckSeconds / r.catSeconds).toFixed(2)} (target <= 1)`);
  console.log(`  pogfs fsck --quick                ${r.quickSeconds.toFixed(2)} s  ratio to cat ${(r.quickSeconds / r.catSeconds).toFixed(3)} (target < 0.1)`);
  console.log(`  pogfs gc                          ${r.gcSeconds.toFixed(2)} s`);
}
