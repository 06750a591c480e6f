/**
 * The writable Drive view (`pogfs drive mount --rw`) against the Drive emulator in a child
 * process, over an emulated link of POGFS_BENCH_DRIVEVIEW_RW_LATENCY_MS (20) ms per request
 * and POGFS_BENCH_DRIVEVIEW_RW_BANDWIDTH (50e6) bytes/s each way:
 *
 *   1. A tree of POGFS_BENCH_DRIVEVIEW_RW_FILES (1,000) small files (1 to 64 KiB, in 20
 *      folders) copied in with `cp -r`, then `pogfs drive sync`: Drive calls per file created.
 *   2. POGFS_BENCH_DRIVEVIEW_RW_BIG_FILES (3) files of POGFS_BENCH_DRIVEVIEW_RW_BIG_MIB (128)
 *      MiB copied in, then `drive sync`: upload MB/s from the start of the copy until sync
 *      returns, as a share of the link and of a plain client's resumable upload to the same
 *      emulator in the same run (bench/remote.ts's reference); Drive calls per GiB.
 *   3. Time from close to "on Drive" of a small file (median of 7), with the mount's settle
 *      delay (--upload-delay POGFS_BENCH_DRIVEVIEW_RW_DELAY, 1 s) in it and taken out.
 * Steps 1 and 2 run twice: on a clean link, then with faults on (429/500/503/rateLimitExceeded
 * answers at POGFS_BENCH_DRIVEVIEW_RW_ERROR_RATE, 0.05, and connection resets at
 * POGFS_BENCH_DRIVEVIEW_RW_RESET_RATE, 0.02). After each, every file on the emulator must be
 * there once with the local md5, or the bench fails.
 *   4. `kill -9` of the daemon in the middle of the upload of a big file, a remount and
 *      `drive sync`: the bytes sent again after the remount, as a share of the file.
 *
 * Run alone with `node dist/bench/driveview-rw.js`; `npm run bench` runs it unless
 * POGFS_BENCH_DRIVEVIEW_RW=0. Needs /dev/fuse (root).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { liveDaemon } from '../src/cli/daemon-record';
import { DRIVE_FULL_SCOPE } from '../src/remote/credentials';
import { driveCallsBetween, EmulatorProcess } from '../test/support/drive-emulator-process';
import type { EmulatedFile } from '../test/support/drive-emulator';
import { isMounted } from '../test/support/mount';
import { rawClient, type RawClient } from './remote';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const env = (name: string, fallback: number) => Number(process.env[`POGFS_BENCH_DRIVEVIEW_RW_${name}`] ?? fallback);
const FILES = env('FILES', 1000);
const BIG_FILES = env('BIG_FILES', 3);
const BIG_MIB = env('BIG_MIB', 128);
const LATENCY_MS = env('LATENCY_MS', 20);
const BANDWIDTH = env('BANDWIDTH', 50e6);
const DELAY_SEC = env('DELAY', 1);
const ERROR_RATE = env('ERROR_RATE', 0.05);
const RESET_RATE = env('RESET_RATE', 0.02);
const FOLDERS = 20;
const CLOSE_SAMPLES = 7;
/** Every step is bounded: generous for GiBs over a slow link on a busy 2-core machine. */
const STEP_TIMEOUT_MS = 30 * 60_000;

export interface Calls {
  total: number;
  byMethod: Record<string, number>;
}

export interface PassResult {
  faults: boolean;
  tree: { files: number; folders: number; bytes: number; seconds: number; calls: Calls; callsPerFile: number };
  big: { files: number; bytes: number; copySeconds: number; seconds: number; MBps: number; ofLink: number; ofRaw: number; calls: Calls; callsPerGiB: number; bytesReceived: number };
  /** Faults the emulator injected during the pass, by kind. */
  injected: Record<string, number>;
  /** Files checked on the emulator (md5, size, exactly one live copy). */
  verified: number;
}

export interface DriveViewRwBench {
  link: { latencyMs: number; bandwidth: number };
  settleSec: number;
  raw: RawClient;
  passes: PassResult[];
  closeToDrive: { samplesMs: number[]; medianMs: number; medianAfterSettleMs: number };
  crash: { bytes: number; receivedBeforeKill: number; resentBytes: number; resentOfFile: number; persistedAfter: number; calls: Calls; verified: boolean };
}

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

function run(cmd: string, timeoutMs = STEP_TIMEOUT_MS): string {
  // stderr is kept (a failure's error carries it): `drive sync` says on every pass that all is on Drive.
  return execFileSync('/bin/sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26, timeout: timeoutMs, killSignal: 'SIGKILL' });
}

function timed(cmd: string): number {
  const t = performance.now();
  run(cmd);
  return (performance.now() - t) / 1000;
}

function calls(before: Record<string, number>, after: Record<string, number>): Calls {
  return driveCallsBetween(before, after);
}

/** Source files and their md5 by path relative to `root` (the bench checks Drive against these). */
function makeTree(root: string): { md5s: Map<string, string>; bytes: number } {
  const md5s = new Map<string, string>();
  let bytes = 0;
  for (let i = 0; i < FILES; i++) {
    const rel = `d${String(i % FOLDERS).padStart(2, '0')}/f${String(i).padStart(5, '0')}.bin`;
    mkdirSync(join(root, rel, '..'), { recursive: true });
    const data = randomBytes(1024 + ((i * 7919) % (63 * 1024)));
    writeFileSync(join(root, rel), data);
    md5s.set(rel, md5(data));
    bytes += data.length;
  }
  return { md5s, bytes };
}

function makeBig(dir: string, name: string): string {
  const path = join(dir, name);
  run(`head -c ${BIG_MIB * MiB} /dev/urandom > ${q(path)}`);
  return run(`md5sum < ${q(path)}`).split(' ')[0];
}

/**
 * Checks that under `folder` (a path below the root) Drive holds exactly the expected files,
 * each once with its md5; throws a message naming every difference. Answers the count checked.
 */
function verifyOnDrive(files: EmulatedFile[], rootId: string, folder: string, expected: Map<string, string>): number {
  const children = new Map<string, EmulatedFile[]>();
  for (const f of files) {
    if (f.trashed) continue;
    for (const p of f.parents) children.set(p, [...(children.get(p) ?? []), f]);
  }
  let parent = rootId;
  for (const part of folder.split('/')) {
    const hits = (children.get(parent) ?? []).filter((f) => f.name === part);
    if (hits.length !== 1) throw new Error(`driveview-rw bench: ${hits.length} live folders named ${part} on Drive (of ${folder})`);
    parent = hits[0].id;
  }
  const found = new Map<string, EmulatedFile[]>();
  const walk = (id: string, prefix: string) => {
    for (const f of children.get(id) ?? []) {
      const rel = prefix ? `${prefix}/${f.name}` : f.name;
      if (f.mimeType === 'application/vnd.google-apps.folder') walk(f.id, rel);
      else found.set(rel, [...(found.get(rel) ?? []), f]);
    }
  };
  walk(parent, '');
  const wrong: string[] = [];
  for (const [rel, sum] of expected) {
    const hits = found.get(rel) ?? [];
    if (hits.length !== 1) wrong.push(`${rel}: ${hits.length} copies`);
    else if (hits[0].md5Checksum !== sum) wrong.push(`${rel}: md5 ${hits[0].md5Checksum} on Drive, ${sum} here`);
  }
  for (const rel of found.keys()) if (!expected.has(rel)) wrong.push(`${rel}: on Drive, never written`);
  if (wrong.length > 0) throw new Error(`driveview-rw bench: WRONG DATA ON DRIVE under ${folder} (${wrong.length} files): ${wrong.slice(0, 20).join('; ')}`);
  return expected.size;
}

export async function benchDriveViewRw(work: string, POGFS: string): Promise<DriveViewRwBench> {
  const base = mkdtempSync(join(work, 'driveview-rw-'));
  const source = join(base, 'source');
  const mnt = join(base, 'mnt');
  const state = join(base, 'state');
  const credentials = join(base, 'token.json');
  mkdirSync(join(source, 'tree'), { recursive: true });
  mkdirSync(mnt);
  let emu: EmulatorProcess | undefined;
  const unmount = async () => {
    if (isMounted(mnt)) {
      try {
        run(`${POGFS} umount ${q(mnt)}`, 10 * 60_000);
      } catch (err) {
        console.error(`driveview-rw bench: umount failed (${(err as Error).message.split('\n')[0]}); unmounting lazily`);
      }
      if (isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', mnt]);
    }
    for (const deadline = Date.now() + 60_000; Date.now() < deadline && liveDaemon(state); ) await sleep(50);
    const pid = liveDaemon(state)?.pid;
    if (pid !== undefined) process.kill(pid, 'SIGKILL');
  };
  try {
    const tree = makeTree(join(source, 'tree'));
    const bigMd5 = new Map<string, string>();
    for (let i = 0; i < BIG_FILES; i++) bigMd5.set(`big${i}.bin`, makeBig(source, `big${i}.bin`));
    const crashMd5 = makeBig(source, 'crash.bin');
    const link = { latencyMs: LATENCY_MS, bandwidthBytesPerSec: BANDWIDTH };
    emu = await EmulatorProcess.start({ faults: link });
    const token = await emu.issueAccessToken(7 * 24 * 3600, DRIVE_FULL_SCOPE);
    writeFileSync(credentials, `${JSON.stringify({ access_token: token })}\n`, { mode: 0o600 });
    const raw = await rawClient(emu, token);
    const rootId = emu.rootFolderId;
    const mount = () =>
      run(
        `${POGFS} drive mount ${q(mnt)} --state-dir ${q(state)} --poll-interval 0 --rw --upload-delay ${DELAY_SEC} --cache-size 2G ` +
          `--credentials ${q(credentials)} --drive-api-url ${q(emu!.rootUrl)} --drive-token-url ${q(emu!.tokenUrl)}`,
        5 * 60_000,
      );
    const sync = () => run(`${POGFS} drive sync ${q(mnt)}`);
    console.log(
      `driveview-rw bench: ${FILES} files (${(tree.bytes / MiB).toFixed(1)} MiB) and ${BIG_FILES} x ${BIG_MIB} MiB over ${LATENCY_MS} ms, ${(BANDWIDTH / 1e6).toFixed(0)} MB/s; in ${base}`,
    );
    mount();
    const passes: PassResult[] = [];
    let closeToDrive: DriveViewRwBench['closeToDrive'];
    try {
      for (const faults of [false, true]) {
        const folder = faults ? 'faults' : 'clean';
        await emu.setFaults(faults ? { ...link, errorRate: ERROR_RATE, resetRate: RESET_RATE } : { ...link, errorRate: 0, resetRate: 0 });
        await emu.resetStats();
        // 1. The small tree.
        mkdirSync(join(mnt, folder));
        sync();
        let c0 = await emu.calls();
        const treeSeconds = timed(`cp -r ${q(join(source, 'tree'))} ${q(join(mnt, folder, 'tree'))} && ${POGFS} drive sync ${q(mnt)}`);
        const treeCalls = calls(c0, await emu.calls());
        // 2. The big files.
        const bigBytes = BIG_FILES * BIG_MIB * MiB;
        const before = await emu.stats();
        c0 = await emu.calls();
        const t0 = performance.now();
        run(`cp ${[...bigMd5.keys()].map((n) => q(join(source, n))).join(' ')} ${q(join(mnt, folder))}`);
        const copySeconds = (performance.now() - t0) / 1000;
        sync();
        const seconds = (performance.now() - t0) / 1000;
        const bigCalls = calls(c0, await emu.calls());
        const after = await emu.stats();
        const MBps = bigBytes / seconds / 1e6;
        const expected = new Map<string, string>([...[...tree.md5s].map(([k, v]): [string, string] => [`tree/${k}`, v]), ...bigMd5]);
        const verified = verifyOnDrive(await emu.storedFiles(), rootId, folder, expected);
        passes.push({
          faults,
          tree: { files: FILES, folders: FOLDERS + 1, bytes: tree.bytes, seconds: treeSeconds, calls: treeCalls, callsPerFile: treeCalls.total / FILES },
          big: {
            files: BIG_FILES,
            bytes: bigBytes,
            copySeconds,
            seconds,
            MBps,
            ofLink: (MBps * 1e6) / BANDWIDTH,
            ofRaw: MBps / raw.uploadMBps,
            calls: bigCalls,
            callsPerGiB: (bigCalls.total * GiB) / bigBytes,
            bytesReceived: after.bytesReceived - before.bytesReceived,
          },
          injected: after.faults,
          verified,
        });
      }
      await emu.setFaults({ ...link, errorRate: 0, resetRate: 0 });

      // 3. Close to on Drive, one small file at a time.
      mkdirSync(join(mnt, 'probe'));
      sync();
      const samples: number[] = [];
      for (let i = 0; i < CLOSE_SAMPLES; i++) {
        const name = `probe${i}.txt`;
        writeFileSync(join(mnt, 'probe', name), `probe ${i}\n`);
        const closed = performance.now();
        for (const deadline = Date.now() + 60_000; ; await sleep(5)) {
          if ((await emu.storedFiles()).some((f) => f.name === name && !f.trashed)) break;
          if (Date.now() > deadline) throw new Error(`driveview-rw bench: ${name} not on Drive after 60 s`);
        }
        samples.push(performance.now() - closed);
      }
      const sorted = [...samples].sort((a, b) => a - b);
      const medianMs = sorted[Math.floor(sorted.length / 2)];
      closeToDrive = { samplesMs: samples, medianMs, medianAfterSettleMs: medianMs - DELAY_SEC * 1000 };
    } finally {
      await unmount();
    }

    // 4. kill -9 in the middle of a big upload, remount, sync.
    mount();
    let crash: DriveViewRwBench['crash'];
    try {
      const bytes = BIG_MIB * MiB;
      await emu.resetStats();
      run(`cp ${q(join(source, 'crash.bin'))} ${q(mnt)}`);
      let receivedBeforeKill = 0;
      for (const deadline = Date.now() + STEP_TIMEOUT_MS; ; await sleep(20)) {
        receivedBeforeKill = (await emu.stats()).bytesReceived;
        if (receivedBeforeKill >= bytes / 2) break;
        if (Date.now() > deadline) throw new Error('driveview-rw bench: the upload to kill never got half way');
      }
      const pid = liveDaemon(state)?.pid;
      if (pid === undefined) throw new Error('driveview-rw bench: no daemon to kill');
      process.kill(pid, 'SIGKILL');
      for (const deadline = Date.now() + 10_000; Date.now() < deadline && liveDaemon(state); ) await sleep(20);
      receivedBeforeKill = (await emu.stats()).bytesReceived;
      spawnSync('fusermount3', ['-u', '-z', mnt]);
      await emu.resetStats();
      const c0 = await emu.calls();
      mount();
      sync();
      const after = await emu.stats();
      const files = await emu.storedFiles();
      verifyOnDrive(files, rootId, 'probe', new Map(Array.from({ length: CLOSE_SAMPLES }, (_, i): [string, string] => [`probe${i}.txt`, md5(Buffer.from(`probe ${i}\n`))])));
      const copies = files.filter((f) => !f.trashed && f.name === 'crash.bin' && f.parents.includes(rootId));
      if (copies.length !== 1 || copies[0].md5Checksum !== crashMd5) {
        throw new Error(`driveview-rw bench: WRONG DATA ON DRIVE after kill -9: ${copies.length} copies of crash.bin, md5 ${copies.map((f) => f.md5Checksum).join(', ')} (want ${crashMd5})`);
      }
      crash = {
        bytes,
        receivedBeforeKill,
        resentBytes: after.bytesReceived,
        resentOfFile: after.bytesReceived / bytes,
        persistedAfter: after.uploadBytesPersisted,
        calls: calls(c0, await emu.calls()),
        verified: true,
      };
    } finally {
      await unmount();
    }
    return { link: { latencyMs: LATENCY_MS, bandwidth: BANDWIDTH }, settleSec: DELAY_SEC, raw, passes, closeToDrive, crash };
  } catch (err) {
    try {
      console.error(`driveview-rw bench failed; ${join(state, 'pogfs.log')} ends with:\n${readFileSync(join(state, 'pogfs.log'), 'utf8').trimEnd().split('\n').slice(-30).join('\n')}`);
    } catch {
      // no log yet
    }
    throw err;
  } finally {
    await unmount().catch(() => undefined);
    await emu?.stop().catch(() => undefined);
    if (process.env.POGFS_BENCH_DRIVEVIEW_RW_KEEP !== '1') rmSync(base, { recursive: true, force: true });
  }
}

function methods(c: Calls): string {
  return Object.entries(c.byMethod)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
}

export function printDriveViewRw(b: DriveViewRwBench): void {
  const bw = b.link.bandwidth / 1e6;
  console.log(`\nDrive view --rw (emulator: ${b.link.latencyMs} ms per request, ${bw.toFixed(0)} MB/s each way; --upload-delay ${b.settleSec})`);
  console.log(`raw client, 64 MiB up: ${b.raw.uploadMBps.toFixed(1)} MB/s (${(b.raw.uploadMBps / bw).toFixed(2)} of the link)`);
  console.log(`${''.padEnd(10)}${'calls/file'.padStart(11)}${'tree s'.padStart(8)}${'big MB/s'.padStart(10)}${'/ link'.padStart(8)}${'/ raw'.padStart(7)}${'calls/GiB'.padStart(11)}${'checked'.padStart(9)}  faults injected`);
  for (const p of b.passes) {
    const injected = Object.entries(p.injected)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    console.log(
      `${(p.faults ? 'faults' : 'clean').padEnd(10)}${p.tree.callsPerFile.toFixed(2).padStart(11)}${p.tree.seconds.toFixed(1).padStart(8)}${p.big.MBps.toFixed(1).padStart(10)}${p.big.ofLink.toFixed(2).padStart(8)}` +
        `${p.big.ofRaw.toFixed(2).padStart(7)}${p.big.callsPerGiB.toFixed(1).padStart(11)}${String(p.verified).padStart(9)}  ${injected || 'none'}`,
    );
  }
  for (const p of b.passes) {
    console.log(
      `${p.faults ? 'faults' : 'clean'}: ${p.tree.files} files in ${p.tree.folders} folders, calls ${methods(p.tree.calls)}; ` +
        `${p.big.files} x ${(p.big.bytes / p.big.files / MiB).toFixed(0)} MiB (copy in ${p.big.copySeconds.toFixed(1)} s, on Drive after ${p.big.seconds.toFixed(1)} s, ${(p.big.bytesReceived / 1e6).toFixed(0)} MB received), calls ${methods(p.big.calls)}`,
    );
  }
  const c = b.closeToDrive;
  console.log(`close to on Drive, small file: median ${c.medianMs.toFixed(0)} ms, ${c.medianAfterSettleMs.toFixed(0)} ms after the settle delay (samples ${c.samplesMs.map((s) => s.toFixed(0)).join(', ')})`);
  const k = b.crash;
  console.log(
    `kill -9 with ${(k.receivedBeforeKill / 1e6).toFixed(0)} of ${(k.bytes / 1e6).toFixed(0)} MB sent, remount, sync: ${(k.resentBytes / 1e6).toFixed(0)} MB sent again (${k.resentOfFile.toFixed(2)} of the file), ` +
      `one copy with the right md5; calls ${methods(k.calls)}`,
  );
}

if (require.main === module) {
  const ROOT = resolve(__dirname, '..', '..');
  const POGFS = `'${process.execPath}' '${join(ROOT, 'dist', 'src', 'cli', 'main.js')}'`;
  const work = mkdtempSync(join(process.env.POGFS_BENCH_DIR ?? '/var/tmp', 'pogfs-bench-'));
  benchDriveViewRw(work, POGFS)
    .then((b) => {
      printDriveViewRw(b);
      if (process.env.POGFS_BENCH_DRIVEVIEW_RW_JSON) console.log(JSON.stringify(b, null, 2));
    })
    .catch((err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    })
    .finally(() => rmSync(work, { recursive: true, force: true }));
}
