import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { textCorpus } from './support/corpus';
import type { ErrorFault } from './support/drive-emulator';
import { driveCallsBetween, EmulatorProcess } from './support/drive-emulator-process';
import { isMounted, pogfs, pogfsOk } from './support/mount';
import { endDaemon, mountStatus, sha256, treeDigests, unmountQuietly, waitUploaded } from './support/remote-mount';
import { tempDir } from './support/tmp';

/**
 * A volume whose durable copy is Google Drive, end to end: the kernel's FUSE mount, the
 * CLI, the daemon and the real googleapis client, against the Drive v3 emulator in a child
 * process (this process blocks in synchronous file calls, which would stall an emulator
 * living in it). Faults are on: the uploads and the restore have to get through them.
 */

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/** The flags that point a pogfs command at the emulator. */
function driveFlags(emu: EmulatorProcess, credentials: string): string[] {
  return ['--credentials', credentials, '--drive-api-url', emu.rootUrl, '--drive-token-url', emu.tokenUrl];
}

/** Clean-up after a test, passing or not: unmounts (lazily if it must), then makes sure the volume's daemon is gone. */
async function release(mnt: string, volume: string): Promise<void> {
  unmountQuietly(mnt);
  await endDaemon(volume, 30_000);
}

/** `dd` in the background (spawn, not spawnSync: the test watches the mount while it runs). */
function ddInBackground(from: string, to: string): { exited: Promise<number | null>; running: () => boolean; stderr: () => string; kill: () => void } {
  const child = spawn('dd', [`if=${from}`, `of=${to}`, 'bs=1M', 'status=none'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => (stderr += s));
  let done = false;
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => {
      done = true;
      resolve(code);
    });
  });
  exited.catch(() => undefined);
  return { exited, running: () => !done, stderr: () => stderr, kill: () => void (done || child.kill('SIGKILL')) };
}

/** Resolves with `p`'s value, or rejects once `ms` have passed. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The end of a daemon's log, for a failure's message. */
function logTail(volume: string): string {
  const path = join(volume, 'pogfs.log');
  return existsSync(path) ? readFileSync(path, 'utf8').trimEnd().split('\n').slice(-20).join('\n') : `(no ${path})`;
}

describe('a volume on a drive: remote (the Drive emulator in a child process)', () => {
  const dir = tempDir('pogfs-drive-');

  it('1 GiB across many files survives losing the local volume', { timeout: 15 * 60_000 }, async (t) => {
    const volume = join(dir, 'vol');
    const copy = join(dir, 'fresh-copy');
    const mnt = join(dir, 'mnt');
    const mnt2 = join(dir, 'mnt2');
    const credentials = join(dir, 'token-1.json');
    mkdirSync(mnt);
    mkdirSync(mnt2);
    // One call in ten or so fails: errors Drive asks to retry, connections reset mid-body, answers cut short.
    const errorKinds: ErrorFault[] = [429, 500, 503];
    const emu = await EmulatorProcess.start({ seed: 11, faults: { errorRate: 0.05, errorKinds, resetRate: 0.02, truncateRate: 0.02 } });
    try {
      await emu.writeAccessTokenFile(credentials);
      const flags = driveFlags(emu, credentials);
      const remote = 'drive:pogfs-e2e';
      pogfsOk(['init', volume, '--remote', remote, ...flags, '--pack-size', '32M']);
      pogfsOk(['mount', volume, mnt]);

      // Digests come from the source bytes, not from reading the mount back.
      const expected = new Map<string, string>();
      const before = await emu.calls();
      let written = 0;
      for (let i = 0; i < 66; i++) {
        const rel = join(`media${i % 3}`, `clip${i}.bin`);
        const data = randomBytes(16 * MiB);
        mkdirSync(join(mnt, `media${i % 3}`), { recursive: true });
        writeFileSync(join(mnt, rel), data);
        expected.set(rel, sha256(data));
        written += data.length;
      }
      const text = textCorpus(4 * MiB);
      for (let i = 0; i < 300; i++) {
        const sub = join('docs', `d${i % 6}`, `e${i % 5}`);
        const rel = join(sub, `note${i}.txt`);
        // Each note unique (its own header), most of it shared text: dedup has work too.
        const data = Buffer.concat([Buffer.from(`note ${i}\n`), text.subarray((i * 13_007) % (text.length - 40_000), ((i * 13_007) % (text.length - 40_000)) + 100 + i * 97)]);
        mkdirSync(join(mnt, sub), { recursive: true });
        writeFileSync(join(mnt, rel), data);
        expected.set(rel, sha256(data));
        written += data.length;
      }
      assert.ok(written > GiB, `${written} bytes written`);

      const uploaded = await waitUploaded(mnt, 8 * 60_000);
      const r = uploaded.remote!;
      assert.equal(r.upload.dirtyBytes, 0);
      assert.ok(r.upload.packsUploaded >= 33, `1056 MiB of random data in 32 MiB packs: ${r.upload.packsUploaded} packs`);
      // A partial pack only when writing pauses, not one per free upload slot while the small files go in.
      assert.ok(r.upload.packsUploaded <= 40, `no stream of small packs: ${r.upload.packsUploaded} packs`);
      pogfsOk(['umount', mnt]);
      assert.ok(!isMounted(mnt));
      const calls = driveCallsBetween(before, await emu.calls());
      const stats = await emu.stats();
      const perGiB = (calls.total * GiB) / written;
      const byMethod = Object.entries(calls.byMethod).map(([m, n]) => `${m} ${n}`).join(', ');
      t.diagnostic(`Drive calls per GiB written: ${perGiB.toFixed(1)} (${calls.total} calls for ${(written / MiB).toFixed(0)} MiB in ${r.upload.packsUploaded} packs, upload and unmount: ${byMethod})`);
      t.diagnostic(`faults the emulator injected: ${JSON.stringify(stats.faults)}`);
      // The point of the faults: they must have happened, of every kind asked for.
      for (const kind of ['reset', 'truncate']) assert.ok((stats.faults[kind] ?? 0) > 0, `no ${kind} fault happened: ${JSON.stringify(stats.faults)}`);
      assert.ok(errorKinds.some((k) => (stats.faults[String(k)] ?? 0) > 0), `no error answer happened: ${JSON.stringify(stats.faults)}`);

      // The machine is lost: only Drive has the volume now.
      rmSync(volume, { recursive: true, force: true });
      assert.ok(!existsSync(volume));
      const restore = pogfs(['mount', remote, mnt2, '--cache-dir', copy, ...flags]);
      assert.equal(restore.status, 0, restore.stderr);
      assert.match(restore.stderr, new RegExp(`restored ${expected.size} files from ${remote}`));
      assert.ok(isMounted(mnt2));
      assert.equal(mountStatus(mnt2).remote!.fetch.blocks, 0, 'nothing local at mount: every byte read next comes from Drive');
      const got = treeDigests(mnt2);
      assert.equal(got.size, expected.size);
      for (const [rel, digest] of expected) assert.equal(got.get(rel), digest, rel);
      assert.ok(mountStatus(mnt2).remote!.fetch.bytes >= GiB, 'the data was fetched from Drive');
      pogfsOk(['umount', mnt2]);

      const fsck = pogfs(['fsck', copy, '--remote']);
      assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
    } catch (err) {
      t.diagnostic(`daemon log of ${existsSync(copy) ? copy : volume}:\n${logTail(existsSync(copy) ? copy : volume)}`);
      throw err;
    } finally {
      // Faults off first: a daemon unmounting through them would take long to flush.
      await emu.setFaults({ errorRate: 0, resetRate: 0, truncateRate: 0 }).catch(() => undefined);
      await release(mnt, volume);
      await release(mnt2, copy);
      await emu.stop();
    }
  });

  it('backpressure slows writers while dirty data fills the cache, and nothing is lost', { timeout: 10 * 60_000 }, async (t) => {
    // A remote folder of its own: nothing test 1 left behind on Drive (a lock, packs) bears on this.
    const volume = join(dir, 'vol-bp');
    const mnt = join(dir, 'mnt-bp');
    const credentials = join(dir, 'token-2.json');
    const source = join(dir, 'source-40M.bin');
    mkdirSync(mnt);
    const data = randomBytes(40 * MiB);
    writeFileSync(source, data);
    const emu = await EmulatorProcess.start({ seed: 12 });
    let dd: ReturnType<typeof ddInBackground> | undefined;
    try {
      await emu.writeAccessTokenFile(credentials);
      pogfsOk(['init', volume, '--remote', 'drive:pogfs-e2e-backpressure', ...driveFlags(emu, credentials), '--cache-size', '16M']);
      pogfsOk(['mount', volume, mnt]);
      // Drive is down: every call fails, so nothing dirty can leave.
      await emu.setFaults({ errorRate: 1, errorKinds: [503] });
      dd = ddInBackground(source, join(mnt, 'f'));

      let slowed = false;
      for (const deadline = Date.now() + 60_000; Date.now() < deadline && dd.running(); await sleep(100)) {
        if (mountStatus(mnt).remote!.backpressure) {
          slowed = true;
          break;
        }
      }
      assert.ok(slowed, `backpressure never showed while dd ran (dd ${dd.running() ? 'still running' : `exited: ${dd.stderr()}`})`);
      assert.ok(dd.running(), 'the writer waits for uploads instead of finishing or failing');
      // Writers are held back counting what they buffered too; that reaches the store within the writeback interval.
      let during = mountStatus(mnt).remote!;
      for (const deadline = Date.now() + 30_000; during.upload.dirtyBytes < during.cacheBytes && Date.now() < deadline; await sleep(200)) during = mountStatus(mnt).remote!;
      assert.ok(during.upload.dirtyBytes >= during.cacheBytes, `dirty ${during.upload.dirtyBytes} fills the cache of ${during.cacheBytes}`);
      assert.ok(dd.running(), 'still waiting once the cache is full of dirty data');
      assert.ok(during.backpressure, 'and the status still says writers are slowed');
      assert.match(pogfsOk(['status', mnt]), /writers are being slowed until uploads catch up/);

      await emu.setFaults({ errorRate: 0 });
      // Bounded by the client's backoff (at most 32 s between attempts) and the uploader's retry.
      const code = await within(dd.exited, 5 * 60_000, 'dd after Drive came back');
      assert.equal(code, 0, dd.stderr());
      const after = await waitUploaded(mnt, 5 * 60_000);
      assert.ok(after.remote!.throttledWrites > 0, `throttled writes: ${after.remote!.throttledWrites}`);
      t.diagnostic(`throttled writes: ${after.remote!.throttledWrites}; packs: ${after.remote!.upload.packsUploaded}`);
      // Past the kernel's page cache: what the daemon stored is what dd wrote.
      writeFileSync('/proc/sys/vm/drop_caches', '3');
      assert.equal(sha256(readFileSync(join(mnt, 'f'))), sha256(data));
      pogfsOk(['umount', mnt]);
    } catch (err) {
      t.diagnostic(`daemon log of ${volume}:\n${logTail(volume)}`);
      throw err;
    } finally {
      dd?.kill();
      await emu.setFaults({ errorRate: 0 }).catch(() => undefined);
      await release(mnt, volume);
      await emu.stop();
    }
  });
});
