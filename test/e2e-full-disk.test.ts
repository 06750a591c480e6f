import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { DriveEmulator, syntheticBytes } from './support/drive-emulator';
import { driveFlags, pogfsAsync, releaseView, shAsync, writeToken } from './support/drive-view';
import { isMounted, pogfs, pogfsOk, sh } from './support/mount';
import { tempDir } from './support/tmp';

/**
 * A volume on a file system of `mib` MiB of its own (tmpfs) and a mount point for it;
 * after the test file, the mount and then the file system go.
 */
function volumeOnSmallDisk(mib: number): { disk: string; volume: string; mnt: string } {
  const dir = tempDir('pogfs-full-', () => {
    if (isMounted(mnt) && pogfs(['umount', mnt]).status !== 0) spawnSync('fusermount3', ['-u', '-z', mnt]);
    spawnSync('umount', ['-l', disk]);
  });
  const disk = join(dir, 'disk');
  const mnt = join(dir, 'mnt');
  mkdirSync(disk);
  mkdirSync(mnt);
  sh(`mount -t tmpfs -o size=${mib}m tmpfs '${disk}'`);
  const volume = join(disk, 'vol');
  pogfsOk(['init', volume]);
  return { disk, volume, mnt };
}

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** Runs a shell command, returning its exit status and output (never throws). */
function run(command: string): { status: number | null; out: string } {
  const r = spawnSync('/bin/sh', ['-c', command], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('a full disk', () => {
  it('gives ENOSPC, keeps the daemon and every committed byte, and deleting makes room again', async () => {
    const { volume, mnt } = volumeOnSmallDisk(80);
    pogfsOk(['mount', volume, mnt]);

    sh(`head -c 10M /dev/urandom > '${mnt}/ten' && sync '${mnt}/ten'`);
    const tenHash = sha(join(mnt, 'ten'));

    // More than the disk holds: the writer must hear ENOSPC (not EIO), at fsync or close.
    const dd = run(`dd if=/dev/urandom of='${mnt}/big' bs=1M count=120 conv=fsync`);
    assert.notEqual(dd.status, 0, dd.out);
    assert.match(dd.out, /No space left on device/);
    assert.doesNotMatch(dd.out, /Input\/output error/);

    // The daemon is alive, and the file whose create succeeded is still named.
    assert.ok(statfsSync(mnt).blocks > 0);
    assert.match(sh(`ls '${mnt}'`), /big/);
    // statfs says how much a writer may still add, truly: that much (less 2 MiB of
    // slack for the writer's own buffering) goes in, and the mount says little is left.
    const mntFree = statfsSync(mnt);
    const promised = mntFree.bavail * mntFree.bsize;
    const fits = Math.max(0, Math.floor((promised - 2 * 1024 * 1024) / (1024 * 1024)));
    if (fits > 0) {
      const r = run(`dd if=/dev/urandom of='${mnt}/fits' bs=1M count=${fits} conv=fsync`);
      assert.equal(r.status, 0, `statfs promised ${promised} bytes, yet ${fits} MiB did not fit: ${r.out}`);
    }
    const left = statfsSync(mnt);
    assert.ok(left.bavail * left.bsize < 4 * 1024 * 1024, `statfs says ${left.bavail * left.bsize} bytes are free on a full disk`);

    // A small file either lands or says ENOSPC: never a silent success that is lost.
    // (dd, not the shell's `>`: a shell ignores the error close returns.)
    const small = run(`echo hello | dd of='${mnt}/small' status=none`);
    if (small.status === 0) assert.equal(readFileSync(join(mnt, 'small'), 'utf8'), 'hello\n');
    else assert.match(small.out, /No space left on device/);

    // Deleting works on the full disk and frees room for new data without a remount.
    sh(`rm '${mnt}/big'`);
    let room = 0;
    for (let i = 0; i < 100 && room < 20 * 1024 * 1024; i++) {
      await sleep(100);
      const s = statfsSync(mnt);
      room = s.bavail * s.bsize;
    }
    assert.ok(room >= 20 * 1024 * 1024, `only ${room} bytes available after deleting`);
    sh(`head -c 20M /dev/urandom > '${mnt}/after' && sync '${mnt}/after'`);
    const afterHash = sha(join(mnt, 'after'));

    pogfsOk(['umount', mnt]);
    const fsck = pogfs(['fsck', volume]);
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
    pogfsOk(['mount', volume, mnt]);
    try {
      assert.equal(sha(join(mnt, 'ten')), tenHash);
      assert.equal(sha(join(mnt, 'after')), afterHash);
      if (small.status === 0) assert.equal(readFileSync(join(mnt, 'small'), 'utf8'), 'hello\n');
    } finally {
      pogfsOk(['umount', mnt]);
    }
  });

  it('the log filling the disk does not kill the daemon', () => {
    const { disk, volume, mnt } = volumeOnSmallDisk(16);
    // Verbose: every request writes a log line, to the full disk.
    pogfsOk(['mount', volume, mnt, '--verbose']);
    // Fill the disk from outside the volume, to the last byte, then make the daemon log.
    run(`dd if=/dev/zero of='${disk}/filler' bs=64K`);
    const w = run(`head -c 4M /dev/urandom > '${mnt}/f'`);
    assert.notEqual(w.status, 0);
    assert.match(w.out, /No space left on device/);
    writeFileSync(join(disk, 'filler'), '');
    assert.ok(statfsSync(mnt).blocks > 0, 'the daemon died');
    sh(`echo back > '${mnt}/g' && sync '${mnt}/g'`);
    assert.equal(readFileSync(join(mnt, 'g'), 'utf8'), 'back\n');
    pogfsOk(['umount', mnt]);
  });
});

describe('a full disk under a Drive view\'s state directory', () => {
  it('chunks that do not fit stay in memory: reads keep working, the daemon stays, nothing is lost', { timeout: 180_000 }, async () => {
    const dir = tempDir('pogfs-full-view-', () => {
      spawnSync('umount', ['-l', join(dir, 'disk')]);
    });
    const disk = join(dir, 'disk');
    const mnt = join(dir, 'mnt');
    const state = join(disk, 'state');
    mkdirSync(disk);
    mkdirSync(mnt);
    sh(`mount -t tmpfs -o size=24m tmpfs '${disk}'`);
    const emu = await DriveEmulator.start({});
    try {
      const flags = driveFlags(emu, writeToken(emu, join(dir, 'token.json')));
      const MiB = 1024 * 1024;
      emu.seedItems([
        { name: 'movie.mkv', size: 40 * MiB, contentSeed: 21 },
        { name: 'other.mkv', size: 6 * MiB, contentSeed: 22 },
      ]);
      const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', '--cache-size', '1G', ...flags]);
      assert.equal(r.code, 0, r.stderr);
      try {
        // 40 MiB through a 24 MiB disk: read twice, right both times.
        const expected = createHash('sha256').update(syntheticBytes(21, 0, 40 * MiB)).digest('hex');
        for (let i = 0; i < 2; i++) {
          const sum = await shAsync(`sha256sum '${mnt}/movie.mkv'`);
          assert.equal(sum.code, 0, sum.stderr);
          assert.equal(sum.stdout.split(' ')[0], expected);
        }
        // The cache kept off the reserve the mirror database needs to go on committing.
        const left = statfsSync(disk);
        assert.ok(left.bavail * left.bsize >= 7 * MiB, `the chunk cache left only ${left.bavail * left.bsize} bytes free`);
        // The disk filled to the last byte from outside: still served.
        await shAsync(`dd if=/dev/zero of='${disk}/filler' bs=64K`);
        const other = await shAsync(`sha256sum '${mnt}/other.mkv'`);
        assert.equal(other.code, 0, other.stderr);
        assert.equal(other.stdout.split(' ')[0], createHash('sha256').update(syntheticBytes(22, 0, 6 * MiB)).digest('hex'));
        assert.match(readFileSync(join(state, 'pogfs.log'), 'utf8'), /is full; chunks are served from memory/);
      } finally {
        await releaseView(mnt, state);
      }
    } finally {
      await emu.close();
    }
  });
});
