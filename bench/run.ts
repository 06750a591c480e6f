/**
 * `npm run bench`: the volume core measured against references taken in the same run
 * on the same machine (machines here are noisy; only ratios travel):
 *   - tmpfs (memory, no FUSE),
 *   - the volume's backing directory (the disk, no FUSE),
 *   - memfs: a minimal in-memory Node FUSE filesystem over the same binding (the
 *     ceiling of the FUSE path),
 *   - pogfs itself.
 * Workloads: sequential write of 1 GiB of unique data, sequential read of it (page
 * cache warm, and cold after drop_caches), 1 GiB of data that is all duplicates, and
 * `tar x` of a tree of about 20,000 small files.
 * pogfs runs twice: with the default durability (close after write is durable: two
 * fsyncs per written file) and with --no-sync-on-close. Then fsck and gc (bench/fsck.ts).
 * Then compression, none vs lz4 per block vs lz4 with super-chunks vs zstd:1/3/9 vs borg
 * (bench/compression.ts), and where LZ4 runs best (bench/codec-threads.ts);
 * POGFS_BENCH_COMPRESSION=0 skips both. Then the Google Drive remote against the Drive
 * emulator: upload rate, cold read after a restore, calls per GiB (bench/remote.ts);
 * POGFS_BENCH_REMOTE=0 skips it, POGFS_BENCH_REMOTE_MIB sizes it. Then the Drive view
 * (`pogfs drive mount`): calls per 10,000 items, streaming, first byte and random reads,
 * each beside a naive strategy (bench/driveview.ts); POGFS_BENCH_DRIVEVIEW=0 skips it. Then
 * the writable Drive view (`drive mount --rw`): upload rate as a share of the link, calls
 * per file and per GiB, close to "on Drive", the same under faults, and a kill -9 mid-upload
 * (bench/driveview-rw.ts); POGFS_BENCH_DRIVEVIEW_RW=0 skips it, POGFS_BENCH_DRIVEVIEW_RW_*
 * size it.
 * Needs root (tmpfs mount, drop_caches). POGFS_BENCH_MIB scales the big files,
 * POGFS_BENCH_FILES the tar tree, POGFS_BENCH_FSCK_FILES the fsck volume (0 skips it).
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { benchCodecThreads, printCodecThreads } from './codec-threads';
import { benchCompression, printCompression } from './compression';
import { benchFsck, printFsck } from './fsck';
import { benchDriveView, printDriveView } from './driveview';
import { benchDriveViewRw, printDriveViewRw } from './driveview-rw';
import { benchRemote, printRemote } from './remote';
import { dropCaches, seconds, sh } from './shell';

const ROOT = resolve(__dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MEMFS = join(ROOT, 'dist', 'bench', 'memfs.js');
const MIB = Number(process.env.POGFS_BENCH_MIB ?? 1024);
const TREE_FILES = Number(process.env.POGFS_BENCH_FILES ?? 20000);




interface Target {
  name: string;
  dir: string;
  stop(): Promise<void>;
}

async function waitForMount(dir: string, child?: ChildProcess): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (sh('cat /proc/mounts').split('\n').some((l) => l.split(' ')[1] === dir)) return;
    if (child && child.exitCode !== null) throw new Error(`${dir}: the filesystem exited with ${child.exitCode}`);
    await sleep(50);
  }
  throw new Error(`${dir} did not mount`);
}

async function memfs(dir: string): Promise<Target> {
  mkdirSync(dir, { recursive: true });
  const child = spawn(process.execPath, [MEMFS, dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  await waitForMount(dir, child);
  return {
    name: 'memfs (FUSE ceiling)',
    dir,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.on('exit', r));
    },
  };
}

const POGFS = `'${process.execPath}' '${CLI}'`;

async function pogfs(work: string, syncOnClose: boolean): Promise<Target> {
  const tag = syncOnClose ? 'sync' : 'nosync';
  const vol = join(work, `vol-${tag}`);
  const dir = join(work, `pogfs-mnt-${tag}`);
  mkdirSync(dir);
  sh(`${POGFS} init '${vol}'`);
  sh(`${POGFS} mount '${vol}' '${dir}'${syncOnClose ? '' : ' --no-sync-on-close'}`);
  return {
    name: syncOnClose ? 'pogfs' : 'pogfs no-sync-on-close',
    dir,
    stop: async () => void sh(`${POGFS} umount '${dir}'`),
  };
}

function tmpfs(dir: string): Target {
  mkdirSync(dir, { recursive: true });
  sh(`mount -t tmpfs -o size=${MIB * 3 + 2048}m pogfs-bench '${dir}'`);
  return { name: 'tmpfs', dir, stop: async () => void sh(`umount '${dir}'`) };
}

/** A tree of small files like a source checkout: ~90% under 16 KiB, some duplicates. */
function makeTreeTarball(work: string): string {
  const tree = join(work, 'tree-src');
  const script = `
import os, random
rnd = random.Random(42)
root = ${JSON.stringify(tree)}
n = ${TREE_FILES}
words = [bytes(rnd.choices(b'abcdefghijklmnopqrstuvwxyz_ ', k=rnd.randint(2, 12))) for _ in range(2000)]
for i in range(n):
    d = os.path.join(root, 'd%03d' % (i % 400), 'sub%d' % (i % 7))
    os.makedirs(d, exist_ok=True)
    size = int(rnd.paretovariate(1.2) * 900) if rnd.random() < 0.97 else rnd.randint(100000, 400000)
    body = b'\\n'.join(rnd.choice(words) for _ in range(max(1, size // 8)))[:size]
    with open(os.path.join(d, 'f%05d.c' % i), 'wb') as f:
        f.write(body)
`;
  execFileSync('python3', ['-c', script]);
  const tarball = join(work, 'tree.tar');
  sh(`tar -C '${tree}' -cf '${tarball}' .`);
  rmSync(tree, { recursive: true, force: true });
  return tarball;
}

interface Row {
  target: string;
  seqWrite: number;
  seqReadWarm: number;
  seqReadCold: number;
  dupWrite: number;
  tarSeconds: number;
}

async function measure(t: Target, source: string, tarball: string): Promise<Row> {
  const f1 = join(t.dir, 'unique.bin');
  const f2 = join(t.dir, 'dup.bin');
  const bytes = MIB * 1024 * 1024;
  const w = seconds(`dd if='${source}' of='${f1}' bs=1M conv=fsync status=none`);
  const rw = seconds(`dd if='${f1}' of=/dev/null bs=1M status=none`);
  dropCaches();
  const rc = seconds(`dd if='${f1}' of=/dev/null bs=1M status=none`);
  const d = seconds(`dd if='${source}' of='${f2}' bs=1M conv=fsync status=none`);
  rmSync(f1);
  rmSync(f2);
  mkdirSync(join(t.dir, 'tree'));
  const tx = seconds(`tar -C '${join(t.dir, 'tree')}' -xf '${tarball}' && sync -f '${join(t.dir, 'tree')}'`);
  sh(`rm -rf '${join(t.dir, 'tree')}'`);
  const mbs = (s: number) => bytes / s / 1e6;
  return { target: t.name, seqWrite: mbs(w), seqReadWarm: mbs(rw), seqReadCold: mbs(rc), dupWrite: mbs(d), tarSeconds: tx };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root (tmpfs mounts and drop_caches)');
    process.exit(2);
  }
  const work = mkdtempSync(join(process.env.POGFS_BENCH_DIR ?? '/var/tmp', 'pogfs-bench-'));
  const targets: Target[] = [];
  try {
    const srcFs = tmpfs(join(work, 'source'));
    targets.push(srcFs);
    const source = join(srcFs.dir, 'unique.src');
    sh(`head -c ${MIB * 1024 * 1024} /dev/urandom > '${source}'`);
    const tarball = makeTreeTarball(srcFs.dir);
    const entries = Number(sh(`tar -tf '${tarball}' | wc -l`).trim());
    console.log(`bench: ${MIB} MiB files, tar of ${entries} entries, work dir ${work}\n`);

    const backing = join(work, 'backing');
    mkdirSync(backing);
    const rows: Row[] = [];
    const runs: [string, () => Promise<Target>][] = [
      ['tmpfs', async () => tmpfs(join(work, 'tmpfs'))],
      ['backing disk', async () => ({ name: 'backing disk', dir: backing, stop: async () => undefined })],
      ['memfs', () => memfs(join(work, 'memfs-mnt'))],
      ['pogfs', () => pogfs(work, true)],
      ['pogfs --no-sync-on-close', () => pogfs(work, false)],
    ];
    for (const [label, start] of runs) {
      process.stdout.write(`measuring ${label}...\n`);
      const t = await start();
      targets.push(t);
      try {
        rows.push(await measure(t, source, tarball));
      } finally {
        await t.stop();
        targets.pop();
      }
    }
    print(rows, entries);
    const fsckFiles = Number(process.env.POGFS_BENCH_FSCK_FILES ?? 50000);
    const fsck = fsckFiles > 0 ? benchFsck(work, POGFS, fsckFiles, MIB) : undefined;
    if (fsck) printFsck(fsck);
    const compression = process.env.POGFS_BENCH_COMPRESSION === '0' ? undefined : benchCompression(work, POGFS);
    if (compression) printCompression(compression);
    const codecThreads = process.env.POGFS_BENCH_COMPRESSION === '0' ? undefined : await benchCodecThreads();
    if (codecThreads) printCodecThreads(codecThreads);
    const remote = process.env.POGFS_BENCH_REMOTE === '0' ? undefined : await benchRemote(work, POGFS);
    if (remote) printRemote(remote);
    const driveView = process.env.POGFS_BENCH_DRIVEVIEW === '0' ? undefined : await benchDriveView(work);
    if (driveView) printDriveView(driveView);
    const driveViewRw = process.env.POGFS_BENCH_DRIVEVIEW_RW === '0' ? undefined : await benchDriveViewRw(work, POGFS);
    if (driveViewRw) printDriveViewRw(driveViewRw);
    writeFileSync(join(ROOT, 'bench', 'last-run.json'), JSON.stringify({ when: new Date().toISOString(), mib: MIB, entries, rows, fsck, compression, codecThreads, remote, driveView, driveViewRw }, null, 2));
  } finally {
    for (const t of targets.reverse()) await t.stop().catch(() => undefined);
    spawnSync('umount', ['-l', join(work, 'source')]);
    rmSync(work, { recursive: true, force: true });
  }
}

function print(rows: Row[], entries: number): void {
  const get = (name: string) => rows.find((r) => r.target === name || r.target.startsWith(`${name} (`));
  const ceiling = get('memfs');
  const tmp = get('tmpfs');
  const pog = get('pogfs');
  const f = (n: number) => n.toFixed(0).padStart(8);
  console.log('\n                     seq write  read warm  read cold  dup write   tar x (s)  files/s');
  for (const r of rows) {
    console.log(
      `${r.target.padEnd(21)}${f(r.seqWrite)}   ${f(r.seqReadWarm)}   ${f(r.seqReadCold)}   ${f(r.dupWrite)}   ${r.tarSeconds.toFixed(2).padStart(8)}  ${f(entries / r.tarSeconds)}`,
    );
  }
  console.log('(MB/s unless noted)\n');
  if (!ceiling || !tmp || !pog) return;
  const ratio = (a: number, b: number) => (a / b).toFixed(2);
  console.log(`pogfs / FUSE ceiling: seq write ${ratio(pog.seqWrite, ceiling.seqWrite)} (target >= 0.4), warm read ${ratio(pog.seqReadWarm, ceiling.seqReadWarm)} (target >= 0.6), cold read ${ratio(pog.seqReadCold, ceiling.seqReadCold)}, dup write ${ratio(pog.dupWrite, ceiling.seqWrite)}`);
  const fast = get('pogfs no-sync-on-close');
  console.log(
    `tar x time / tmpfs: pogfs ${ratio(pog.tarSeconds, tmp.tarSeconds)}x (target <= 25)` +
      (fast ? `, pogfs --no-sync-on-close ${ratio(fast.tarSeconds, tmp.tarSeconds)}x` : '') +
      `, memfs ${ratio(ceiling.tarSeconds, tmp.tarSeconds)}x`,
  );
  const disk = get('backing disk');
  if (disk) console.log(`pogfs / backing disk: seq write ${ratio(pog.seqWrite, disk.seqWrite)}, tar x time ${ratio(pog.tarSeconds, disk.tarSeconds)}x`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
