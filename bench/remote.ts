/**
 * The Google Drive remote, against the Drive emulator in a child process with a link of
 * POGFS_BENCH_REMOTE_LATENCY_MS (20) ms per request and POGFS_BENCH_REMOTE_BANDWIDTH
 * (100e6) bytes/s each way (shared by every connection, like a real link). Rates are given
 * as shares of that bandwidth, so they travel between machines.
 *
 *   1. Upload: a volume created with `--remote drive:...` and mounted; a file of
 *      POGFS_BENCH_REMOTE_MIB (1024) MiB of random bytes, then one of 64 MiB, copied in
 *      from a tmpfs; timed from the start of the copy until `pogfs status --json` says
 *      nothing is dirty. Drive calls (emulator counts, OAuth excluded) per GiB written.
 *      Then `pogfs umount` (the last metadata generation goes up), timed.
 *   2. Restore and cold read: `pogfs mount drive:... MNT --cache-dir EMPTY` (the newest
 *      metadata generation is downloaded, the packs indexed; no block is local), timed;
 *      time to first byte (`head -c 4096` of the 64 MiB file); then the big file read
 *      cold with `dd bs=1M`, MB/s as a share of the bandwidth, and Drive calls per GiB read.
 *
 * For reference, a plain client (fetch, no pogfs) uploads and downloads one 64 MiB object
 * against the same emulator first: on a small machine the emulator itself, not the link,
 * may be the ceiling, and "of the raw client" shows how close pogfs gets to it.
 *
 * Both volumes use --cache-size POGFS_BENCH_REMOTE_CACHE (256M) and --pack-size 64M, so
 * writing 1 GiB goes through upload backpressure and reading it through eviction.
 * Needs root (tmpfs mount) and /dev/fuse. Run alone with `node dist/bench/remote.js`;
 * `npm run bench` runs it unless POGFS_BENCH_REMOTE=0.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MountStatus } from '../src/cli/status-command';
import { driveCallsBetween, EmulatorProcess } from '../test/support/drive-emulator-process';
import { endDaemon } from '../test/support/remote-mount';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const FOLDER = 'pogfs-bench-remote';
const SMALL_MIB = 64;
/** Bounds on the waits: generous for 1 GiB at 100 MB/s on a busy 2-core machine. */
const COMMAND_TIMEOUT_MS = 15 * 60_000;
const DRAIN_TIMEOUT_MS = 15 * 60_000;

export interface RemoteCalls {
  total: number;
  perGiB: number;
  byMethod: Record<string, number>;
}

/** A plain client against the same emulator: what this machine's emulator delivers at best. */
export interface RawClient {
  bytes: number;
  /** One resumable session, one chunk (best of three). */
  uploadMBps: number;
  /** One GET of the whole object (best of three). */
  downloadMBps: number;
}

export interface RemoteBench {
  mib: number;
  smallMib: number;
  latencyMs: number;
  bandwidthBytesPerSec: number;
  cacheSize: string;
  packSize: string;
  raw: RawClient;
  upload: {
    bytes: number;
    /** The copies into the mount (they return before the uploads end, bar backpressure). */
    copySeconds: number;
    /** From the start of the copies until nothing is dirty. */
    seconds: number;
    MBps: number;
    /** MB/s as a share of the emulated bandwidth. */
    ratio: number;
    packs: number;
    throttledWrites: number;
    /** Bytes the emulator received (pack bodies, metadata, protocol). */
    bytesReceived: number;
    calls: RemoteCalls;
  };
  unmount: { seconds: number; calls: RemoteCalls };
  restore: { seconds: number; calls: RemoteCalls };
  firstByte: { seconds: number; calls: RemoteCalls };
  coldRead: {
    bytes: number;
    seconds: number;
    MBps: number;
    ratio: number;
    /** What the daemon reports fetching (status remote.fetch). */
    fetch: { reads: number; bytes: number; blocks: number };
    /** Bytes the emulator sent. */
    bytesSent: number;
    calls: RemoteCalls;
    correct: boolean;
  };
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** A shell command with a deadline (every step of this bench is bounded). */
function run(cmd: string, timeoutMs = COMMAND_TIMEOUT_MS): string {
  return execFileSync('/bin/sh', ['-c', cmd], { encoding: 'utf8', maxBuffer: 1 << 26, timeout: timeoutMs, killSignal: 'SIGKILL' });
}

function timed(cmd: string, timeoutMs = COMMAND_TIMEOUT_MS): number {
  const t = process.hrtime.bigint();
  run(cmd, timeoutMs);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

function isMounted(dir: string): boolean {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === dir);
}

function status(POGFS: string, mnt: string): MountStatus {
  return JSON.parse(run(`${POGFS} status ${q(mnt)} --json`, 60_000)) as MountStatus;
}

/** Drive calls between two counts, and per GiB of `bytes`. */
function driveCalls(before: Record<string, number>, after: Record<string, number>, bytes: number): RemoteCalls {
  const { total, byMethod } = driveCallsBetween(before, after);
  return { total, perGiB: bytes > 0 ? (total * GiB) / bytes : 0, byMethod };
}

/**
 * Unmounts for clean-up: `pogfs umount` (bounded), else a lazy fusermount3; then waits
 * (bounded) for the volume's daemon to exit, and ends it if it will not.
 */
async function unmountQuietly(POGFS: string, mnt: string, volume: string): Promise<void> {
  if (isMounted(mnt)) {
    try {
      run(`${POGFS} umount ${q(mnt)}`, 5 * 60_000);
    } catch (err) {
      console.error(`bench remote: pogfs umount ${mnt} failed (${(err as Error).message.split('\n')[0]}); unmounting lazily`);
    }
    if (isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', mnt]);
  }
  const killed = await endDaemon(volume, 60_000);
  if (killed !== undefined) console.error(`bench remote: the daemon of ${volume} (pid ${killed}) did not exit; ended it`);
}

/** Polls the status until nothing is dirty and no pack is in flight (bounded). */
async function waitDrained(POGFS: string, mnt: string, timeoutMs: number): Promise<MountStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = status(POGFS, mnt);
    const u = s.remote?.upload;
    if (!u) throw new Error(`${mnt} has no remote`);
    if (u.dirtyBytes === 0 && u.dirtyBlocks === 0 && !u.uploading) return s;
    if (Date.now() > deadline) throw new Error(`uploads did not finish within ${timeoutMs / 1000} s: ${JSON.stringify(u)}`);
    await sleep(100);
  }
}

/** Polls the status until the fetches have stopped (the read-ahead a read started is done), bounded. */
async function waitFetchesSettled(POGFS: string, mnt: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = -1;
  for (;;) {
    const reads = status(POGFS, mnt).remote?.fetch.reads ?? 0;
    if (reads === last) return;
    if (Date.now() > deadline) throw new Error(`fetches still running after ${timeoutMs / 1000} s`);
    last = reads;
    await sleep(500);
  }
}

function logTail(path: string, lines = 30): string {
  if (!existsSync(path)) return `(no ${path})`;
  return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
}

const RAW_BYTES = 64 * MiB;

/** Uploads and downloads a 64 MiB object with fetch (no pogfs): the emulator's ceiling on this machine (bench/driveview-rw.ts reuses it). */
export async function rawClient(emu: EmulatorProcess, token: string): Promise<RawClient> {
  const data = randomBytes(RAW_BYTES);
  const auth = { authorization: `Bearer ${token}` };
  const signal = () => AbortSignal.timeout(120_000);
  let up = Infinity;
  let down = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const start = await fetch(new URL('upload/drive/v3/files?uploadType=resumable', emu.rootUrl), {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json; charset=UTF-8', 'x-upload-content-type': 'application/octet-stream', 'x-upload-content-length': String(data.length) },
      body: JSON.stringify({ name: `raw-${i}`, mimeType: 'application/octet-stream' }),
      signal: signal(),
    });
    await start.arrayBuffer();
    const session = start.headers.get('location');
    if (!start.ok || !session) throw new Error(`raw upload: the session did not start (HTTP ${start.status})`);
    const put = await fetch(session, {
      method: 'PUT',
      headers: { ...auth, 'content-type': 'application/octet-stream', 'content-range': `bytes 0-${data.length - 1}/${data.length}` },
      body: data,
      signal: signal(),
    });
    const file = (await put.json()) as { id?: string };
    if (!put.ok || !file.id) throw new Error(`raw upload: HTTP ${put.status}`);
    up = Math.min(up, (performance.now() - t0) / 1000);
    const t1 = performance.now();
    const get = await fetch(new URL(`drive/v3/files/${encodeURIComponent(file.id)}?alt=media`, emu.rootUrl), { headers: auth, signal: signal() });
    const body = Buffer.from(await get.arrayBuffer());
    if (!get.ok || body.length !== data.length) throw new Error(`raw download: HTTP ${get.status}, ${body.length} bytes`);
    down = Math.min(down, (performance.now() - t1) / 1000);
  }
  return { bytes: RAW_BYTES, uploadMBps: RAW_BYTES / up / 1e6, downloadMBps: RAW_BYTES / down / 1e6 };
}

export async function benchRemote(work: string, POGFS: string): Promise<RemoteBench> {
  const mib = Number(process.env.POGFS_BENCH_REMOTE_MIB ?? 1024);
  const latencyMs = Number(process.env.POGFS_BENCH_REMOTE_LATENCY_MS ?? 20);
  const bandwidth = Number(process.env.POGFS_BENCH_REMOTE_BANDWIDTH ?? 100e6);
  const cacheSize = process.env.POGFS_BENCH_REMOTE_CACHE ?? '256M';
  const packSize = '64M';
  const base = mkdtempSync(join(work, 'remote-'));
  const source = join(base, 'source');
  const vol = join(base, 'vol');
  const copy = join(base, 'restored');
  const mnt = join(base, 'mnt');
  const mnt2 = join(base, 'mnt2');
  const credentials = join(base, 'token.json');
  mkdirSync(source);
  mkdirSync(mnt);
  mkdirSync(mnt2);
  let emu: EmulatorProcess | undefined;
  let tmpfsMounted = false;
  try {
    run(`mount -t tmpfs -o size=${mib + SMALL_MIB + 64}m pogfs-bench-remote ${q(source)}`);
    tmpfsMounted = true;
    const big = join(source, 'big.bin');
    const small = join(source, 'small.bin');
    run(`head -c ${mib * MiB} /dev/urandom > ${q(big)} && head -c ${SMALL_MIB * MiB} /dev/urandom > ${q(small)}`);
    const bigSum = run(`md5sum < ${q(big)}`).split(' ')[0];

    emu = await EmulatorProcess.start({ faults: { latencyMs, bandwidthBytesPerSec: bandwidth } });
    const token = await emu.writeAccessTokenFile(credentials);
    const raw = await rawClient(emu, token);
    const flags = `--credentials ${q(credentials)} --drive-api-url ${q(emu.rootUrl)} --drive-token-url ${q(emu.tokenUrl)} --cache-size ${cacheSize}`;
    console.log(`remote bench: ${mib} + ${SMALL_MIB} MiB against the Drive emulator (${latencyMs} ms, ${(bandwidth / 1e6).toFixed(0)} MB/s), cache ${cacheSize}, packs ${packSize}, in ${base}`);

    // 1. Upload.
    run(`${POGFS} init ${q(vol)} --remote drive:${FOLDER} ${flags} --pack-size ${packSize}`);
    run(`${POGFS} mount ${q(vol)} ${q(mnt)}`);
    const uploadBytes = (mib + SMALL_MIB) * MiB;
    let upload: RemoteBench['upload'];
    let unmount: RemoteBench['unmount'];
    try {
      const calls0 = await emu.calls();
      await emu.resetStats();
      const t0 = process.hrtime.bigint();
      run(`dd if=${q(big)} of=${q(join(mnt, 'big.bin'))} bs=1M status=none && dd if=${q(small)} of=${q(join(mnt, 'small.bin'))} bs=1M status=none`);
      const copySeconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const drained = await waitDrained(POGFS, mnt, DRAIN_TIMEOUT_MS);
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const calls1 = await emu.calls();
      const stats = await emu.stats();
      const MBps = uploadBytes / seconds / 1e6;
      upload = {
        bytes: uploadBytes,
        copySeconds,
        seconds,
        MBps,
        ratio: MBps / (bandwidth / 1e6),
        packs: drained.remote?.upload.packsUploaded ?? 0,
        throttledWrites: drained.remote?.throttledWrites ?? 0,
        bytesReceived: stats.bytesReceived,
        calls: driveCalls(calls0, calls1, uploadBytes),
      };
      const u0 = process.hrtime.bigint();
      run(`${POGFS} umount ${q(mnt)}`);
      const unmountSeconds = Number(process.hrtime.bigint() - u0) / 1e9;
      unmount = { seconds: unmountSeconds, calls: driveCalls(calls1, await emu.calls(), 0) };
    } catch (err) {
      console.error(`remote bench: the upload phase failed; ${join(vol, 'pogfs.log')} ends with:\n${logTail(join(vol, 'pogfs.log'))}`);
      throw err;
    } finally {
      await unmountQuietly(POGFS, mnt, vol);
    }

    // 2. Restore on a "machine" with nothing local, then read cold.
    let restore: RemoteBench['restore'];
    let firstByte: RemoteBench['firstByte'];
    let coldRead: RemoteBench['coldRead'];
    try {
      const c0 = await emu.calls();
      const restoreSeconds = timed(`${POGFS} mount drive:${FOLDER} ${q(mnt2)} --cache-dir ${q(copy)} ${flags}`);
      const c1 = await emu.calls();
      restore = { seconds: restoreSeconds, calls: driveCalls(c0, c1, 0) };
      if (!isMounted(mnt2)) throw new Error(`the restore mount of drive:${FOLDER} at ${mnt2} did not mount`);

      const ttfb = timed(`head -c 4096 ${q(join(mnt2, 'small.bin'))} > /dev/null`);
      firstByte = { seconds: ttfb, calls: driveCalls(c1, await emu.calls(), 0) };
      // The read-ahead that first read started must not share the link with the timed read.
      await waitFetchesSettled(POGFS, mnt2, 60_000);

      const before = status(POGFS, mnt2).remote?.fetch ?? { reads: 0, bytes: 0, blocks: 0 };
      const c2 = await emu.calls();
      await emu.resetStats();
      const bytes = mib * MiB;
      const readSeconds = timed(`dd if=${q(join(mnt2, 'big.bin'))} of=/dev/null bs=1M status=none`);
      const c3 = await emu.calls();
      const stats = await emu.stats();
      const after = status(POGFS, mnt2).remote?.fetch ?? { reads: 0, bytes: 0, blocks: 0 };
      // Checked after the timing: a second read comes from the cache or the remote, either way right or wrong.
      const correct = run(`md5sum < ${q(join(mnt2, 'big.bin'))}`).split(' ')[0] === bigSum;
      const MBps = bytes / readSeconds / 1e6;
      coldRead = {
        bytes,
        seconds: readSeconds,
        MBps,
        ratio: MBps / (bandwidth / 1e6),
        fetch: { reads: after.reads - before.reads, bytes: after.bytes - before.bytes, blocks: after.blocks - before.blocks },
        bytesSent: stats.bytesSent,
        calls: driveCalls(c2, c3, bytes),
        correct,
      };
    } catch (err) {
      console.error(`remote bench: the restore/read phase failed; ${join(copy, 'pogfs.log')} ends with:\n${logTail(join(copy, 'pogfs.log'))}`);
      throw err;
    } finally {
      await unmountQuietly(POGFS, mnt2, copy);
    }
    return { mib, smallMib: SMALL_MIB, latencyMs, bandwidthBytesPerSec: bandwidth, cacheSize, packSize, raw, upload, unmount, restore, firstByte, coldRead };
  } finally {
    await unmountQuietly(POGFS, mnt, vol).catch(() => undefined);
    await unmountQuietly(POGFS, mnt2, copy).catch(() => undefined);
    await emu?.stop().catch(() => undefined);
    if (tmpfsMounted) spawnSync('umount', ['-l', source]);
    if (process.env.POGFS_BENCH_REMOTE_KEEP !== '1') rmSync(base, { recursive: true, force: true });
  }
}

function methods(c: RemoteCalls): string {
  return Object.entries(c.byMethod)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

export function printRemote(r: RemoteBench): void {
  const bw = r.bandwidthBytesPerSec / 1e6;
  const share = (mbps: number) => (bw > 0 ? (mbps / bw).toFixed(2) : '-');
  const mb = (n: number) => (n / 1e6).toFixed(0);
  const u = r.upload;
  const c = r.coldRead;
  console.log(`\nDrive remote (emulator: ${r.latencyMs} ms per request, ${bw > 0 ? `${bw.toFixed(0)} MB/s` : 'unlimited'} each way; cache ${r.cacheSize}, packs ${r.packSize})`);
  console.log(`${''.padEnd(26)}${'MB/s'.padStart(6)}${'/ bandwidth'.padStart(13)}${'seconds'.padStart(10)}${'calls'.padStart(7)}${'calls/GiB'.padStart(11)}  target`);
  const row = (label: string, mbps: number | undefined, seconds: number | undefined, calls: RemoteCalls | undefined, perGiB: boolean, target = '') =>
    console.log(
      (label.padEnd(26) +
        (mbps === undefined ? '' : mbps.toFixed(0)).padStart(6) +
        (mbps === undefined ? '' : share(mbps)).padStart(13) +
        (seconds === undefined ? '' : seconds.toFixed(seconds < 1 ? 3 : 2)).padStart(10) +
        (calls === undefined ? '' : String(calls.total)).padStart(7) +
        (calls === undefined || !perGiB ? '' : calls.perGiB.toFixed(1)).padStart(11) +
        (target ? `  ${target}` : '')).trimEnd(),
    );
  row('raw client, 64 MiB up', r.raw.uploadMBps, undefined, undefined, false);
  row('raw client, 64 MiB down', r.raw.downloadMBps, undefined, undefined, false);
  row(`upload ${r.mib}+${r.smallMib} MiB`, u.MBps, u.seconds, u.calls, true, 'calls/GiB < 40');
  row('unmount (last backup)', undefined, r.unmount.seconds, r.unmount.calls, false);
  row('restore mount (no cache)', undefined, r.restore.seconds, r.restore.calls, false);
  row('first 4 KiB after restore', undefined, r.firstByte.seconds, r.firstByte.calls, false);
  row(`cold read ${r.mib} MiB`, c.MBps, c.seconds, c.calls, true, '/ bandwidth >= 0.85');
  console.log(
    `upload: ${share(u.MBps)} of the bandwidth, ${(u.MBps / r.raw.uploadMBps).toFixed(2)} of the raw client; the copy into the mount took ${u.copySeconds.toFixed(2)} s ` +
      `(${u.throttledWrites} throttled writes); ${u.packs} packs, ${mb(u.bytesReceived)} MB received by Drive; calls: ${methods(u.calls)}`,
  );
  console.log(
    `cold read: ${share(c.MBps)} of the bandwidth, ${(c.MBps / r.raw.downloadMBps).toFixed(2)} of the raw client; ${c.fetch.reads} ranged reads of ${mb(c.fetch.bytes)} MB ` +
      `(${c.fetch.blocks} blocks installed), ${mb(c.bytesSent)} MB sent by Drive; calls: ${methods(c.calls)}${c.correct ? '' : '; CONTENT DIFFERS FROM WHAT WAS WRITTEN'}`,
  );
  console.log(
    `first byte: ${(r.firstByte.seconds * 1000).toFixed(0)} ms, ${((r.firstByte.seconds * 1000) / Math.max(1, r.latencyMs)).toFixed(1)}x the request latency (${methods(r.firstByte.calls) || 'no calls'}); ` +
      `restore: ${methods(r.restore.calls)}; unmount: ${methods(r.unmount.calls)}`,
  );
}

if (require.main === module) {
  const ROOT = resolve(__dirname, '..', '..');
  const POGFS = `'${process.execPath}' '${join(ROOT, 'dist', 'src', 'cli', 'main.js')}'`;
  if (process.getuid?.() !== 0) {
    console.error('bench remote: needs root (tmpfs mount)');
    process.exit(2);
  }
  const work = mkdtempSync(join(process.env.POGFS_BENCH_DIR ?? '/var/tmp', 'pogfs-bench-'));
  benchRemote(work, POGFS)
    .then((r) => {
      printRemote(r);
      if (process.env.POGFS_BENCH_REMOTE_JSON) console.log(JSON.stringify(r, null, 2));
    })
    .catch((err) => {
      console.error(err);
      process.exitCode = 1;
    })
    .finally(() => rmSync(work, { recursive: true, force: true }));
}
