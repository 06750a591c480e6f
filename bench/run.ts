/**
 * `npm run bench`: the volume core measured against references taken in the same run
 * on the same machine (machines here are noisy; only ratios travel):
 *   - tmpfs (memory, no FUSE),
 *   - the volume's backing directory (the disk, no FUSE),
 *   - memfs: a minimal in-memory Node FUSE filesystem over the same binding (the
 *     ceiling of the FUSE path in Node),
 *   - libfuse's passthrough_ll in C over a tmpfs (bench/c-fuse.ts: the ceiling of any
 *     FUSE filesystem on the machine; left out, with a note, where it cannot be built),
 *   - pogfs itself, once per entry of POGFS_VARIANTS (its durability options).
 * Workloads (issue 15's table): sequential write of 1 GiB of unique data, sequential
 * read of it after drop_caches (so every byte goes through the filesystem), 1 GiB of
 * data that is all duplicates; then on a corpus of real small files (bench/corpus.ts)
 * `tar x`, a stat walk (`find -printf '%s %m %u'`), `cat` of every file, both after a
 * remount (where the filesystem survives one) and drop_caches, and `rm -rf`. Ratios:
 * the small-file work to tmpfs, the big files to memfs, each beside the issue's target;
 * a target that its bounds miss too (the C and the Node FUSE filesystems for the
 * small-file work, the backing disk for the big files) is marked out of reach on the
 * machine measured.
 * Then the PostgreSQL metadata engine: `tar x` and the cold stat walk on a volume whose
 * metadata is in PostgreSQL as ratios of the SQLite engine's, and metadata operations per
 * second with one and two engine clients of each engine (bench/postgres.ts; a server of
 * its own; POGFS_BENCH_PG=0 skips it, POGFS_BENCH_PG_OPS sizes the operations). Then fsck
 * and gc (bench/fsck.ts).
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
 * POGFS_BENCH_CORPUS (directories separated by ':') replaces the small-file corpus,
 * POGFS_BENCH_VOLUME=0 skips the volume table, POGFS_BENCH_FSCK_FILES sizes the fsck
 * volume (0 skips it). Then `cp` of a large file within a volume (copy_file_range, by
 * reference) beside writing it (bench/copy-range.ts; POGFS_BENCH_COPY_MIB sizes it, 0
 * skips it). Then `pogfs clone` and `snapshot create` of a tree of many small
 * files beside `cp -a` of it (bench/clone.ts); POGFS_BENCH_CLONE_FILES sizes the tree
 * (default 100,000; 0 skips it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildCFuse, cFuse, C_FUSE_NAME } from './c-fuse';
import { benchClone, printClone } from './clone';
import { benchCopyRange, printCopyRange } from './copy-range';
import { benchCodecThreads, printCodecThreads } from './codec-threads';
import { benchCompression, printCompression } from './compression';
import { makeCorpusTarball, type Corpus } from './corpus';
import { benchFsck, printFsck } from './fsck';
import { benchDriveView, printDriveView } from './driveview';
import { benchDriveViewRw, printDriveViewRw } from './driveview-rw';
import { benchRemote, printRemote } from './remote';
import { benchPostgres, printPostgres } from './postgres';
import { dropCaches, seconds, sh } from './shell';
import { makeCold, pogfsTarget, tarAndColdWalk, type Target } from './volume-targets';

const ROOT = resolve(__dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const MEMFS = join(ROOT, 'dist', 'bench', 'memfs.js');
const MIB = Number(process.env.POGFS_BENCH_MIB ?? 1024);
/** The references' row names: small-file work is compared with tmpfs, big files with memfs. */
const TMPFS_NAME = 'tmpfs';
const MEMFS_NAME = 'memfs (Node FUSE)';
const DISK_NAME = 'backing disk';

/**
 * The pogfs configurations measured side by side, the default first (the targets are
 * the default's): close commits without waiting for the disk; --sync-on-close makes
 * every close as durable as fsync.
 */
const POGFS_VARIANTS: { label: string; mountArgs: string[] }[] = [
  { label: 'pogfs (default)', mountArgs: [] },
  { label: 'pogfs --sync-on-close', mountArgs: ['--sync-on-close'] },
];

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
    name: MEMFS_NAME,
    dir,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.on('exit', r));
    },
  };
}

const POGFS = `'${process.execPath}' '${CLI}'`;

async function pogfs(work: string, index: number): Promise<Target> {
  const variant = POGFS_VARIANTS[index];
  return pogfsTarget(POGFS, work, String(index), variant.label, { mountArgs: variant.mountArgs });
}

function tmpfs(dir: string): Target {
  mkdirSync(dir, { recursive: true });
  sh(`mount -t tmpfs -o size=${MIB * 3 + 2048}m pogfs-bench '${dir}'`);
  return { name: TMPFS_NAME, dir, stop: async () => void sh(`umount '${dir}'`) };
}

/** One target's figures: MB/s for the big files, seconds for the small-file work. */
interface Row {
  target: string;
  seqWrite: number;
  seqReadCold: number;
  dupWrite: number;
  tarSeconds: number;
  findSeconds: number;
  catSeconds: number;
  rmSeconds: number;
}

async function measure(t: Target, source: string, corpus: Corpus): Promise<Row> {
  const f1 = join(t.dir, 'unique.bin');
  const f2 = join(t.dir, 'dup.bin');
  const bytes = MIB * 1024 * 1024;
  const w = seconds(`dd if='${source}' of='${f1}' bs=1M conv=fsync status=none`);
  dropCaches();
  const rc = seconds(`dd if='${f1}' of=/dev/null bs=1M status=none`);
  const d = seconds(`dd if='${source}' of='${f2}' bs=1M conv=fsync status=none`);
  rmSync(f1);
  rmSync(f2);
  const { tree, tarSeconds: tx, findSeconds: find } = await tarAndColdWalk(t, corpus);
  await makeCold(t);
  const cat = seconds(`find '${tree}' -type f -print0 | xargs -0 cat > /dev/null`);
  const rm = seconds(`rm -rf '${tree}' && sync -f '${t.dir}'`);
  const mbs = (s: number) => bytes / s / 1e6;
  return { target: t.name, seqWrite: mbs(w), seqReadCold: mbs(rc), dupWrite: mbs(d), tarSeconds: tx, findSeconds: find, catSeconds: cat, rmSeconds: rm };
}

/** The C passthrough's run, when it builds here (otherwise a note and none). */
function cFuseRun(work: string): [string, () => Promise<Target>][] {
  const built = buildCFuse(work);
  if ('missing' in built) {
    console.log(`bench: no ${C_FUSE_NAME} row: ${built.missing}`);
    return [];
  }
  return [[C_FUSE_NAME, () => cFuse(built.binary, join(work, 'c-fuse-backing'), join(work, 'c-fuse-mnt'), MIB * 3 + 2048)]];
}

/** Runs every target through `measure`, one at a time, and returns their rows. */
async function benchVolume(work: string, source: string, corpus: Corpus, targets: Target[]): Promise<Row[]> {
  const backing = join(work, 'backing');
  mkdirSync(backing);
  const runs: [string, () => Promise<Target>][] = [
    ['tmpfs', async () => tmpfs(join(work, 'tmpfs'))],
    [DISK_NAME, async () => ({ name: DISK_NAME, dir: backing, stop: async () => undefined })],
    ['memfs', () => memfs(join(work, 'memfs-mnt'))],
    ...cFuseRun(work),
    ...POGFS_VARIANTS.map((v, i): [string, () => Promise<Target>] => [v.label, () => pogfs(work, i)]),
  ];
  const rows: Row[] = [];
  for (const [label, start] of runs) {
    process.stdout.write(`measuring ${label}...\n`);
    const t = await start();
    targets.push(t);
    try {
      rows.push(await measure(t, source, corpus));
    } finally {
      await t.stop();
      targets.pop();
    }
  }
  return rows;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root (tmpfs mounts and drop_caches)');
    process.exit(2);
  }
  const work = mkdtempSync(join(process.env.POGFS_BENCH_DIR ?? '/var/tmp', 'pogfs-bench-'));
  const targets: Target[] = [];
  try {
    let volume: { entries: number; corpus: string[]; rows: Row[] } | undefined;
    // The source files and the corpus live on a tmpfs (reading them costs nothing), made once for the sections that use them.
    let sourceFs: Target | undefined;
    const sourceDir = (): string => {
      if (!sourceFs) {
        sourceFs = tmpfs(join(work, 'source'));
        targets.push(sourceFs);
      }
      return sourceFs.dir;
    };
    let corpusTarball: Corpus | undefined;
    const corpusOnTmpfs = (): Corpus => (corpusTarball ??= makeCorpusTarball(sourceDir()));
    if (process.env.POGFS_BENCH_VOLUME !== '0') {
      const source = join(sourceDir(), 'unique.src');
      sh(`head -c ${MIB * 1024 * 1024} /dev/urandom > '${source}'`);
      const corpus = corpusOnTmpfs();
      console.log(`bench: ${MIB} MiB files; corpus of ${corpus.entries} entries (${corpus.dirs.join(', ')}); work dir ${work}\n`);
      const rows = await benchVolume(work, source, corpus, targets);
      printVolume(rows);
      volume = { entries: corpus.entries, corpus: corpus.dirs, rows };
    }
    const pg = process.env.POGFS_BENCH_PG === '0' ? undefined : await benchPostgres(work, POGFS, corpusOnTmpfs);
    if (pg) printPostgres(pg);
    const fsckFiles = Number(process.env.POGFS_BENCH_FSCK_FILES ?? 50000);
    const fsck = fsckFiles > 0 ? benchFsck(work, POGFS, fsckFiles, MIB) : undefined;
    if (fsck) printFsck(fsck);
    const copyMib = Number(process.env.POGFS_BENCH_COPY_MIB ?? 1024);
    const copyRange = copyMib > 0 ? benchCopyRange(work, POGFS, copyMib) : undefined;
    if (copyRange) printCopyRange(copyRange);
    const cloneFiles = Number(process.env.POGFS_BENCH_CLONE_FILES ?? 100000);
    const clone = cloneFiles > 0 ? benchClone(work, POGFS, cloneFiles) : undefined;
    if (clone) printClone(clone);
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
    writeFileSync(join(ROOT, 'bench', 'last-run.json'), JSON.stringify({ when: new Date().toISOString(), mib: MIB, ...volume, pg, fsck, copyRange, clone, compression, codecThreads, remote, driveView, driveViewRw }, null, 2));
  } finally {
    for (const t of targets.reverse()) await t.stop().catch(() => undefined);
    spawnSync('umount', ['-l', join(work, 'source')]);
    rmSync(work, { recursive: true, force: true });
  }
}

/** Issue 15's targets for pogfs with default options, each against its reference. */
interface Goal {
  work: string;
  /** The reference row's name. */
  against: typeof TMPFS_NAME | typeof MEMFS_NAME;
  /** pogfs's figure over the reference's (time ratio for work, speed ratio for MB/s). */
  ratio(pog: Row, ref: Row): number;
  /** The reference's own figure, as printed in its column. */
  reference(ref: Row): string;
  met(ratio: number): boolean;
  target: string;
  /**
   * What bounds the target on this machine whatever pogfs does: for the small-file work
   * the FUSE path itself (the C passthrough and memfs do nothing else), for the big files
   * the disk. Out of reach when every bound measured misses it.
   */
  bounds: string[];
}


/** A small-file workload: pogfs's time over tmpfs's, at most `most` times. */
function slowerAtMost(pick: (r: Row) => number, most: number): Pick<Goal, 'ratio' | 'reference' | 'met' | 'target'> {
  return { ratio: (pog, ref) => pick(pog) / pick(ref), reference: (ref) => `${pick(ref).toFixed(2)} s`, met: (r) => r <= most, target: `<= ${most}x` };
}

/** A big-file workload: pogfs's MB/s over memfs's, at least `least` of it. */
function speedAtLeast(pick: (r: Row) => number, least: number): Pick<Goal, 'ratio' | 'reference' | 'met' | 'target'> {
  return { ratio: (pog, ref) => pick(pog) / pick(ref), reference: (ref) => `${pick(ref).toFixed(0)} MB/s`, met: (r) => r >= least, target: `>= ${least}` };
}

const GOALS: Goal[] = [
  { work: 'tar x', against: TMPFS_NAME, bounds: [C_FUSE_NAME, MEMFS_NAME], ...slowerAtMost((r) => r.tarSeconds, 12) },
  { work: "find -printf '%s %m %u', cold", against: TMPFS_NAME, bounds: [C_FUSE_NAME, MEMFS_NAME], ...slowerAtMost((r) => r.findSeconds, 3) },
  { work: 'cat of every file, cold', against: TMPFS_NAME, bounds: [C_FUSE_NAME, MEMFS_NAME], ...slowerAtMost((r) => r.catSeconds, 2.5) },
  { work: 'rm -rf', against: TMPFS_NAME, bounds: [C_FUSE_NAME, MEMFS_NAME], ...slowerAtMost((r) => r.rmSeconds, 8) },
  { work: 'seq write, unique data', against: MEMFS_NAME, bounds: [DISK_NAME], ...speedAtLeast((r) => r.seqWrite, 0.6) },
  { work: 'seq read, cold', against: MEMFS_NAME, bounds: [DISK_NAME], ...speedAtLeast((r) => r.seqReadCold, 0.8) },
];

function printVolume(rows: Row[]): void {
  const mb = (n: number) => n.toFixed(0).padStart(10);
  const sec = (n: number) => n.toFixed(2).padStart(9);
  console.log(`\n${''.padEnd(26)} seq write  read cold  dup write    tar x     find      cat   rm -rf`);
  for (const r of rows) {
    console.log(`${r.target.padEnd(26)}${mb(r.seqWrite)} ${mb(r.seqReadCold)} ${mb(r.dupWrite)}${sec(r.tarSeconds)}${sec(r.findSeconds)}${sec(r.catSeconds)}${sec(r.rmSeconds)}`);
  }
  console.log('(MB/s; seconds for the small-file work: find and cat after a remount where the filesystem survives one, and drop_caches)\n');

  // Issue 15's table: each pogfs variant as a ratio to its reference, the default's target beside it.
  const pogs = POGFS_VARIANTS.map((v) => rows.find((r) => r.target === v.label)).filter((r): r is Row => r !== undefined);
  const ref = (name: string) => rows.find((r) => r.target === name);
  const workWidth = Math.max(...GOALS.map((g) => g.work.length)) + 2;
  const colWidth = Math.max(14, ...pogs.map((p) => p.target.length + 2));
  console.log(`${'work'.padEnd(workWidth)}${'reference'.padEnd(28)}${pogs.map((p) => p.target.padStart(colWidth)).join('')}   target (default options)`);
  for (const g of GOALS) {
    const r = ref(g.against);
    if (!r) continue;
    const ratios = pogs.map((p) => g.ratio(p, r));
    const cells = ratios.map((x) => `${x.toFixed(2)}${g.against === TMPFS_NAME ? 'x' : ''}`.padStart(colWidth)).join('');
    let verdict = ratios.length > 0 ? (g.met(ratios[0]) ? 'met' : 'not met') : '';
    // A target its bounds miss too is out of reach on this machine: say so beside it.
    const bounds = g.bounds.map((name) => ({ name, row: ref(name) })).filter((b): b is { name: string; row: Row } => b.row !== undefined);
    const boundRatios = bounds.map((b) => `${b.name} ${g.ratio(b.row, r).toFixed(2)}${g.against === TMPFS_NAME ? 'x' : ''}`);
    if (verdict === 'not met' && bounds.length > 0 && bounds.every((b) => !g.met(g.ratio(b.row, r)))) {
      verdict += `; out of reach here: ${boundRatios.join(', ')}`;
    }
    console.log(`${g.work.padEnd(workWidth)}${`${g.against} ${g.reference(r)}`.padEnd(28)}${cells}   ${g.target.padEnd(8)} ${verdict}`);
  }
  const memfs = ref(MEMFS_NAME);
  const tmp = ref(TMPFS_NAME);
  const smallFiles = (a: Row, b: Row) =>
    `tar x ${(a.tarSeconds / b.tarSeconds).toFixed(2)}x, find ${(a.findSeconds / b.findSeconds).toFixed(2)}x, cat ${(a.catSeconds / b.catSeconds).toFixed(2)}x, rm -rf ${(a.rmSeconds / b.rmSeconds).toFixed(2)}x`;
  const cRow = ref(C_FUSE_NAME);
  if (cRow && tmp) console.log(`\n${C_FUSE_NAME} / tmpfs: ${smallFiles(cRow, tmp)} (no remount: its data lives in a tmpfs)`);
  if (memfs && tmp) console.log(`${cRow ? '' : '\n'}${MEMFS_NAME} / tmpfs: ${smallFiles(memfs, tmp)} (no remount: its data lives in the process)`);
  if (cRow && pogs[0]) console.log(`${pogs[0].target} / ${C_FUSE_NAME}: ${smallFiles(pogs[0], cRow)}`);
  // What pogfs adds to the FUSE path: the part of the small-file work that is its own.
  if (memfs && pogs[0]) console.log(`${pogs[0].target} / ${MEMFS_NAME}: ${smallFiles(pogs[0], memfs)}`);
  const disk = ref(DISK_NAME);
  if (disk && pogs[0]) {
    console.log(
      `${pogs[0].target} / ${DISK_NAME}: seq write ${(pogs[0].seqWrite / disk.seqWrite).toFixed(2)}, seq read cold ${(pogs[0].seqReadCold / disk.seqReadCold).toFixed(2)}, tar x time ${(pogs[0].tarSeconds / disk.tarSeconds).toFixed(2)}x`,
    );
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
