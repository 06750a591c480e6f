/**
 * The Drive view (`pogfs drive mount`) against the Drive emulator (in this process; every
 * access is asynchronous), each figure beside a naive strategy measured in the same run:
 *
 *   1. Metadata, on a synthetic Drive of POGFS_BENCH_DRIVEVIEW_FILES (100,000) files in
 *      1/20 as many folders: Drive calls per 10,000 items for the first scan, for a full
 *      stat walk (`find -printf '%s %T@'`) and for an idle poll. Naive: one listing per
 *      directory (what a per-directory cache does on a cold start, after its expiry, and
 *      on every rescan), run with the project's Drive client.
 *   2. Content, over an emulated link of POGFS_BENCH_DRIVEVIEW_LATENCY_MS (50) ms per
 *      request and POGFS_BENCH_DRIVEVIEW_BANDWIDTH (50e6) bytes/s: streaming a file of
 *      POGFS_BENCH_DRIVEVIEW_MIB (1024) MiB with `dd bs=1M` as a share of the link; time to
 *      first byte after open (`head -c 1` of a cold file) in round trips; cold random 1 MiB
 *      reads per second (seek-heavy playback). Naive: ranged 1 MiB reads one after another,
 *      no read-ahead, with the same client.
 *
 * Run alone with `node dist/bench/driveview.js`; `npm run bench` runs it unless
 * POGFS_BENCH_DRIVEVIEW=0. Needs /dev/fuse (root).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { openDriveClient } from '../src/remote/open-remote';
import type { DriveClient } from '../src/remote/drive-client';
import { DriveEmulator, FOLDER_MIME } from '../test/support/drive-emulator';
import { callsBetween, driveFlags, plantDrive, pogfsAsyncOk, releaseView, shAsync, total, writeToken } from '../test/support/drive-view';

const MiB = 1024 * 1024;
const FILES = Number(process.env.POGFS_BENCH_DRIVEVIEW_FILES ?? 100_000);
const STREAM_MIB = Number(process.env.POGFS_BENCH_DRIVEVIEW_MIB ?? 1024);
const LATENCY_MS = Number(process.env.POGFS_BENCH_DRIVEVIEW_LATENCY_MS ?? 50);
const BANDWIDTH = Number(process.env.POGFS_BENCH_DRIVEVIEW_BANDWIDTH ?? 50e6);
const RANDOM_READS = 40;

export interface DriveViewBench {
  items: number;
  folders: number;
  callsPer10k: { scan: number; statWalk: number; idlePoll: number; naiveScan: number; naiveStatWalk: number; naiveIdlePoll: number };
  scanSeconds: number;
  link: { latencyMs: number; bandwidth: number };
  stream: { mib: number; MBps: number; ofLink: number; downloadedOfSize: number; naiveMBps: number; naiveOfLink: number };
  firstByte: { ms: number; roundTrips: number; naiveMs: number };
  randomReads: { perSecond: number; naivePerSecond: number };
}

/** One listing per directory, depth first: a per-directory cache's cold walk. */
async function naiveWalk(client: DriveClient, rootId: string): Promise<number> {
  let items = 0;
  const queue = [rootId];
  while (queue.length) {
    const batch = queue.splice(0, 8);
    const lists = await Promise.all(batch.map((id) => client.listFiles(`'${id}' in parents and trashed = false`)));
    for (const list of lists) {
      items += list.length;
      for (const f of list) if (f.mimeType === FOLDER_MIME) queue.push(f.id);
    }
  }
  return items;
}

function runNode(script: string): Promise<string> {
  return new Promise((resolve, reject) => execFile(process.execPath, ['-e', script], { maxBuffer: 1024 * 1024 }, (e, out) => (e ? reject(e) : resolve(out))));
}

export async function benchDriveView(work: string): Promise<DriveViewBench> {
  const emu = await DriveEmulator.start();
  const mnt = join(work, 'driveview-mnt');
  const state = join(work, 'driveview-state');
  mkdirSync(mnt, { recursive: true });
  const token = writeToken(emu, join(work, 'driveview-token.json'));
  try {
    const planted = plantDrive(emu, FILES, Math.max(10, Math.floor(FILES / 20)), 100);
    const [big, cold, random] = emu.seedItems([
      { name: 'stream.mkv', size: STREAM_MIB * MiB, contentSeed: 900 },
      { name: 'cold.mkv', size: 64 * MiB, contentSeed: 901 },
      { name: 'random.mkv', size: 2048 * MiB, contentSeed: 902 },
    ]);
    void big;
    const items = planted.listed + 3;
    const per10k = (calls: number) => (calls * 10_000) / items;

    // 1. Metadata.
    let before = emu.calls();
    let t = performance.now();
    await pogfsAsyncOk(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', '--cache-size', '4G', ...driveFlags(emu, token)], 600_000);
    const scanSeconds = (performance.now() - t) / 1000;
    const scan = total(callsBetween(before, emu.calls()));
    before = emu.calls();
    await shAsync(`find ${mnt} -printf '%s %T@\\n' > /dev/null`, 600_000);
    const statWalk = total(callsBetween(before, emu.calls()));
    before = emu.calls();
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    const idlePoll = total(callsBetween(before, emu.calls()));

    const client = await openDriveClient({ credentialsPath: token, driveRootUrl: emu.rootUrl, tokenUrl: emu.tokenUrl });
    try {
      before = emu.calls();
      await naiveWalk(client, emu.rootFolderId);
      const naiveScan = total(callsBetween(before, emu.calls()));

      // 2. Content, over the slow link.
      emu.setFaults({ latencyMs: LATENCY_MS, bandwidthBytesPerSec: BANDWIDTH });
      emu.resetStats();
      t = performance.now();
      await shAsync(`dd if=${join(mnt, 'stream.mkv')} of=/dev/null bs=1M status=none`, 1_800_000);
      const streamSeconds = (performance.now() - t) / 1000;
      const streamMBps = (STREAM_MIB * MiB) / streamSeconds / 1e6;
      const downloadedOfSize = emu.stats().bytesSent / (STREAM_MIB * MiB);

      // Naive: 1 MiB ranged reads, one after another (64 MiB of the big file is enough for a rate).
      const naiveMiB = Math.min(64, STREAM_MIB);
      t = performance.now();
      for (let i = 0; i < naiveMiB; i++) await client.download(big, i * MiB, MiB);
      const naiveMBps = (naiveMiB * MiB) / ((performance.now() - t) / 1000) / 1e6;

      // The cost of starting `head` itself, taken off: what is left is open + first byte.
      t = performance.now();
      await shAsync(`head -c 1 /dev/zero > /dev/null`);
      const spawnMs = performance.now() - t;
      t = performance.now();
      await shAsync(`head -c 1 ${join(mnt, 'cold.mkv')} > /dev/null`);
      const firstByteMs = Math.max(0, performance.now() - t - spawnMs);
      t = performance.now();
      await client.download(cold, 32 * MiB, MiB);
      const naiveFirstByteMs = performance.now() - t;

      // Cold random 1 MiB reads at spread-out offsets, one process, one open file.
      const offsets = Array.from({ length: RANDOM_READS }, (_, i) => ((i * 7919) % 2000) * MiB);
      const script = `const fs=require('fs');const fd=fs.openSync(${JSON.stringify(join(mnt, 'random.mkv'))},'r');const b=Buffer.alloc(${MiB});` +
        `const t=performance.now();for(const o of ${JSON.stringify(offsets)})fs.readSync(fd,b,0,b.length,o);console.log(performance.now()-t);`;
      const randomMs = Number((await runNode(script)).trim());
      t = performance.now();
      for (const o of offsets) await client.download(random, o, MiB);
      const naiveRandomMs = performance.now() - t;
      return {
        items,
        folders: Math.max(10, Math.floor(FILES / 20)),
        callsPer10k: { scan: per10k(scan), statWalk: per10k(statWalk), idlePoll: per10k(idlePoll), naiveScan: per10k(naiveScan), naiveStatWalk: per10k(naiveScan), naiveIdlePoll: per10k(naiveScan) },
        scanSeconds,
        link: { latencyMs: LATENCY_MS, bandwidth: BANDWIDTH },
        stream: { mib: STREAM_MIB, MBps: streamMBps, ofLink: (streamMBps * 1e6) / BANDWIDTH, downloadedOfSize, naiveMBps, naiveOfLink: (naiveMBps * 1e6) / BANDWIDTH },
        firstByte: { ms: firstByteMs, roundTrips: firstByteMs / LATENCY_MS, naiveMs: naiveFirstByteMs },
        randomReads: { perSecond: RANDOM_READS / (randomMs / 1000), naivePerSecond: RANDOM_READS / (naiveRandomMs / 1000) },
      };
    } finally {
      await client.close();
    }
  } finally {
    await releaseView(mnt, state);
    await emu.close();
  }
}

export function printDriveView(b: DriveViewBench): void {
  const c = b.callsPer10k;
  const r = (a: number, n: number) => (n === 0 ? (a === 0 ? '1' : 'inf') : (a / n).toFixed(3));
  console.log(`\nDrive view: ${b.items} items in ${b.folders}+ folders; link ${b.link.latencyMs} ms, ${(b.link.bandwidth / 1e6).toFixed(0)} MB/s`);
  console.log('                          pogfs      naive (one listing per directory, no read-ahead)   pogfs / naive');
  console.log(`calls/10k items, scan  ${c.scan.toFixed(1).padStart(8)}   ${c.naiveScan.toFixed(1).padStart(8)}   ${r(c.scan, c.naiveScan)}`);
  console.log(`calls/10k, stat walk   ${c.statWalk.toFixed(1).padStart(8)}   ${c.naiveStatWalk.toFixed(1).padStart(8)}   ${r(c.statWalk, c.naiveStatWalk)}`);
  console.log(`calls/10k, idle poll   ${c.idlePoll.toFixed(1).padStart(8)}   ${c.naiveIdlePoll.toFixed(1).padStart(8)}   ${r(c.idlePoll, c.naiveIdlePoll)}`);
  console.log(`stream ${b.stream.mib} MiB, of link  ${b.stream.ofLink.toFixed(3).padStart(6)}     ${b.stream.naiveOfLink.toFixed(3).padStart(6)}   ${(b.stream.ofLink / b.stream.naiveOfLink).toFixed(2)}  (downloaded ${b.stream.downloadedOfSize.toFixed(3)}x the size)`);
  console.log(`first byte, ms         ${b.firstByte.ms.toFixed(0).padStart(8)}   ${b.firstByte.naiveMs.toFixed(0).padStart(8)}   ${(b.firstByte.ms / b.firstByte.naiveMs).toFixed(2)}  (${b.firstByte.roundTrips.toFixed(1)} round trips)`);
  console.log(`cold random 1 MiB/s    ${b.randomReads.perSecond.toFixed(1).padStart(8)}   ${b.randomReads.naivePerSecond.toFixed(1).padStart(8)}   ${(b.randomReads.perSecond / b.randomReads.naivePerSecond).toFixed(2)}`);
  console.log(`first scan took ${b.scanSeconds.toFixed(1)} s`);
}

if (require.main === module) {
  const work = mkdtempSync(join(process.env.POGFS_BENCH_DIR ?? '/var/tmp', 'pogfs-bench-driveview-'));
  benchDriveView(work)
    .then((b) => printDriveView(b))
    .catch((err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    })
    .finally(() => rmSync(work, { recursive: true, force: true }));
}
