import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { chmod, link, lstat, mkdir, open, readdir, readFile, rename, rm, rmdir, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { liveDaemon } from '../src/cli/daemon-record';
import { DriveEmulator, FOLDER_MIME, type EmulatedFile } from './support/drive-emulator';
import { callsBetween, driveFlags, logTail, pogfsAsync, pogfsAsyncOk, releaseView, shAsync, viewStatus, writeToken } from './support/drive-view';
import { isMounted } from './support/mount';
import { tempDir } from './support/tmp';

/**
 * The writable Drive view (`drive mount --rw`) end to end: the kernel mount, the daemon's
 * staging and uploads, the real googleapis client against the emulator with faults on.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const FULL_SCOPE = 'https://www.googleapis.com/auth/drive';
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

const dir = tempDir('pogfs-driveview-rw-');

/** The live (untrashed) item of this name under this parent; fails on none or several (a duplicate). */
function onDrive(emu: DriveEmulator, parent: string, name: string): EmulatedFile {
  const hits = emu.storedFiles().filter((f) => !f.trashed && f.name === name && f.parents.includes(parent));
  assert.equal(hits.length, 1, `${hits.length} live items named ${name} in ${parent}`);
  return hits[0];
}

function liveChildren(emu: DriveEmulator, parent: string): EmulatedFile[] {
  return emu.storedFiles().filter((f) => !f.trashed && f.parents.includes(parent));
}

async function mountRw(mnt: string, state: string, flags: string[], extra: string[] = []): Promise<void> {
  const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', '--rw', '--upload-delay', '0.3', ...extra, ...flags]);
  assert.equal(r.code, 0, `${r.stderr}\n${logTail(state)}`);
}

describe('drive view --rw', () => {
  const mnt = join(dir, 'mnt');
  const state = join(dir, 'state');
  let emu: DriveEmulator;
  let flags: string[];
  let root: string;
  const local = new Map<string, Buffer>();

  before(async () => {
    mkdirSync(mnt);
    emu = await DriveEmulator.start();
    root = emu.rootFolderId;
    flags = driveFlags(emu, writeToken(emu, join(dir, 'token.json'), FULL_SCOPE));
    emu.seedItems([{ name: 'old.bin', size: 300 * KiB, contentSeed: 3 }]);
  });

  after(async () => {
    await releaseView(mnt, state);
    await emu.close();
  });

  it('without --rw every write is EROFS', { timeout: 60_000 }, async () => {
    const roState = join(dir, 'ro-state');
    const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', roState, '--poll-interval', '0', ...flags]);
    assert.equal(r.code, 0, `${r.stderr}\n${logTail(roState)}`);
    try {
      await assert.rejects(writeFile(join(mnt, 'new.txt'), 'x'), { code: 'EROFS' });
      await assert.rejects(mkdir(join(mnt, 'dir')), { code: 'EROFS' });
      await assert.rejects(rename(join(mnt, 'old.bin'), join(mnt, 'renamed.bin')), { code: 'EROFS' });
      await assert.rejects(rm(join(mnt, 'old.bin')), { code: 'EROFS' });
      await assert.rejects(open(join(mnt, 'old.bin'), 'r+'), { code: 'EROFS' });
      await assert.rejects(utimes(join(mnt, 'old.bin'), 1, 1), { code: 'EROFS' });
      await assert.rejects(chmod(join(mnt, 'old.bin'), 0o600), { code: 'EROFS' });
      assert.equal(liveChildren(emu, root).length, 1);
    } finally {
      await releaseView(mnt, roState);
    }
  });

  it('copies a tree in under faults: after drive sync every file is on Drive once with the local md5', { timeout: 120_000 }, async () => {
    await mountRw(mnt, state, flags);
    emu.setFaults({ errorRate: 0.05, resetRate: 0.03, errorKinds: [429, 500, 503, 'rateLimitExceeded'] });
    const started = Date.now();
    for (let d = 0; d < 10; d++) {
      await mkdir(join(mnt, 'tree', `d${d}`), { recursive: true });
      for (let i = 0; i < 20; i++) {
        const data = randomBytes(1 + ((d * 20 + i) * 997) % (24 * KiB));
        const path = `tree/d${d}/f${i}.bin`;
        local.set(path, data);
        await writeFile(join(mnt, path), data);
      }
    }
    const big = randomBytes(20 * MiB + 12345);
    local.set('tree/big.bin', big);
    await writeFile(join(mnt, 'tree', 'big.bin'), big);
    // Readable at once, from staging.
    assert.equal(md5(await readFile(join(mnt, 'tree', 'big.bin'))), md5(big));
    assert.equal((await readdir(join(mnt, 'tree', 'd3'))).length, 20);
    const synced = await pogfsAsync(['drive', 'sync', mnt], 110_000);
    assert.equal(synced.code, 0, `${synced.stderr}\n${logTail(state)}`);
    const tree = onDrive(emu, root, 'tree');
    assert.equal(tree.mimeType, FOLDER_MIME);
    for (const [path, data] of local) {
      const parts = path.split('/').slice(1);
      const parent = parts.length === 2 ? onDrive(emu, tree.id, parts[0]).id : tree.id;
      const f = onDrive(emu, parent, parts[parts.length - 1]);
      assert.equal(f.md5Checksum, md5(data), path);
      assert.equal(f.size, data.length, path);
    }
    assert.equal(liveChildren(emu, tree.id).length, 11);
    assert.ok(Object.values(emu.stats().faults).reduce((a, b) => a + b, 0) > 0, 'no fault was injected');
    const s = await viewStatus(mnt);
    assert.equal(s.uploads?.pendingOps, 0);
    assert.equal(s.uploads?.stagedBytes, 0, 'staged copies are dropped once on Drive');
    emu.setFaults({ errorRate: 0, resetRate: 0 });
    // After the upload: served from the chunk cache (what was uploaded), no download.
    const calls = emu.calls()['files.get'] ?? 0;
    assert.equal(md5(await readFile(join(mnt, 'tree', 'd7', 'f3.bin'))), md5(local.get('tree/d7/f3.bin')!));
    assert.equal(emu.calls()['files.get'] ?? 0, calls);
    process.stderr.write(`# copied 200 files + 20 MiB and synced in ${Date.now() - started} ms\n`);
  });

  it('renames, moves, deletions (to the trash), truncation and times show on Drive', { timeout: 60_000 }, async () => {
    const tree = onDrive(emu, root, 'tree');
    const d1 = onDrive(emu, tree.id, 'd1');
    const d2 = onDrive(emu, tree.id, 'd2');
    const moved = onDrive(emu, d1.id, 'f0.bin');
    const gone = onDrive(emu, d1.id, 'f1.bin');
    await rename(join(mnt, 'tree', 'd1', 'f0.bin'), join(mnt, 'tree', 'd2', 'moved.bin'));
    await rename(join(mnt, 'tree', 'd2'), join(mnt, 'tree', 'd2-renamed'));
    await rm(join(mnt, 'tree', 'd1', 'f1.bin'));
    for (const n of await readdir(join(mnt, 'tree', 'd3'))) await rm(join(mnt, 'tree', 'd3', n));
    const d3 = onDrive(emu, tree.id, 'd3');
    await rmdir(join(mnt, 'tree', 'd3'));
    await utimes(join(mnt, 'tree', 'd4', 'f2.bin'), 1_600_000_000, 1_500_000_000);
    const f = await open(join(mnt, 'tree', 'd4', 'f5.bin'), 'r+');
    await f.truncate(100);
    await f.close();
    // truncate(2) of a file not open, and O_TRUNC with nothing written: both reach Drive.
    await shAsync(`truncate -s 10 '${join(mnt, 'tree', 'd4', 'f6.bin')}'`);
    await (await open(join(mnt, 'tree', 'd4', 'f7.bin'), 'w')).close();
    await writeFile(join(mnt, 'old.bin'), 'replaced');
    const oldId = onDrive(emu, root, 'old.bin').id;
    // The mount shows all of it at once.
    assert.deepEqual((await readdir(join(mnt, 'tree'))).sort(), ['big.bin', 'd0', 'd1', 'd2-renamed', 'd4', 'd5', 'd6', 'd7', 'd8', 'd9']);
    assert.equal(md5(await readFile(join(mnt, 'tree', 'd2-renamed', 'moved.bin'))), md5(local.get('tree/d1/f0.bin')!));
    assert.equal((await stat(join(mnt, 'tree', 'd4', 'f2.bin'))).mtimeMs, 1_500_000_000_000);
    await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
    assert.equal(emu.storedFile(d2.id)?.name, 'd2-renamed');
    assert.deepEqual(emu.storedFile(moved.id)?.parents, [d2.id]);
    assert.equal(emu.storedFile(moved.id)?.name, 'moved.bin');
    assert.equal(emu.storedFile(gone.id)?.trashed, true, 'deleted: in the trash');
    assert.equal(emu.storedFile(d3.id)?.trashed, true);
    for (const child of emu.storedFiles().filter((x) => x.parents.includes(d3.id))) assert.equal(child.trashed, true);
    assert.equal(emu.storedFile(onDrive(emu, onDrive(emu, tree.id, 'd4').id, 'f2.bin').id)?.modifiedTime, new Date(1_500_000_000_000).toISOString());
    const truncated = onDrive(emu, onDrive(emu, tree.id, 'd4').id, 'f5.bin');
    assert.equal(truncated.size, 100);
    assert.equal(truncated.md5Checksum, md5(local.get('tree/d4/f5.bin')!.subarray(0, 100)));
    const d4 = onDrive(emu, tree.id, 'd4');
    assert.equal(onDrive(emu, d4.id, 'f6.bin').md5Checksum, md5(local.get('tree/d4/f6.bin')!.subarray(0, 10)));
    assert.equal(onDrive(emu, d4.id, 'f7.bin').size, 0);
    // New content keeps the file's id.
    assert.equal(onDrive(emu, root, 'old.bin').id, oldId);
    assert.equal(emu.storedFile(oldId)?.md5Checksum, md5(Buffer.from('replaced')));
  
    // Figures for the benchmark: Drive calls per small file created, close to "on Drive".
    const before = emu.calls();
    await mkdir(join(mnt, 'tree', 'calls'));
    for (let i = 0; i < 20; i++) await writeFile(join(mnt, 'tree', 'calls', `c${i}.txt`), `file ${i}`);
    await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
    const calls = callsBetween(before, emu.calls());
    const perFile = (Object.values(calls).reduce((x, y) => x + y, 0) - 1) / 20; // the folder's create left out
    assert.ok(perFile <= 1.5, JSON.stringify(calls));
    // A download client's `.part` renamed when complete: created on Drive under the final name only.
    const beforePart = emu.calls();
    await writeFile(join(mnt, 'tree', 'calls', 'movie.mkv.part'), 'movie');
    await rename(join(mnt, 'tree', 'calls', 'movie.mkv.part'), join(mnt, 'tree', 'calls', 'movie.mkv'));
    await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
    assert.deepEqual(callsBetween(beforePart, emu.calls()), { 'files.create': 1 });
    assert.equal(onDrive(emu, onDrive(emu, tree.id, 'calls').id, 'movie.mkv').md5Checksum, md5(Buffer.from('movie')));
    const closed = Date.now();
    await writeFile(join(mnt, 'probe.txt'), 'probe');
    for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(10)) if (emu.storedFiles().some((x) => x.name === 'probe.txt')) break;
    process.stderr.write(`# Drive calls per small file created: ${perFile} (${JSON.stringify(calls)}); close to on Drive: ${Date.now() - closed} ms with --upload-delay 0.3\n`);
  });

  it('keeps modes locally; refuses hard links, symlinks and special files', { timeout: 30_000 }, async () => {
    const p = join(mnt, 'tree', 'd0', 'f0.bin');
    await chmod(p, 0o600);
    assert.equal((await stat(p)).mode & 0o777, 0o600);
    await assert.rejects(link(p, join(mnt, 'tree', 'd0', 'hard')), { code: 'EPERM' });
    await assert.rejects(symlink('f0.bin', join(mnt, 'tree', 'd0', 'sym')), { code: 'EPERM' });
    const fifo = await shAsync(`mkfifo '${join(mnt, 'tree', 'd0', 'fifo')}'`);
    assert.notEqual(fifo.code, 0);
    await assert.rejects(lstat(join(mnt, 'tree', 'd0', 'fifo')), { code: 'ENOENT' });
    assert.match(logTail(state), /refused the special file fifo/);
  });

  it('kill -9 during uploads, then a remount: everything uploaded once, a rename made mid-upload included', { timeout: 120_000 }, async () => {
    emu.setFaults({ bandwidthBytesPerSec: 4 * MiB, latencyMs: 20 });
    const batch = new Map<string, Buffer>();
    await mkdir(join(mnt, 'crash'));
    for (let i = 0; i < 40; i++) {
      const data = randomBytes(64 * KiB + i);
      batch.set(`f${i}.bin`, data);
      await writeFile(join(mnt, 'crash', `f${i}.bin`), data);
    }
    const big = randomBytes(12 * MiB);
    await writeFile(join(mnt, 'crash', 'big.tmp'), big);
    // Wait until uploads are under way, then rename the big file while it uploads.
    for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(50)) {
      if ((await viewStatus(mnt)).uploads!.uploadedFiles > 10) break;
    }
    await rename(join(mnt, 'crash', 'big.tmp'), join(mnt, 'crash', 'big.bin'));
    batch.set('big.bin', big);
    const pid = liveDaemon(state)!.pid;
    process.kill(pid, 'SIGKILL');
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && liveDaemon(state); ) await sleep(50);
    spawnSync('fusermount3', ['-u', '-z', mnt]);
    assert.ok(!isMounted(mnt));
    emu.setFaults({ bandwidthBytesPerSec: 0, latencyMs: 0, errorRate: 0.03, resetRate: 0.02 });
    await mountRw(mnt, state, flags);
    await pogfsAsyncOk(['drive', 'sync', mnt], 100_000);
    emu.setFaults({ errorRate: 0, resetRate: 0 });
    const crash = onDrive(emu, root, 'crash');
    const live = liveChildren(emu, crash.id);
    assert.deepEqual(live.map((f) => f.name).sort(), [...batch.keys()].sort());
    for (const [name, data] of batch) assert.equal(onDrive(emu, crash.id, name).md5Checksum, md5(data), name);
    assert.equal(md5(await readFile(join(mnt, 'crash', 'big.bin'))), md5(big));
  });

  it('uploads at a good share of the emulated link', { timeout: 60_000 }, async () => {
    const link = 20 * 1000 * 1000;
    emu.setFaults({ bandwidthBytesPerSec: link, latencyMs: 0, errorRate: 0, resetRate: 0 });
    const data = randomBytes(24 * MiB);
    await writeFile(join(mnt, 'rate.bin'), data);
    const t0 = Date.now();
    await pogfsAsyncOk(['drive', 'sync', mnt], 50_000);
    const seconds = (Date.now() - t0) / 1000;
    emu.setFaults({ bandwidthBytesPerSec: 0 });
    assert.equal(onDrive(emu, root, 'rate.bin').md5Checksum, md5(data));
    const ratio = data.length / seconds / link;
    process.stderr.write(`# upload of 24 MiB over a ${link / 1e6} MB/s link: ${(data.length / seconds / 1e6).toFixed(1)} MB/s, ${ratio.toFixed(2)} of the link\n`);
    assert.ok(ratio > 0.5, `${ratio.toFixed(2)} of the link`);
  });

  it('umount waits for pending uploads; --no-wait leaves them staged for the next mount', { timeout: 60_000 }, async () => {
    await pogfsAsyncOk(['umount', mnt]);
    await mountRw(mnt, state, flags, ['--upload-delay', '30']);
    await writeFile(join(mnt, 'later.txt'), 'later');
    const s = await viewStatus(mnt);
    assert.equal(s.uploads?.pendingFiles, 1);
    assert.equal(s.uploads?.pendingBytes, 5);
    assert.match(await pogfsAsyncOk(['status', mnt]), /pending uploads\s+1 files, 5 B; 1 operations/);
    const r = await pogfsAsync(['umount', '--no-wait', mnt]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /1 pending Drive operations stay staged/);
    assert.equal(emu.storedFiles().filter((f) => f.name === 'later.txt').length, 0);
    await mountRw(mnt, state, flags, ['--upload-delay', '30']);
    assert.equal(await readFile(join(mnt, 'later.txt'), 'utf8'), 'later');
    await writeFile(join(mnt, 'last.txt'), 'last');
    await pogfsAsyncOk(['umount', mnt], 60_000);
    assert.equal(onDrive(emu, root, 'later.txt').md5Checksum, md5(Buffer.from('later')));
    assert.equal(onDrive(emu, root, 'last.txt').md5Checksum, md5(Buffer.from('last')));
  });

  it('umount --no-wait that fails (the mount is busy) is taken back: a later umount waits for the uploads', { timeout: 60_000 }, async () => {
    await mountRw(mnt, state, flags, ['--upload-delay', '30']);
    await writeFile(join(mnt, 'busy.txt'), 'busy');
    const held = await open(join(mnt, 'busy.txt'), 'r');
    let r;
    try {
      r = await pogfsAsync(['umount', '--no-wait', mnt]);
    } finally {
      await held.close();
    }
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /cannot unmount/);
    assert.doesNotMatch(r.stderr, /stay staged/);
    assert.ok(isMounted(mnt));
    assert.equal(emu.storedFiles().filter((f) => f.name === 'busy.txt').length, 0);
    await pogfsAsyncOk(['umount', mnt], 60_000);
    assert.equal(onDrive(emu, root, 'busy.txt').md5Checksum, md5(Buffer.from('busy')));
    // The daemon that held busy.txt waited for it (the log after its session ended).
    assert.match(logTail(state).split('session ended').pop()!, /uploading what is pending/);
  });

  it('new content on Drive the feed has not shown yet is not overwritten by an upload: the local version goes beside it', { timeout: 60_000 }, async () => {
    const [both, gone] = emu.seedItems([
      { name: 'both.txt', size: 10, contentSeed: 8 },
      { name: 'gone.txt', size: 10, contentSeed: 9 },
    ]);
    await mountRw(mnt, state, flags, ['--upload-delay', '60']);
    assert.equal((await readFile(join(mnt, 'both.txt'))).length, 10);
    await writeFile(join(mnt, 'both.txt'), 'local both');
    await writeFile(join(mnt, 'gone.txt'), 'local gone');
    // Changed on Drive after the mount's last poll (--poll-interval 0: the feed is not read again).
    emu.changeItem(both, { contentSeed: 88, size: 2000 });
    emu.changeItem(gone, { trashed: true });
    const before = emu.calls();
    await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
    assert.equal(emu.storedFile(both)?.size, 2000, "Drive's version stays");
    assert.notEqual(emu.storedFile(both)?.md5Checksum, md5(Buffer.from('local both')));
    const copy = liveChildren(emu, root).find((f) => /^both \(conflict .+ \d{4}-\d\d-\d\d \d{6}\)\.txt$/.test(f.name));
    assert.ok(copy, liveChildren(emu, root).map((f) => f.name).join(', '));
    assert.equal(copy.md5Checksum, md5(Buffer.from('local both')));
    // Trashed on Drive: the local version is uploaded anew, the trashed file left alone.
    assert.equal(emu.storedFile(gone)?.trashed, true);
    assert.equal(emu.storedFile(gone)?.size, 10);
    assert.equal(onDrive(emu, root, 'gone.txt').md5Checksum, md5(Buffer.from('local gone')));
    assert.equal(callsBetween(before, emu.calls())['files.update'] ?? 0, 0, 'nothing overwritten');
    // The mount shows both, Drive's under the name.
    assert.equal((await readFile(join(mnt, 'both.txt'))).length, 2000);
    assert.equal(await readFile(join(mnt, copy.name), 'utf8'), 'local both');
    assert.equal(await readFile(join(mnt, 'gone.txt'), 'utf8'), 'local gone');
    assert.match(logTail(state), /conflict: \W{1,2}both\.txt/);
    // An unchanged file is still updated in place (one files.get before it).
    const kept = onDrive(emu, root, 'gone.txt').id;
    const beforeUpdate = emu.calls();
    await writeFile(join(mnt, 'gone.txt'), 'again');
    await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
    assert.equal(emu.storedFile(kept)?.md5Checksum, md5(Buffer.from('again')));
    assert.deepEqual(callsBetween(beforeUpdate, emu.calls()), { 'files.get': 1, 'files.update': 1 });
    await pogfsAsyncOk(['umount', mnt], 60_000);
  });

  it('new content on Drive during the upload itself: the local version replaces it (Drive has no conditional update) and the log says so', { timeout: 60_000 }, async () => {
    const [racing] = emu.seedItems([{ name: 'racing.bin', size: 10, contentSeed: 10 }]);
    await mountRw(mnt, state, flags);
    const data = randomBytes(6 * MiB);
    emu.setFaults({ bandwidthBytesPerSec: MiB });
    try {
      emu.resetStats();
      await writeFile(join(mnt, 'racing.bin'), data);
      for (const deadline = Date.now() + 20_000; Date.now() < deadline && emu.stats().bytesReceived < MiB; ) await sleep(20);
      assert.ok(emu.stats().bytesReceived >= MiB, 'the upload did not start');
      emu.changeItem(racing, { contentSeed: 99, size: 3000 });
      const changed = emu.storedFile(racing)!.headRevisionId!;
      await pogfsAsyncOk(['drive', 'refresh', mnt]);
      assert.ok(emu.stats().bytesReceived < data.length, 'the upload ended before the feed showed the change');
      await pogfsAsyncOk(['drive', 'sync', mnt], 50_000);
      assert.equal(emu.storedFile(racing)?.md5Checksum, md5(data));
      assert.ok(logTail(state).includes(`got new content on Drive (revision ${changed}) while the local version was uploading`), logTail(state));
    } finally {
      emu.setFaults({ bandwidthBytesPerSec: 0 });
    }
    await pogfsAsyncOk(['umount', mnt], 60_000);
  });

  it('a small create or update answered with a 500 is sent again whole by the client (no second uploader attempt)', { timeout: 60_000 }, async () => {
    const [existing] = emu.seedItems([{ name: 'retried-update.txt', size: 10, contentSeed: 11 }]);
    await mountRw(mnt, state, flags, ['--upload-delay', '60']);
    await writeFile(join(mnt, 'retried-create.txt'), 'created after a 500');
    await writeFile(join(mnt, 'retried-update.txt'), 'updated after a 500');
    emu.injectFault({ method: 'files.create', fault: 500 });
    emu.injectFault({ method: 'files.update', fault: 500 });
    try {
      const before = emu.calls();
      await pogfsAsyncOk(['drive', 'sync', mnt], 30_000);
      // The create's retry is guarded by one listing (did the failed one make it after all?).
      assert.deepEqual(callsBetween(before, emu.calls()), { 'files.create': 2, 'files.list': 1, 'files.get': 1, 'files.update': 2 });
      assert.equal(onDrive(emu, root, 'retried-create.txt').md5Checksum, md5(Buffer.from('created after a 500')));
      assert.equal(emu.storedFile(existing)?.md5Checksum, md5(Buffer.from('updated after a 500')));
      assert.doesNotMatch(logTail(state), /after EOF/);
    } finally {
      await releaseView(mnt, state);
    }
  });

  it('a conflict keeps both versions; local work in a folder deleted on Drive goes to pogfs-recovered', { timeout: 60_000 }, async () => {
    const [box] = emu.seedItems([{ name: 'Box', mimeType: FOLDER_MIME }]);
    const [shared, moving] = emu.seedItems([
      { name: 'shared.txt', size: 10, contentSeed: 5 },
      { name: 'moving.txt', size: 10, contentSeed: 6 },
    ]);
    await mountRw(mnt, state, flags, ['--upload-delay', '60']);
    await writeFile(join(mnt, 'shared.txt'), 'local version');
    await writeFile(join(mnt, 'Box', 'new.txt'), 'made here');
    await mkdir(join(mnt, 'Box', 'sub'));
    await writeFile(join(mnt, 'Box', 'sub', 'deep.txt'), 'deep');
    await writeFile(join(mnt, 'moving.txt'), 'moving here');
    emu.changeItem(moving, { name: 'moved on Drive.txt' });
    // A changes token Drive no longer takes: the rescan keeps what is pending here.
    emu.forgetChanges();
    const beforeRescan = emu.calls();
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    assert.ok((callsBetween(beforeRescan, emu.calls())['files.list'] ?? 0) >= 1, 'the Drive was scanned again');
    assert.equal(await readFile(join(mnt, 'shared.txt'), 'utf8'), 'local version');
    assert.equal(await readFile(join(mnt, 'Box', 'new.txt'), 'utf8'), 'made here');
    // Renamed on Drive, changed here: Drive's name, the local content.
    assert.equal(await readFile(join(mnt, 'moved on Drive.txt'), 'utf8'), 'moving here');
    emu.changeItem(shared, { contentSeed: 77, size: 1000 });
    emu.changeItem(box, { trashed: true });
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    const names = await readdir(mnt);
    const conflict = names.find((n) => /^shared \(conflict .+ \d{4}-\d\d-\d\d \d{6}\)\.txt$/.test(n));
    assert.ok(conflict, names.join(', '));
    assert.equal((await readFile(join(mnt, 'shared.txt'))).length, 1000, "Drive's version under the name");
    assert.equal(await readFile(join(mnt, conflict), 'utf8'), 'local version');
    assert.ok(!names.includes('Box'));
    assert.equal(await readFile(join(mnt, 'pogfs-recovered', 'new.txt'), 'utf8'), 'made here');
    assert.equal(await readFile(join(mnt, 'pogfs-recovered', 'sub', 'deep.txt'), 'utf8'), 'deep');
    assert.match(logTail(state), /conflict: "shared.txt"|pogfs-recovered/);
    await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
    assert.equal(emu.storedFile(shared)?.size, 1000, "Drive's version stays");
    assert.equal(emu.storedFile(moving)?.name, 'moved on Drive.txt');
    assert.equal(emu.storedFile(moving)?.md5Checksum, md5(Buffer.from('moving here')));
    assert.equal(onDrive(emu, root, conflict).md5Checksum, md5(Buffer.from('local version')));
    const recovered = onDrive(emu, root, 'pogfs-recovered');
    assert.equal(onDrive(emu, recovered.id, 'new.txt').md5Checksum, md5(Buffer.from('made here')));
    assert.equal(onDrive(emu, onDrive(emu, recovered.id, 'sub').id, 'deep.txt').md5Checksum, md5(Buffer.from('deep')));
    await pogfsAsyncOk(['umount', mnt], 60_000);
  });

  it('a token saved for reading only stops uploads and says to run pogfs auth --scope full', { timeout: 60_000 }, async () => {
    const readOnly = driveFlags(emu, writeToken(emu, join(dir, 'ro-token.json')));
    const roState = join(dir, 'ro-token-state');
    await mountRw(mnt, roState, readOnly);
    try {
      await writeFile(join(mnt, 'nope.txt'), 'not allowed');
      const r = await pogfsAsync(['drive', 'sync', mnt], 30_000);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /pogfs auth --scope full/);
      assert.equal(emu.storedFiles().filter((f) => f.name === 'nope.txt').length, 0);
    } finally {
      await releaseView(mnt, roState);
    }
    // Mounted read-only, the state says what is still pending.
    const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', roState, '--poll-interval', '0', ...readOnly]);
    assert.equal(r.code, 0, r.stderr);
    await releaseView(mnt, roState);
    assert.match(logTail(roState), /1 changes made through a --rw mount are not on Drive yet/);
  });

  it('a full Drive stops uploads and keeps the data staged; a full staging area is ENOSPC', { timeout: 60_000 }, async () => {
    await mountRw(mnt, state, flags, ['--staging-size', '4M']);
    emu.setStorageQuota(1);
    await writeFile(join(mnt, 'quota.bin'), randomBytes(100 * KiB));
    const r = await pogfsAsync(['drive', 'sync', mnt], 30_000);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /storage|quota/i);
    const s = await viewStatus(mnt);
    assert.match(s.uploads?.stopped ?? '', /storage/i);
    assert.equal(s.uploads?.pendingFiles, 1);
    await assert.rejects(writeFile(join(mnt, 'huge.bin'), randomBytes(5 * MiB)), { code: 'ENOSPC' });
    emu.setStorageQuota(undefined);
    await releaseView(mnt, state);
  });

  /** Writes `data` as `name` at the root and kills the daemon once Drive has half of it; answers the bytes Drive had then. */
  async function killHalfWay(resumeState: string, name: string, data: Buffer): Promise<number> {
    emu.setFaults({ bandwidthBytesPerSec: 8 * MiB, latencyMs: 5, errorRate: 0, resetRate: 0 });
    emu.resetStats();
    await writeFile(join(mnt, name), data);
    for (const deadline = Date.now() + 30_000; emu.stats().bytesReceived < data.length / 2; await sleep(20)) {
      assert.ok(Date.now() < deadline, `the upload never got half way (${emu.stats().bytesReceived} bytes)`);
    }
    process.kill(liveDaemon(resumeState)!.pid, 'SIGKILL');
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && liveDaemon(resumeState); ) await sleep(20);
    spawnSync('fusermount3', ['-u', '-z', mnt]);
    assert.ok(!isMounted(mnt));
    const received = emu.stats().bytesReceived;
    assert.ok(received < data.length, 'killed after the upload ended');
    emu.setFaults({ bandwidthBytesPerSec: 0, latencyMs: 0 });
    emu.resetStats();
    return received;
  }

  it('an upload cut off by kill -9 resumes its session after the remount: only the rest is sent', { timeout: 90_000 }, async () => {
    const resumeState = join(dir, 'resume-state');
    const data = randomBytes(24 * MiB + 777);
    try {
      await mountRw(mnt, resumeState, flags);
      const before = await killHalfWay(resumeState, 'resumed.bin', data);
      await mountRw(mnt, resumeState, flags);
      await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
      const resent = emu.stats().bytesReceived;
      process.stderr.write(`# kill -9 with ${before} of ${data.length} bytes sent: ${resent} sent again (${(resent / data.length).toFixed(2)} of the file)\n`);
      // Without the kept session the whole file goes again (1.00); with it, what Drive did not keep.
      assert.ok(resent < data.length * 0.7, `${resent} of ${data.length} bytes sent again`);
      assert.equal(onDrive(emu, root, 'resumed.bin').md5Checksum, md5(data));
      assert.equal(md5(await readFile(join(mnt, 'resumed.bin'))), md5(data));
    } finally {
      await releaseView(mnt, resumeState);
    }
  });

  it('a file changed after its upload was cut off gets a new session: never the old session with other bytes', { timeout: 90_000 }, async () => {
    const resumeState = join(dir, 'resume-changed-state');
    const first = randomBytes(24 * MiB);
    const second = randomBytes(24 * MiB);
    try {
      await mountRw(mnt, resumeState, flags);
      await killHalfWay(resumeState, 'changed.bin', first);
      await mountRw(mnt, resumeState, flags, ['--upload-delay', '60']);
      // Same size, other bytes: only the md5 tells them apart.
      await writeFile(join(mnt, 'changed.bin'), second);
      await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
      assert.equal(onDrive(emu, root, 'changed.bin').md5Checksum, md5(second));
      assert.ok(emu.stats().bytesReceived >= second.length, 'sent whole');
      assert.match(logTail(resumeState), /changed since its upload was cut off/);
    } finally {
      await releaseView(mnt, resumeState);
    }
  });

  it('kill -9 after Drive finished an update but before the daemon heard: the remount asks the kept session, sends nothing again, no conflict copy', { timeout: 90_000 }, async () => {
    const ownState = join(dir, 'own-state');
    const [own] = emu.seedItems([{ name: 'own.bin', size: 1000, contentSeed: 41 }]);
    const data = randomBytes(24 * MiB);
    const want = md5(data);
    try {
      await mountRw(mnt, ownState, flags);
      const pid = liveDaemon(ownState)!.pid;
      await writeFile(join(mnt, 'own.bin'), data);
      // Killed as soon as Drive holds the bytes: the daemon has not committed the upload yet.
      for (const deadline = Date.now() + 30_000; emu.storedFile(own)?.md5Checksum !== want; await new Promise((r) => setImmediate(r))) {
        assert.ok(Date.now() < deadline, 'the update never reached Drive');
      }
      process.kill(pid, 'SIGKILL');
      for (const deadline = Date.now() + 10_000; Date.now() < deadline && liveDaemon(ownState); ) await sleep(20);
      spawnSync('fusermount3', ['-u', '-z', mnt]);
      assert.doesNotMatch(logTail(ownState), /uploaded \W{1,2}own\.bin/, 'the daemon heard of the upload before the kill');
      emu.resetStats();
      await mountRw(mnt, ownState, flags);
      await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
      assert.deepEqual(liveChildren(emu, root).filter((f) => f.name.startsWith('own')).map((f) => f.name), ['own.bin']);
      assert.equal(emu.storedFile(own)?.md5Checksum, want);
      assert.ok(emu.stats().bytesReceived < MiB, `${emu.stats().bytesReceived} bytes sent again`);
      assert.doesNotMatch(logTail(ownState), /conflict/);
    } finally {
      await releaseView(mnt, ownState);
    }
  });

  it('new content on Drive for a file with only a rename and a time change pending: shown at once, the local name and time kept', { timeout: 90_000 }, async () => {
    const feedState = join(dir, 'feed-state');
    const [feed] = emu.seedItems([{ name: 'feed.bin', size: 1000, contentSeed: 31 }]);
    try {
      await mountRw(mnt, feedState, flags);
      assert.equal(md5(await readFile(join(mnt, 'feed.bin'))), emu.storedFile(feed)?.md5Checksum);
      // A full Drive stops the uploader: the rename and the time change stay pending.
      emu.setStorageQuota(1);
      await writeFile(join(mnt, 'stopper.bin'), randomBytes(100 * KiB));
      for (const deadline = Date.now() + 20_000; !(await viewStatus(mnt)).uploads?.stopped; await sleep(50)) assert.ok(Date.now() < deadline, 'uploads never stopped');
      await rename(join(mnt, 'feed.bin'), join(mnt, 'feed-renamed.bin'));
      const localTime = new Date('2021-03-04T05:06:07Z');
      await utimes(join(mnt, 'feed-renamed.bin'), localTime, localTime);
      emu.changeItem(feed, { size: 5000, contentSeed: 32 });
      const driveMd5 = emu.storedFile(feed)?.md5Checksum;
      await pogfsAsyncOk(['drive', 'refresh', mnt]);
      const st = await stat(join(mnt, 'feed-renamed.bin'));
      assert.equal(st.size, 5000, "Drive's new size");
      assert.equal(st.mtimeMs, localTime.getTime(), 'the pending local time');
      assert.equal(md5(await readFile(join(mnt, 'feed-renamed.bin'))), driveMd5, "Drive's new bytes, not the old pages");
      assert.ok(!(await readdir(mnt)).includes('feed.bin'), 'the pending local name');
      assert.equal((await viewStatus(mnt)).uploads?.pendingOps, 3);
      // Room again; a stopped uploader goes on with the next mount.
      emu.setStorageQuota(undefined);
      await pogfsAsyncOk(['umount', '--no-wait', mnt], 60_000);
      await mountRw(mnt, feedState, flags);
      assert.equal((await stat(join(mnt, 'feed-renamed.bin'))).size, 5000);
      await pogfsAsyncOk(['drive', 'sync', mnt], 60_000);
      const after = emu.storedFile(feed)!;
      assert.equal(after.name, 'feed-renamed.bin');
      assert.equal(after.md5Checksum, driveMd5);
      assert.equal(Date.parse(after.modifiedTime), localTime.getTime());
    } finally {
      emu.setStorageQuota(undefined);
      await releaseView(mnt, feedState);
    }
  });
});
