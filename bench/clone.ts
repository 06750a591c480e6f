/**
 * `pogfs clone` and `pogfs snapshot create` of a tree of many small files (100,000 by
 * default), beside `cp -a` of the same tree within the same mount: wall time and the
 * stored bytes each adds. The tree is generated once, by one process.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { seconds, sh } from './shell';

export interface CloneBench {
  files: number;
  bytes: number;
  /** Seconds and stored bytes added, per way of copying. */
  cpA: { seconds: number; storedBytes: number };
  clone: { seconds: number; storedBytes: number };
  snapshot: { seconds: number; storedBytes: number };
}

export function benchClone(work: string, pogfs: string, files: number): CloneBench {
  const vol = join(work, 'clone-vol');
  const mnt = join(work, 'clone-mnt');
  mkdirSync(mnt);
  sh(`${pogfs} init '${vol}' && ${pogfs} mount '${vol}' '${mnt}'`);
  try {
    // Unique files of 1 to 16 KiB in directories of 200, like a source tree.
    const script = `
import os, random
rnd = random.Random(11)
root, n = ${JSON.stringify(join(mnt, 'tree'))}, ${files}
for i in range(n):
    d = os.path.join(root, 'd%03d' % (i // 200 % 100), 'e%03d' % (i // 200))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'f%06d' % i), 'wb') as f:
        f.write(os.urandom(rnd.randint(1024, 16384)))
`;
    execFileSync('python3', ['-c', script]);
    const bytes = Number(sh(`du -sb --apparent-size '${join(mnt, 'tree')}' | cut -f1`).trim());
    const stored = () => (JSON.parse(sh(`${pogfs} stats '${mnt}' --json`)) as { storedBytes: number }).storedBytes;
    // Each copy starts on a settled volume: a remount commits what the step before left
    // in flight (cp -a's 100,000 closes are committed behind it), so no step pays for another.
    const settle = () => sh(`${pogfs} umount '${mnt}' && ${pogfs} mount '${vol}' '${mnt}'`);
    const timed = (cmd: string) => {
      settle();
      const before = stored();
      const s = seconds(cmd);
      settle();
      return { seconds: s, storedBytes: stored() - before };
    };
    const cpA = timed(`cp -a '${join(mnt, 'tree')}' '${join(mnt, 'cp-copy')}'`);
    const clone = timed(`${pogfs} clone '${join(mnt, 'tree')}' '${join(mnt, 'clone-copy')}' > /dev/null`);
    const snapshot = timed(`${pogfs} snapshot create '${mnt}' bench > /dev/null`);
    return { files, bytes, cpA, clone, snapshot };
  } finally {
    sh(`grep -q ' ${mnt} ' /proc/mounts && ${pogfs} umount '${mnt}' || true`);
  }
}

export function printClone(r: CloneBench): void {
  const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  console.log(`\ncopies of a tree of ${r.files} files, ${mib(r.bytes)} (within one mount):`);
  console.log(`  cp -a                   ${r.cpA.seconds.toFixed(2)} s  stored bytes +${mib(r.cpA.storedBytes)}`);
  console.log(`  pogfs clone             ${r.clone.seconds.toFixed(2)} s  stored bytes +${mib(r.clone.storedBytes)}  (${(r.cpA.seconds / r.clone.seconds).toFixed(0)}x faster than cp -a)`);
  console.log(`  pogfs snapshot create   ${r.snapshot.seconds.toFixed(2)} s  stored bytes +${mib(r.snapshot.storedBytes)}  (the whole volume: 3 trees)`);
}
