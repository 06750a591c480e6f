/**
 * `pogfs fsck` of volumes whose metadata is in PostgreSQL, through the real CLI, a real
 * server and real kernel mounts: a clean volume (without a remote, and shared over a
 * `local:` remote, also from a joined machine's cache directory) checks clean while it is
 * mounted and after, with today's JSON shape; each finding is caused on purpose by one
 * direct change of the database (or of the remote directory) and reported with its kind
 * and exit code 4, then undone; an unlinked inode a live session holds open is no leak;
 * --repair and --rebuild-from-remote are refused in one line with exit code 8.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { FsckReport } from '../fsck/report';
import { pogfs, pogfsOk, sh, unmountAnyway } from './support/mount';
import { queryPostgres, startPostgres } from './support/postgres';
import { sharedVolumePlaces } from './support/shared-volume';
import { tempDir } from './support/tmp';

const server = startPostgres();


/** Runs `pogfs fsck VOL --json ...`; the report when it printed one. */
function fsckJson(volume: string, ...args: string[]): { status: number | null; report?: FsckReport; stderr: string } {
  const r = pogfs(['fsck', volume, '--json', ...args]);
  return { status: r.status, report: r.stdout.trim() ? (JSON.parse(r.stdout) as FsckReport) : undefined, stderr: r.stderr };
}

const kinds = (r: FsckReport | undefined): string[] => (r?.findings ?? []).map((f) => f.kind);
const examples = (r: FsckReport | undefined, kind: string): string => (r?.findings.find((f) => f.kind === kind)?.examples ?? []).join('\n');

/** Files, directories, a hard link, a symlink and xattrs. */
function populate(mnt: string, big: Buffer): void {
  fs.mkdirSync(join(mnt, 'dir', 'sub'), { recursive: true });
  fs.writeFileSync(join(mnt, 'dir', 'big.bin'), big);
  fs.writeFileSync(join(mnt, 'small.txt'), 'small file\n');
  fs.linkSync(join(mnt, 'dir', 'big.bin'), join(mnt, 'dir', 'sub', 'hard.bin'));
  fs.symlinkSync('dir/big.bin', join(mnt, 'link'));
  sh(`python3 -c "import os; os.setxattr('${join(mnt, 'small.txt')}', 'user.note', b'kept'); os.setxattr('${join(mnt, 'dir')}', 'user.d', b'1')"`);
}

/** The inode a top-level or nested name (one level per argument) names. */
async function inoOf(url: string, ...names: string[]): Promise<number> {
  let ino = 1;
  for (const name of names) {
    const rows = await queryPostgres(url, `SELECT ino FROM dentries WHERE parent = ${ino} AND name = '${name}'::bytea`);
    ino = Number(rows[0].ino);
  }
  return ino;
}

/** Applies `change`, checks that fsck reports exactly `expected` (exit 4), then applies `undo`. */
async function expectFinding(url: string, volume: string, change: string, undo: string, expected: string[], args: string[] = []): Promise<FsckReport> {
  await queryPostgres(url, change);
  try {
    const r = fsckJson(volume, ...args);
    assert.equal(r.status, 4, r.stderr);
    assert.deepEqual(kinds(r.report), expected);
    assert.equal(r.report!.exitCode, 4);
    return r.report!;
  } finally {
    await queryPostgres(url, undo);
  }
}

const INODE_COLUMNS = 'ino, mode, uid, gid, nlink, size, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns';

describe('fsck of a PostgreSQL volume without a remote', () => {
  const url = server.createDatabase();
  const dir = tempDir('pogfs-pgfsck-', () => unmountAnyway(mnt));
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const big = randomBytes(300 * 1024 + 17);

  it('checks clean while mounted and after, in the JSON shape of a SQLite volume', () => {
    pogfsOk(['init', volume, '--meta', url]);
    pogfsOk(['mount', volume, mnt]);
    try {
      populate(mnt, big);
      const live = fsckJson(volume);
      assert.equal(live.status, 0, live.stderr);
      assert.deepEqual(kinds(live.report), []);
    } finally {
      pogfsOk(['umount', mnt]);
    }
    const r = fsckJson(volume);
    assert.equal(r.status, 0, r.stderr);
    const report = r.report!;
    assert.equal(report.mode, 'full');
    assert.equal(report.exitCode, 0);
    // root, dir, sub, big.bin (two names), small.txt, link
    assert.equal(report.stats.inodes, 6);
    assert.equal(report.stats.directories, 3);
    assert.equal(report.stats.blockRows, 4);
    assert.ok(report.stats.bytesVerified >= big.length, 'a full check reads and hashes the referenced blocks');

    // Today's shape: the same keys as the report of a volume whose metadata is in meta.db.
    const plain = join(dir, 'plain');
    pogfsOk(['init', plain]);
    const sqlite = fsckJson(plain).report!;
    assert.deepEqual(Object.keys(report).sort(), Object.keys(sqlite).sort());
    assert.deepEqual(Object.keys(report.stats).sort(), Object.keys(sqlite.stats).sort());

    const text = pogfs(['fsck', volume]);
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /clean: no problems found/);
  });

  it('reports a dentry to a missing inode, a link count off by one, stray rows, a file shorter than its blocks', async () => {
    const dangling = await expectFinding(
      url,
      volume,
      "INSERT INTO dentries (parent, name, ino) VALUES (1, 'ghost'::bytea, 999999)",
      "DELETE FROM dentries WHERE name = 'ghost'::bytea",
      ['dangling-entry'],
    );
    assert.match(examples(dangling, 'dangling-entry'), /^\/ghost: points to inode #999999, which does not exist/);

    const small = await inoOf(url, 'small.txt');
    const nlink = await expectFinding(url, volume, `UPDATE inodes SET nlink = nlink + 1 WHERE ino = ${small}`, `UPDATE inodes SET nlink = nlink - 1 WHERE ino = ${small}`, ['wrong-nlink']);
    assert.match(examples(nlink, 'wrong-nlink'), /^\/small\.txt: link count 2, should be 1/);
    const sub = await inoOf(url, 'dir', 'sub');
    await expectFinding(url, volume, `UPDATE inodes SET nlink = 3 WHERE ino = ${sub}`, `UPDATE inodes SET nlink = 2 WHERE ino = ${sub}`, ['wrong-nlink']);

    const stray = await expectFinding(
      url,
      volume,
      "INSERT INTO xattrs (ino, name, value) VALUES (888888, 'user.x'::bytea, 'v'::bytea)",
      'DELETE FROM xattrs WHERE ino = 888888',
      ['stray-rows'],
    );
    assert.match(examples(stray, 'stray-rows'), /inode #888888 does not exist but owns 1 xattr/);

    const bigIno = await inoOf(url, 'dir', 'big.bin');
    const size = await expectFinding(url, volume, `UPDATE inodes SET size = 1000 WHERE ino = ${bigIno}`, `UPDATE inodes SET size = ${big.length} WHERE ino = ${bigIno}`, ['size-mismatch']);
    assert.equal(size.findings[0].count, 3, 'every block row reaching past byte 1000');
    assert.match(examples(size, 'size-mismatch'), /^\/dir\/big\.bin \(and 1 more link\): block 0 \(bytes 0-131071\) lies past the size 1000/);
    await expectFinding(url, volume, `UPDATE inodes SET stored_bytes = 5 WHERE ino = ${small}`, `UPDATE inodes SET stored_bytes = 11 WHERE ino = ${small}`, ['size-mismatch']);
  });

  it('reports unreachable inodes and unlinked ones (a leak), but not while the volume is mounted', async () => {
    const now = Math.floor(Date.now() / 1000);
    const unreachable = await expectFinding(
      url,
      volume,
      `INSERT INTO inodes (${INODE_COLUMNS}) VALUES (777778, ${0o40755}, 0, 0, 2, 0, ${now}, 0, ${now}, 0, ${now}, 0)`,
      'DELETE FROM inodes WHERE ino = 777778',
      ['unreachable'],
    );
    assert.match(examples(unreachable, 'unreachable'), /#777778 \(directory, link count 2\): not reachable from the root/);

    await queryPostgres(url, `INSERT INTO inodes (${INODE_COLUMNS}) VALUES (777777, ${0o100644}, 0, 0, 0, 5, ${now}, 0, ${now}, 0, ${now}, 0)`);
    try {
      const dead = fsckJson(volume);
      assert.equal(dead.status, 4, dead.stderr);
      assert.deepEqual(kinds(dead.report), ['dead-inode']);
      assert.equal(dead.report!.findings[0].severity, 'leak');
      assert.match(examples(dead.report, 'dead-inode'), /#777777 \(file, 5 bytes\)/);

      // While the volume's one mount is live, an unlinked inode may be a file open there
      // (such a mount records no opens): not called a leak.
      await queryPostgres(url, "INSERT INTO sessions (id, host, pid, read_only) VALUES ('the-mount', 'here', 4242, false)");
      const mounted = fsckJson(volume);
      assert.equal(mounted.status, 0, mounted.stderr);
      assert.deepEqual(kinds(mounted.report), []);
    } finally {
      await queryPostgres(url, "DELETE FROM sessions WHERE id = 'the-mount'");
      await queryPostgres(url, 'DELETE FROM inodes WHERE ino = 777777');
    }
  });

  it('reports a block the volume directory\'s store lacks (not with --quick, which reads no store)', async () => {
    const bigIno = await inoOf(url, 'dir', 'big.bin');
    const [row] = await queryPostgres(url, `SELECT encode(hash, 'hex') AS hex FROM blocks WHERE ino = ${bigIno} AND idx = 0`);
    const change = `UPDATE blocks SET hash = decode('${'00'.repeat(32)}', 'hex') WHERE ino = ${bigIno} AND idx = 0`;
    const undo = `UPDATE blocks SET hash = decode('${row.hex as string}', 'hex') WHERE ino = ${bigIno} AND idx = 0`;
    const missing = await expectFinding(url, volume, change, undo, ['missing-block']);
    assert.match(examples(missing, 'missing-block'), /^\/dir\/big\.bin \(and 1 more link\): bytes 0-131071 \(block 0, 0000000000000000\)/);
    await queryPostgres(url, change);
    try {
      const quick = fsckJson(volume, '--quick');
      assert.equal(quick.status, 0, quick.stderr);
      assert.equal(quick.report!.mode, 'quick');
    } finally {
      await queryPostgres(url, undo);
    }
    assert.equal(fsckJson(volume).status, 0);
  });

  it('refuses --repair and --rebuild-from-remote in one line with exit code 8, changing nothing', async () => {
    const small = await inoOf(url, 'small.txt');
    await queryPostgres(url, `UPDATE inodes SET nlink = nlink + 1 WHERE ino = ${small}`);
    try {
      for (const args of [['--repair'], ['--rebuild-from-remote', `local:${join(dir, 'nowhere')}`]]) {
        const r = pogfs(['fsck', volume, ...args]);
        assert.equal(r.status, 8, r.stderr);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
        assert.match(r.stderr, /keeps its metadata in PostgreSQL: .*nothing was changed.*pg_dump/);
        assert.equal(r.stdout, '');
      }
      assert.equal(Number((await queryPostgres(url, `SELECT nlink FROM inodes WHERE ino = ${small}`))[0].nlink), 2, 'the wrong link count is still there');
    } finally {
      await queryPostgres(url, `UPDATE inodes SET nlink = nlink - 1 WHERE ino = ${small}`);
    }
    assert.equal(fsckJson(volume).status, 0);
  });
});

describe('fsck of a PostgreSQL volume shared over a local: remote', () => {
  const url = server.createDatabase();
  const { dir, volume, remote, cacheB, ma, mb } = sharedVolumePlaces('pogfs-pgfsck-shared-');
  const big = randomBytes(300 * 1024 + 17);
  const packFiles = (): string[] =>
    (fs.readdirSync(join(remote, 'packs'), { recursive: true }) as string[]).map((p) => join(remote, 'packs', p)).filter((p) => fs.statSync(p).isFile());

  it('checks clean from the volume directory and from a joined machine\'s cache directory, while both are mounted, and with --remote', () => {
    pogfsOk(['init', volume, '--meta', url, '--remote', `local:${remote}`]);
    pogfsOk(['mount', volume, ma]);
    try {
      populate(ma, big);
      pogfsOk(['mount', url, mb, '--cache-dir', cacheB]);
      try {
        assert.ok(fs.readFileSync(join(mb, 'dir', 'big.bin')).equals(big));
        for (const target of [volume, cacheB]) {
          const r = fsckJson(target);
          assert.equal(r.status, 0, r.stderr);
          assert.deepEqual(kinds(r.report), []);
          assert.equal(r.report!.stats.inodes, 6);
        }
      } finally {
        pogfsOk(['umount', mb]);
      }
    } finally {
      pogfsOk(['umount', ma]);
    }
    assert.ok(packFiles().length > 0);
    const r = fsckJson(volume, '--remote');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(kinds(r.report), []);
  });

  it('reports a block with no pack entry, and one whose pack row is gone (with --remote: that pack is an orphan on the remote)', async () => {
    const bigIno = await inoOf(url, 'dir', 'big.bin');
    const [entry] = await queryPostgres(
      url,
      `SELECT encode(pb.hash, 'hex') AS hex, pb.pack, pb.value_offset, pb.value_length, pb.block_offset, pb.length
         FROM pack_blocks pb JOIN blocks b ON b.hash = pb.hash WHERE b.ino = ${bigIno} AND b.idx = 1`,
    );
    const noEntry = await expectFinding(
      url,
      volume,
      `DELETE FROM pack_blocks WHERE hash = decode('${entry.hex as string}', 'hex')`,
      `INSERT INTO pack_blocks (hash, pack, value_offset, value_length, block_offset, length) VALUES (decode('${entry.hex as string}', 'hex'), ${entry.pack as number}, ${entry.value_offset as number}, ${entry.value_length as number}, ${entry.block_offset as number}, ${entry.length as number})`,
      ['missing-block'],
    );
    assert.match(examples(noEntry, 'missing-block'), /^\/dir\/big\.bin \(and 1 more link\): bytes 131072-262143 \(block 1, .*\) \[in no pack\]/);

    const [pack] = await queryPostgres(url, `SELECT id, name, remote_id, size, created_ns FROM packs WHERE id = ${entry.pack as number}`);
    const noPack = await expectFinding(
      url,
      volume,
      `DELETE FROM packs WHERE id = ${pack.id as number}`,
      `INSERT INTO packs (id, name, remote_id, size, created_ns) VALUES (${pack.id as number}, '${pack.name as string}', '${pack.remote_id as string}', ${pack.size as number}, ${pack.created_ns as number})`,
      ['missing-block', 'orphan-pack'],
      ['--remote'],
    );
    assert.match(examples(noPack, 'missing-block'), new RegExp(`\\[its pack #${pack.id as number} is not in the index\\]`));
    assert.match(examples(noPack, 'orphan-pack'), new RegExp(`pack ${pack.name as string} .* is not in the index`));
    assert.equal(fsckJson(volume, '--remote').status, 0);
  });

  it('reports an unlinked inode as a leak, but not while a live session of another machine holds it open', async () => {
    const now = Math.floor(Date.now() / 1000);
    await queryPostgres(url, `INSERT INTO inodes (${INODE_COLUMNS}) VALUES (777777, ${0o100644}, 0, 0, 0, 5, ${now}, 0, ${now}, 0, ${now}, 0)`);
    try {
      const dead = fsckJson(volume);
      assert.equal(dead.status, 4, dead.stderr);
      assert.deepEqual(kinds(dead.report), ['dead-inode']);

      await queryPostgres(url, "INSERT INTO sessions (id, host, pid, read_only) VALUES ('other-machine', 'elsewhere', 4242, false)");
      const live = fsckJson(volume);
      assert.equal(live.status, 4, 'a live session alone holds nothing open');
      assert.deepEqual(kinds(live.report), ['dead-inode']);

      await queryPostgres(url, "INSERT INTO session_opens (session_id, ino) VALUES ('other-machine', 777777)");
      const held = fsckJson(volume);
      assert.equal(held.status, 0, held.stderr);
      assert.deepEqual(kinds(held.report), []);

      // The session expired (no heartbeat for an hour): its hold is dead, the inode a leak again.
      await queryPostgres(url, "UPDATE sessions SET heartbeat = clock_timestamp() - interval '1 hour' WHERE id = 'other-machine'");
      const expired = fsckJson(volume);
      assert.equal(expired.status, 4, expired.stderr);
      assert.deepEqual(kinds(expired.report), ['dead-inode']);
    } finally {
      await queryPostgres(url, "DELETE FROM sessions WHERE id = 'other-machine'");
      await queryPostgres(url, 'DELETE FROM inodes WHERE ino = 777777');
    }
  });

  it('with --remote, reports a pack deleted from the remote directory (without it, the index alone is consistent)', () => {
    const [file] = packFiles();
    const aside = join(dir, 'aside');
    fs.renameSync(file, aside);
    try {
      const r = fsckJson(volume, '--remote');
      assert.equal(r.status, 4, r.stderr);
      assert.deepEqual(kinds(r.report), ['missing-pack']);
      assert.match(examples(r.report, 'missing-pack'), /is not on .*: \d+ live blocks/);
      assert.equal(fsckJson(volume).status, 0);
    } finally {
      fs.renameSync(aside, file);
    }
    assert.equal(fsckJson(volume, '--remote').status, 0);
  });

  it('refuses --repair with exit code 8', () => {
    const r = pogfs(['fsck', cacheB, '--repair']);
    assert.equal(r.status, 8, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  });
});
