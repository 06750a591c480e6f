/**
 * Compression: what `--compression lz4` (per 128 KiB block, and with small files and
 * tails packed into super-chunks) and `--compression zstd:1/3/9` (with super-chunks) store,
 * and what they cost to write and read, against `--compression none` and against borg
 * (`--compression lz4` and `zstd,3`), all in the same run. The corpus is built from what
 * any Debian machine has, in a tmpfs:
 *   - text: POGFS_BENCH_COMPRESSION_COPIES (3) slightly different copies of
 *     POGFS_BENCH_COMPRESSION_SOURCES (`/usr/include:/usr/share/perl`); copy 0 is
 *     pristine, later copies get a deterministic pseudo-random subset of files changed
 *     (a line appended, or a few bytes overwritten);
 *   - media: POGFS_BENCH_MEDIA_MIB (200) MiB of random bytes in 16 MiB files.
 * Per mode: `cp -a` of each part into a fresh volume (default mount options),
 * timed up to the end of `pogfs umount` (which returns once every block is compressed,
 * stored and committed), so write MB/s covers the codec and not only the page cache.
 * Reads (`cat` of every file) on a fresh mount: "warm" right after writing (the volume's
 * files are still in the host page cache, the FUSE page cache is empty, so every block
 * goes through the daemon: LMDB read, LZ4 decode, BLAKE3 check) and "cold" after
 * drop_caches. Then sequential: the text as one tar file written with `dd conv=fsync` (full
 * blocks, each through the codec) and read back cold. Stored sizes are taken twice: after the text (the corpus borg is given and
 * the issue's figures are about) and after the media too. borg (if on PATH: Debian's
 * borgbackup; never installed from here) stores the text with `--compression lz4` and
 * `zstd,3` and its chunk-level dedup, as the size reference. POGFS_BENCH_COMPRESSION_MODES
 * (comma-separated) measures only some modes; `none` is always measured, as the reference.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { zstdVersion } from '../src/store/zstd';
import { dropCaches, seconds, sh } from './shell';

const MODES = ['none', 'lz4', 'lz4-superchunks', 'zstd:1', 'zstd:3', 'zstd:9'] as const;
/** `pogfs init` flags per mode (zstd always with super-chunks, as `pogfs init` gives them). */
const INIT_FLAGS: Record<(typeof MODES)[number], string> = {
  none: '--compression none --superchunks off',
  lz4: '--compression lz4 --superchunks off',
  'lz4-superchunks': '--compression lz4 --superchunks on',
  'zstd:1': '--compression zstd:1 --superchunks on',
  'zstd:3': '--compression zstd:3 --superchunks on',
  'zstd:9': '--compression zstd:9 --superchunks on',
};
/** What borg is run with, on the text. */
const BORG_COMPRESSIONS = ['lz4', 'zstd,3'] as const;
type Mode = (typeof MODES)[number];
const MEDIA_FILE_MIB = 16;
const MAX_COPIES = 10;

export interface CompressionPart {
  /** Bytes in regular files (sizes). */
  logicalBytes: number;
  writeSeconds: number;
  warmReadSeconds: number;
  coldReadSeconds: number;
}

export interface CompressionRow {
  mode: Mode;
  logicalBytes: number;
  uniqueBytes: number;
  storedBytes: number;
  storedPerLogical: number;
  storedPerUnique: number;
  /** After the text alone (borg's corpus): stored bytes and stored/logical. */
  textStoredBytes: number;
  textStoredPerLogical: number;
  text: CompressionPart;
  media: CompressionPart;
  writeMBps: number;
  warmReadMBps: number;
  coldReadMBps: number;
  textWriteMBps: number;
  textWarmReadMBps: number;
  textColdReadMBps: number;
  /** The text as one tar file: `dd ... conv=fsync` into the volume, and back after drop_caches. */
  seqWriteMBps: number;
  seqColdReadMBps: number;
}

export interface BorgResult {
  /** `borg create --compression` value. */
  compression: string;
  version: string;
  createSeconds: number;
  writeMBps: number;
  /** Deduplicated, compressed bytes (`borg info --json` cache.stats.unique_csize). */
  uniqueCsize: number;
  /** Deduplicated bytes before compression (cache.stats.unique_size). */
  uniqueSize: number;
}

export interface CompressionBench {
  sources: string[];
  copies: number;
  files: number;
  modifiedFiles: number;
  textBytes: number;
  mediaBytes: number;
  corpusBytes: number;
  rows: CompressionRow[];
  /** On the text only; one per BORG_COMPRESSIONS value. */
  borg: BorgResult[] | { skipped: string };
  /** libzstd's version, as the zstd rows used it. */
  zstdVersion: string;
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

function fileBytes(dir: string): number {
  return Number(sh(`find ${q(dir)} -type f -printf '%s\\n' | awk '{ s += $1 } END { printf "%d", s }'`).trim() || 0);
}

function fileCount(dir: string): number {
  return Number(sh(`find ${q(dir)} -type f | wc -l`).trim());
}

function isMounted(dir: string): boolean {
  return sh('cat /proc/mounts').split('\n').some((l) => l.split(' ')[1] === dir);
}

/** Changes a deterministic pseudo-random subset of the files of copy `index` (>= 1). */
function perturb(dir: string, index: number): number {
  const script = `
import os, random
rnd = random.Random(4000 + ${index})
changed = 0
for root, dirs, files in os.walk(${JSON.stringify(dir)}):
    dirs.sort()
    for name in sorted(files):
        p = os.path.join(root, name)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        r = rnd.random()
        if r < 0.05:
            with open(p, 'ab') as f:
                f.write(b'/* pogfs bench: copy %d, change %d */\\n' % (${index}, changed))
            changed += 1
        elif r < 0.08:
            size = os.path.getsize(p)
            if size == 0:
                continue
            with open(p, 'r+b') as f:
                for _ in range(rnd.randint(1, 3)):
                    f.seek(rnd.randrange(size))
                    f.write(bytes(rnd.randrange(32, 127) for _ in range(rnd.randint(1, 8))))
            changed += 1
print(changed)
`;
  const r = spawnSync('python3', ['-c', script], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`perturbing ${dir} failed: ${r.stderr}`);
  return Number(r.stdout.trim());
}

interface Corpus {
  dir: string;
  text: string;
  media: string;
  /** The text as one tar file: the sequential write and read. */
  tarball: string;
  sources: string[];
  copies: number;
  modifiedFiles: number;
}

function buildCorpus(dir: string, sources: string[], copies: number, mediaMiB: number): Corpus {
  const srcBytes = sources.reduce((n, s) => n + fileBytes(s), 0);
  const srcFiles = sources.reduce((n, s) => n + fileCount(s), 0);
  // tmpfs rounds every file up to a page; the size is a limit, not an allocation.
  // The text twice: as files, and as one tar.
  const sizeMiB = Math.ceil((copies * (2 * srcBytes + srcFiles * 8192)) / 2 ** 20) + mediaMiB + 512;
  mkdirSync(dir, { recursive: true });
  sh(`mount -t tmpfs -o size=${sizeMiB}m pogfs-bench-corpus ${q(dir)}`);
  const text = join(dir, 'text');
  const media = join(dir, 'media');
  let modifiedFiles = 0;
  for (let i = 0; i < copies; i++) {
    const copy = join(text, `copy${i}`);
    mkdirSync(copy, { recursive: true });
    for (const s of sources) sh(`cp -a ${q(s)} ${q(join(copy, s.replace(/^\/+/, '').replace(/\//g, '_') || basename(s)))}`);
    if (i > 0) modifiedFiles += perturb(copy, i);
  }
  mkdirSync(media);
  const n = Math.ceil(mediaMiB / MEDIA_FILE_MIB);
  for (let i = 0; i < n; i++) {
    const mib = Math.min(MEDIA_FILE_MIB, mediaMiB - i * MEDIA_FILE_MIB);
    sh(`head -c ${mib * 2 ** 20} /dev/urandom > ${q(join(media, `media${String(i).padStart(3, '0')}.bin`))}`);
  }
  const tarball = join(dir, 'text.tar');
  sh(`tar -C ${q(text)} -cf ${q(tarball)} .`);
  return { dir, text, media, tarball, sources, copies, modifiedFiles };
}

const catAll = (dir: string) => `find ${q(dir)} -type f -print0 | xargs -0 -r cat > /dev/null`;

function measureMode(work: string, pogfs: string, mode: Mode, corpus: Corpus, textBytes: number, mediaBytes: number): CompressionRow {
  const vol = join(work, `vol-${mode}`);
  const mnt = join(work, `mnt-${mode}`);
  mkdirSync(mnt);
  const mount = (extra = '') => sh(`${pogfs} mount ${q(vol)} ${q(mnt)}${extra}`);
  const umount = `${pogfs} umount ${q(mnt)}`;
  try {
    sh(`${pogfs} init ${q(vol)} ${INIT_FLAGS[mode]}`);
    // Writes: cp -a, then umount, which waits until every block is durable.
    mount();
    const textWrite = seconds(`cp -a ${q(corpus.text)} ${q(mnt)}/ && ${umount}`);
    const textSt = JSON.parse(sh(`${pogfs} stats ${q(vol)} --json`)) as { logicalBytes: number; storedBytes: number };
    mount();
    const mediaWrite = seconds(`cp -a ${q(corpus.media)} ${q(mnt)}/ && ${umount}`);
    const st = JSON.parse(sh(`${pogfs} stats ${q(vol)} --json`)) as { logicalBytes: number; uniqueBytes: number; storedBytes: number };
    // Reads on a fresh mount: warm (volume files in the host page cache), then cold.
    mount();
    const textWarm = seconds(catAll(join(mnt, 'text')));
    const mediaWarm = seconds(catAll(join(mnt, 'media')));
    sh(umount);
    mount();
    dropCaches();
    const textCold = seconds(catAll(join(mnt, 'text')));
    dropCaches();
    const mediaCold = seconds(catAll(join(mnt, 'media')));
    sh(umount);
    // Sequential: one big file of the same text (blocks full, so every one goes through
    // the codec alone), written durably with the default mount options, then read cold.
    const seqFile = join(mnt, 'seq.tar');
    const seqBytes = statSync(corpus.tarball).size;
    mount();
    const seqWrite = seconds(`dd if=${q(corpus.tarball)} of=${q(seqFile)} bs=1M conv=fsync status=none`);
    sh(umount);
    mount();
    dropCaches();
    const seqCold = seconds(`dd if=${q(seqFile)} of=/dev/null bs=1M status=none`);
    sh(umount);
    const text: CompressionPart = { logicalBytes: textBytes, writeSeconds: textWrite, warmReadSeconds: textWarm, coldReadSeconds: textCold };
    const media: CompressionPart = { logicalBytes: mediaBytes, writeSeconds: mediaWrite, warmReadSeconds: mediaWarm, coldReadSeconds: mediaCold };
    const all = textBytes + mediaBytes;
    const mbs = (bytes: number, s: number) => bytes / s / 1e6;
    return {
      mode,
      logicalBytes: st.logicalBytes,
      uniqueBytes: st.uniqueBytes,
      storedBytes: st.storedBytes,
      storedPerLogical: st.storedBytes / st.logicalBytes,
      storedPerUnique: st.uniqueBytes > 0 ? st.storedBytes / st.uniqueBytes : 1,
      textStoredBytes: textSt.storedBytes,
      textStoredPerLogical: textSt.storedBytes / textSt.logicalBytes,
      text,
      media,
      writeMBps: mbs(all, textWrite + mediaWrite),
      warmReadMBps: mbs(all, textWarm + mediaWarm),
      coldReadMBps: mbs(all, textCold + mediaCold),
      textWriteMBps: mbs(textBytes, textWrite),
      textWarmReadMBps: mbs(textBytes, textWarm),
      textColdReadMBps: mbs(textBytes, textCold),
      seqWriteMBps: mbs(seqBytes, seqWrite),
      seqColdReadMBps: mbs(seqBytes, seqCold),
    };
  } finally {
    if (isMounted(mnt)) {
      try {
        sh(umount);
      } catch {
        spawnSync('fusermount3', ['-u', '-z', mnt]);
      }
    }
    rmSync(vol, { recursive: true, force: true });
    rmSync(mnt, { recursive: true, force: true });
  }
}

function benchBorg(work: string, corpus: Corpus, textBytes: number): BorgResult[] | { skipped: string } {
  const which = spawnSync('/bin/sh', ['-c', 'command -v borg'], { encoding: 'utf8' });
  if (which.status !== 0) return { skipped: 'borg is not on PATH (Debian package borgbackup)' };
  const out: BorgResult[] = [];
  for (const compression of BORG_COMPRESSIONS) {
    const base = join(work, 'borg-base');
    const repo = join(work, 'borg-repo');
    mkdirSync(base);
    const env =
      `BORG_BASE_DIR=${q(base)} BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes ` +
      `BORG_RELOCATED_REPO_ACCESS_IS_OK=yes `;
    try {
      const version = sh(`${env}borg --version`).trim();
      sh(`${env}borg init --encryption=none ${q(repo)}`);
      // Relative paths (text/...), as pogfs holds them.
      const createSeconds = seconds(`cd ${q(corpus.dir)} && ${env}borg create --compression ${compression} ${q(repo)}::a text`);
      const info = JSON.parse(sh(`${env}borg info --json ${q(repo)}`)) as { cache: { stats: { unique_csize: number; unique_size: number } } };
      out.push({
        compression,
        version,
        createSeconds,
        writeMBps: textBytes / createSeconds / 1e6,
        uniqueCsize: info.cache.stats.unique_csize,
        uniqueSize: info.cache.stats.unique_size,
      });
    } finally {
      rmSync(repo, { recursive: true, force: true });
      rmSync(base, { recursive: true, force: true });
    }
  }
  return out;
}

/**
 * Builds the corpus under `work` (a tmpfs it mounts), measures both modes and borg, and
 * removes everything it created. `pogfs` is the shell prefix that runs the CLI.
 */
export function benchCompression(work: string, pogfs: string): CompressionBench {
  const sources = (process.env.POGFS_BENCH_COMPRESSION_SOURCES ?? '/usr/include:/usr/share/perl')
    .split(':')
    .filter((s) => s !== '')
    .map((s) => resolve(s));
  for (const s of sources) if (!existsSync(s)) throw new Error(`compression bench: source ${s} does not exist`);
  const copies = Math.min(MAX_COPIES, Math.max(1, Number(process.env.POGFS_BENCH_COMPRESSION_COPIES ?? 3)));
  const mediaMiB = Math.max(0, Number(process.env.POGFS_BENCH_MEDIA_MIB ?? 200));
  const dir = mkdtempSync(join(work, 'compression-'));
  const corpusDir = join(dir, 'corpus');
  try {
    const corpus = buildCorpus(corpusDir, sources, copies, mediaMiB);
    const textBytes = fileBytes(corpus.text);
    const mediaBytes = fileBytes(corpus.media);
    const files = fileCount(corpus.dir);
    console.log(
      `\ncompression: corpus of ${files} files, ${((textBytes + mediaBytes) / 2 ** 20).toFixed(0)} MiB ` +
        `(text ${(textBytes / 2 ** 20).toFixed(0)} MiB: ${copies} copies of ${sources.join(', ')}, ${corpus.modifiedFiles} files changed in copies 1+; ` +
        `media ${(mediaBytes / 2 ** 20).toFixed(0)} MiB random)`,
    );
    const only = (process.env.POGFS_BENCH_COMPRESSION_MODES ?? '').split(',').filter((m) => m !== '');
    const modes = MODES.filter((m) => m === 'none' || only.length === 0 || only.includes(m));
    const rows: CompressionRow[] = [];
    for (const mode of modes) {
      process.stdout.write(`measuring pogfs --compression ${mode}...\n`);
      rows.push(measureMode(dir, pogfs, mode, corpus, textBytes, mediaBytes));
    }
    process.stdout.write('measuring borg...\n');
    const borg = benchBorg(dir, corpus, textBytes);
    return { sources, copies, files, modifiedFiles: corpus.modifiedFiles, textBytes, mediaBytes, corpusBytes: textBytes + mediaBytes, rows, borg, zstdVersion: zstdVersion() };
  } finally {
    if (isMounted(corpusDir)) spawnSync('umount', ['-l', corpusDir]);
    rmSync(dir, { recursive: true, force: true });
  }
}

export function printCompression(r: CompressionBench): void {
  const f = (n: number, d = 0) => n.toFixed(d).padStart(9);
  console.log(
    `\ncompression, ${r.files} files, ${(r.corpusBytes / 2 ** 20).toFixed(0)} MiB (text ${(r.textBytes / 2 ** 20).toFixed(0)} MiB, media ${(r.mediaBytes / 2 ** 20).toFixed(0)} MiB); libzstd ${r.zstdVersion}:`,
  );
  console.log('mode             stored/logical  text stored/logical  write MB/s  warm read MB/s  cold read MB/s | text: write  warm read  cold read | seq: write  cold read');
  for (const x of r.rows) {
    console.log(
      `${x.mode.padEnd(16)} ${f(x.storedPerLogical, 3)}      ${f(x.textStoredPerLogical, 3)}            ${f(x.writeMBps)}   ${f(x.warmReadMBps)}       ${f(x.coldReadMBps)}       |  ${f(x.textWriteMBps)}  ${f(x.textWarmReadMBps)}  ${f(x.textColdReadMBps)} | ${f(x.seqWriteMBps)}  ${f(x.seqColdReadMBps)}`,
    );
  }
  if ('skipped' in r.borg) {
    console.log(`borg             skipped: ${r.borg.skipped}`);
  } else {
    for (const b of r.borg) {
      console.log(`borg ${b.compression.padEnd(11)}                 ${f(b.uniqueCsize / r.textBytes, 3)}            ${f(b.writeMBps)}   (${b.version}, create --compression ${b.compression}, text only)`);
    }
  }
  console.log(
    '(stored/logical: pogfs storedBytes, headers included, over file sizes; write = cp -a up to the end of umount; ' +
      'seq = the text as one tar file, dd conv=fsync in, dd out after drop_caches)',
  );
  const none = r.rows.find((x) => x.mode === 'none');
  if (!none) return;
  const ratio = (a: number, b: number) => (a / b).toFixed(2);
  const mediaWrite = (x: CompressionRow) => x.media.logicalBytes / x.media.writeSeconds;
  for (const x of r.rows) {
    if (x === none) continue;
    console.log(
      `${x.mode} / none: read warm ${ratio(x.warmReadMBps, none.warmReadMBps)}, cold ${ratio(x.coldReadMBps, none.coldReadMBps)} ` +
        `(text only: warm ${ratio(x.textWarmReadMBps, none.textWarmReadMBps)}, cold ${ratio(x.textColdReadMBps, none.textColdReadMBps)}) (target >= 0.8); ` +
        `write ${ratio(x.writeMBps, none.writeMBps)}: text ${ratio(x.textWriteMBps, none.textWriteMBps)}, media ${ratio(mediaWrite(x), mediaWrite(none))} ` +
        `(targets >= 0.6, >= 0.9); seq write ${ratio(x.seqWriteMBps, none.seqWriteMBps)}, seq cold read ${ratio(x.seqColdReadMBps, none.seqColdReadMBps)}; ` +
        `stored ${ratio(x.storedBytes, none.storedBytes)}`,
    );
  }
  const lz4 = r.rows.find((x) => x.mode === 'lz4-superchunks');
  if (lz4) {
    for (const x of r.rows.filter((y) => y.mode.startsWith('zstd'))) {
      console.log(
        `${x.mode} / lz4-superchunks: write ${ratio(x.writeMBps, lz4.writeMBps)} (text ${ratio(x.textWriteMBps, lz4.textWriteMBps)}, seq ${ratio(x.seqWriteMBps, lz4.seqWriteMBps)}; target >= 0.7), ` +
          `cold read ${ratio(x.coldReadMBps, lz4.coldReadMBps)} (text ${ratio(x.textColdReadMBps, lz4.textColdReadMBps)}), text stored ${ratio(x.textStoredBytes, lz4.textStoredBytes)}`,
      );
    }
  }
  if ('skipped' in r.borg) {
    console.log('pogfs / borg stored: skipped (no borg)');
    return;
  }
  for (const b of r.borg) {
    console.log(
      `pogfs text stored / borg ${b.compression}: ${r.rows.map((x) => `${x.mode} ${ratio(x.textStoredBytes, b.uniqueCsize)}`).join(', ')}` +
        `${b.compression === 'zstd,3' ? ' (target for zstd:3 < 1.0)' : ' (target for lz4-superchunks < 1.0)'}; ` +
        `borg deduplicated before compression ${(b.uniqueSize / 2 ** 20).toFixed(0)} MiB`,
    );
  }
}

if (require.main === module) {
  if (process.getuid?.() !== 0) {
    console.error('bench: needs root (tmpfs mount and drop_caches)');
    process.exit(2);
  }
  const cli = join(resolve(__dirname, '..', '..'), 'dist', 'src', 'cli', 'main.js');
  const work = mkdtempSync(join(process.env.POGFS_BENCH_DIR ?? '/var/tmp', 'pogfs-bench-'));
  try {
    printCompression(benchCompression(work, `'${process.execPath}' '${cli}'`));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
