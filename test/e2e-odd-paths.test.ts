import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { liveDaemon } from '../src/cli/daemon-record';
import { findMount } from '../src/fuse/mount-table';
import { isMounted, pogfs, pogfsOk } from './support/mount';
import { tempDir } from './support/tmp';

/**
 * Volume paths and mount points with the characters the mount table and mount options
 * escape: ',' (separates mount options), '\' (escapes them, and is octal in mountinfo),
 * a space and a tab (octal in mountinfo), and a non-ASCII letter (UTF-8 bytes). status,
 * stats and umount find the daemon through the mount table's source field: it must read
 * back as the volume's path exactly.
 */

const ODD = 'a,b c\\d\te\u00fc';

describe('volume and mount point paths with odd characters', () => {
  it('mount, status, stats and umount work for a volume at a path with , \\ space tab and UTF-8', async () => {
    const dir = tempDir('pogfs-odd-', () => {
      if (isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', '--', mnt]);
    });
    const volume = join(dir, `vol ${ODD}`);
    const mnt = join(dir, `mnt ${ODD}`);
    mkdirSync(mnt);
    pogfsOk(['init', volume]);
    pogfsOk(['mount', volume, mnt]);
    assert.ok(isMounted(mnt));
    // The kernel's record of the mount names the volume exactly.
    const entry = findMount(mnt);
    assert.equal(entry?.source, volume);
    assert.equal(entry?.type, 'fuse.pogfs');

    writeFileSync(join(mnt, `file ${ODD}`), 'hello');
    assert.equal(readFileSync(join(mnt, `file ${ODD}`), 'utf8'), 'hello');

    const status = JSON.parse(pogfsOk(['status', mnt, '--json'])) as { mountpoint: string };
    assert.equal(status.mountpoint, mnt);
    const stats = JSON.parse(pogfsOk(['stats', mnt, '--json'])) as { files: number };
    assert.equal(stats.files, 1);

    const pid = liveDaemon(volume)?.pid;
    assert.ok(pid, 'the daemon is found through the volume path');
    const r = pogfs(['umount', mnt]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(isMounted(mnt), false);
    assert.equal(liveDaemon(volume), undefined, 'umount waited for the daemon to finish');
    assert.equal(r.stderr, '', 'a clean unmount says nothing');
  });
});
