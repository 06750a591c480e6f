import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BlockStore } from '../src/store/block-store';
import { hashBlock } from '../src/store/hash';
import { DriveEmulator } from './support/drive-emulator';
import { driveFlags, pogfsAsync, releaseView, writeToken } from './support/drive-view';
import { mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { unmountQuietly, waitUploaded } from './support/remote-mount';
import { tempDir } from './support/tmp';

/**
 * `--progress`: with `--json`, progress objects one per line on stderr while stdout stays
 * the one result document; without, the human line even where stderr is not a terminal.
 * (The line on a terminal, and silence without --progress, are e2e-ops's.)
 */

interface Progress {
  phase: string;
  done: number;
  total: number | null;
  bytes: number | null;
  rate: number;
  etaSeconds: number | null;
}

/** Every stderr line as a progress object (any other line fails the test). */
function progressLines(stderr: string): Progress[] {
  return stderr
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const o = JSON.parse(l) as { progress?: Progress };
      assert.ok(o.progress, `not a progress line: ${l}`);
      assert.deepEqual(Object.keys(o.progress).sort(), ['bytes', 'done', 'etaSeconds', 'phase', 'rate', 'total']);
      return o.progress;
    });
}

/** The last object of a phase, which is always written (the rest are throttled to about one a second). */
function lastOf(lines: Progress[], phase: string): Progress {
  const mine = lines.filter((p) => p.phase === phase);
  assert.ok(mine.length > 0, `no ${phase} in ${JSON.stringify(lines)}`);
  return mine[mine.length - 1];
}

/** Blocks stored with a reference but named by no row, as a crash leaves them (LMDB serves two processes). */
async function leakBlocks(volume: string, n: number): Promise<void> {
  const store = BlockStore.open(join(volume, 'blocks'));
  await store.acquire(Array.from({ length: n }, () => randomBytes(131072)).map((data) => ({ hash: hashBlock(data), data })));
  await store.close();
}

describe('--progress', () => {
  it('gc of a mounted volume with --json --progress: the daemon\'s scan and delete phases on stderr, the result alone on stdout', async () => {
    const m = mountFresh();
    try {
      writeFileSync(m.p('a'), randomBytes(1024 * 1024));
      await leakBlocks(m.volume, 3);
      const r = pogfs(['gc', m.volume, '--json', '--progress']);
      assert.equal(r.status, 0, r.stderr);
      const result = JSON.parse(r.stdout) as { removedBlocks: number; mounted: string };
      assert.equal(result.removedBlocks, 3);
      assert.equal(result.mounted, m.mnt);
      const lines = progressLines(r.stderr);
      const scan = lastOf(lines, 'gc: scanning blocks');
      assert.equal(scan.done, scan.total);
      assert.ok(scan.done >= 8 + 3, JSON.stringify(scan));
      const deleted = lastOf(lines, 'gc: deleting unreferenced blocks');
      assert.deepEqual([deleted.done, deleted.total, deleted.etaSeconds], [3, 3, 0]);
      // Without --progress and not on a terminal: nothing on stderr, as before.
      const quiet = pogfs(['gc', m.volume, '--json']);
      assert.equal(quiet.status, 0, quiet.stderr);
      assert.equal(quiet.stderr, '');
    } finally {
      m.umount();
    }
  });

  it('fsck, gc, pin and mounting from a remote: JSON lines with --json, human lines without, where stderr is not a terminal', { timeout: 120_000 }, async () => {
    const dir = tempDir('pogfs-progress-', () => {
      unmountQuietly(mnt);
      unmountQuietly(mnt2);
    });
    const volume = join(dir, 'vol');
    const remote = join(dir, 'remote');
    const mnt = join(dir, 'mnt');
    const mnt2 = join(dir, 'mnt2');
    mkdirSync(mnt);
    mkdirSync(mnt2);
    pogfsOk(['init', volume, '--remote', `local:${remote}`]);
    pogfsOk(['mount', volume, mnt]);
    sh(`mkdir ${join(mnt, 'd')} && head -c 2000000 /dev/urandom > ${join(mnt, 'd', 'f')}`);
    await waitUploaded(mnt);
    const pinned = pogfs(['pin', join(mnt, 'd'), '--json', '--progress']);
    assert.equal(pinned.status, 0, pinned.stderr);
    assert.equal((JSON.parse(pinned.stdout) as { blocks: number }).blocks, 16);
    const fetch = lastOf(progressLines(pinned.stderr), 'pin: fetching blocks');
    assert.deepEqual([fetch.done, fetch.total], [16, 16]);
    assert.ok(fetch.bytes !== null && fetch.bytes >= 0);
    pogfsOk(['umount', mnt]);

    const fsck = pogfs(['fsck', volume, '--json', '--progress']);
    assert.equal(fsck.status, 0, fsck.stderr);
    assert.equal((JSON.parse(fsck.stdout) as { exitCode: number }).exitCode, 0);
    const verified = lastOf(progressLines(fsck.stderr), 'verifying blocks');
    assert.equal(verified.done, verified.total);
    assert.ok(verified.bytes !== null && verified.bytes >= 2000000, JSON.stringify(verified));

    // Human lines in a pipe: one a line, no terminal codes.
    const gc = pogfs(['gc', volume, '--progress']);
    assert.equal(gc.status, 0, gc.stderr);
    assert.match(gc.stderr, /^gc: scanning blocks: \d+\/\d+ \(\d+%\) \d+\/s, ETA \d+:\d\d$/m);
    assert.doesNotMatch(gc.stderr, /\x1b|\r/);

    // Mounting from the remote alone reads every pack's index.
    const restored = pogfs(['mount', `local:${remote}`, mnt2, '--cache-dir', join(dir, 'copy'), '--json', '--progress']);
    assert.equal(restored.status, 0, restored.stderr);
    assert.equal(restored.stdout, '');
    const lines = restored.stderr.trim().split('\n');
    const packs = lastOf(progressLines(lines.filter((l) => l.startsWith('{')).join('\n')), 'reading pack indexes');
    assert.equal(packs.done, packs.total);
    // The notices (restored ... files) stay the human lines they were.
    assert.ok(lines.some((l) => /^pogfs: restored \d+ files from local:/.test(l)), restored.stderr);
  });

  it('the Drive view\'s first scan with --json --progress: items so far, total unknown', { timeout: 90_000 }, async () => {
    const dir = tempDir('pogfs-progress-drive-');
    const mnt = join(dir, 'mnt');
    const state = join(dir, 'state');
    mkdirSync(mnt);
    // Slow pages, so the scan outlasts the first report.
    const emu = await DriveEmulator.start({ maxPageSize: 50, faults: { latencyMs: 150 } });
    try {
      emu.seedItems(Array.from({ length: 600 }, (_, i) => ({ name: `f${i}.mkv`, size: 10, contentSeed: i })));
      const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', '--json', '--progress', ...driveFlags(emu, writeToken(emu, join(dir, 'token.json')))]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, '');
      const lines = progressLines(r.stderr);
      const scan = lastOf(lines, 'scanning the Drive');
      assert.equal(scan.total, null);
      assert.equal(scan.etaSeconds, null);
      assert.ok(scan.done > 0 && scan.done <= 600, JSON.stringify(lines));
    } finally {
      await releaseView(mnt, state);
      await emu.close();
    }
  });
});
