/**
 * Another machine's changes to a PostgreSQL volume, seen through a mount within a second:
 * a PgEngine opened on the same database in the test process stands in for the other
 * machine (engines without a mount session open beside a mount). With the mount's kernel
 * caches warm (names, negative names, attributes, listings and pages cached for a minute),
 * a name created, renamed and removed, a chmod/chown/utimens and a truncate made there show
 * through the mount within 1 s, because the change feed makes the mount forget them. Then
 * two daemons on one volume (over a shared local: remote): a rename on A shows on B within
 * a second, a file closed on A reads new on B. Every test here fails with the daemon's
 * invalidation disabled.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { Client } from 'pg';
import { PgEngine } from '../src/meta/pg-engine';
import { ROOT_INO, S_IFDIR, S_IFREG } from '../src/posix/file-system';
import { isMounted, mountFresh, pogfs, pogfsOk, type MountedVolume } from './support/mount';
import { startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

const server = startPostgres();

/** How long a change may take to show through the mount. */
const WITHIN_MS = 1000;

function nowSpec(): { s: number; ns: number } {
  const ms = Date.now();
  return { s: Math.floor(ms / 1000), ns: (ms % 1000) * 1e6 };
}

/**
 * Polls `check` (a view through the mount) until it holds, at most WITHIN_MS after the
 * change; fails with the last view otherwise. Says how long it took.
 */
async function seenWithin(t: TestContext, what: string, check: () => boolean, describe: () => unknown): Promise<void> {
  const began = Date.now();
  for (;;) {
    if (check()) {
      t.diagnostic(`${what}: seen after ${Date.now() - began} ms`);
      return;
    }
    if (Date.now() - began > WITHIN_MS) assert.fail(`${what}: not seen through the mount within ${WITHIN_MS} ms; it shows ${JSON.stringify(describe())}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const exists = (path: string): boolean => fs.existsSync(path);

describe('a mount of a PostgreSQL volume follows changes made by another client', () => {
  const url = server.createDatabase();
  // Unmounted after the file (test/support/mount.ts), also when a test fails.
  const m: MountedVolume = mountFresh(['--meta', url]);
  let other: PgEngine;

  before(async () => {
    other = await PgEngine.open(url.slice('postgres:'.length), { warn: () => undefined });
  });

  after(async () => {
    await other?.close();
    if (isMounted(m.mnt)) m.umount();
  });

  it('a name made, renamed and removed elsewhere', async (t) => {
    fs.mkdirSync(m.p('dir'));
    // Warm: a negative entry for the name to come, the listing, the directory's attributes.
    assert.equal(exists(m.p('dir', 'made')), false);
    assert.deepEqual(fs.readdirSync(m.p('dir')), []);
    const dirMtime = fs.statSync(m.p('dir')).mtimeMs;
    const dir = await other.lookup(ROOT_INO, Buffer.from('dir'));
    // Cached for a minute: without the feed, the mount would go on showing this.
    assert.equal(exists(m.p('dir', 'made')), false);

    await new Promise((resolve) => setTimeout(resolve, 20)); // a later mtime
    await other.mknod(dir.ino, Buffer.from('made'), { mode: S_IFREG | 0o640, uid: 0, gid: 0 }, nowSpec());
    await seenWithin(t, 'a new name', () => exists(m.p('dir', 'made')), () => fs.readdirSync(m.p('dir')));
    assert.deepEqual(fs.readdirSync(m.p('dir')), ['made'], 'the cached listing was dropped');
    assert.notEqual(fs.statSync(m.p('dir')).mtimeMs, dirMtime, "the directory's cached attributes were dropped");

    // Warm the name and its attributes, then rename it elsewhere.
    assert.equal(fs.statSync(m.p('dir', 'made')).mode & 0o777, 0o640);
    assert.equal(exists(m.p('renamed')), false);
    await other.rename(dir.ino, Buffer.from('made'), ROOT_INO, Buffer.from('renamed'), 0, nowSpec());
    await seenWithin(
      t,
      'a rename',
      () => !exists(m.p('dir', 'made')) && exists(m.p('renamed')),
      () => [fs.readdirSync(m.mnt), fs.readdirSync(m.p('dir'))],
    );
    assert.deepEqual(fs.readdirSync(m.mnt).sort(), ['dir', 'renamed']);

    assert.equal(fs.statSync(m.p('renamed')).nlink, 1);
    await other.unlink(ROOT_INO, Buffer.from('renamed'), nowSpec());
    await seenWithin(t, 'a removal', () => !exists(m.p('renamed')), () => fs.readdirSync(m.mnt));
    assert.deepEqual(fs.readdirSync(m.mnt), ['dir']);
  });

  it('a chmod, chown and utimens elsewhere', async (t) => {
    fs.writeFileSync(m.p('attrs'), 'x');
    const before = fs.statSync(m.p('attrs'));
    assert.equal(before.mode & 0o7777, 0o644);
    const ino = (await other.lookup(ROOT_INO, Buffer.from('attrs'))).ino;
    await other.setattr(ino, { mode: 0o600, uid: 4321, gid: 1234, mtime: { s: 1_000_000_000, ns: 0 }, atime: { s: 1_000_000_001, ns: 0 }, ctime: nowSpec() });
    await seenWithin(
      t,
      'new attributes',
      () => {
        const st = fs.statSync(m.p('attrs'));
        return (st.mode & 0o7777) === 0o600 && st.uid === 4321 && st.gid === 1234 && st.mtimeMs === 1_000_000_000_000;
      },
      () => {
        const st = fs.statSync(m.p('attrs'));
        return { mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid, mtime: st.mtimeMs };
      },
    );
    assert.equal(fs.statSync(m.p('attrs')).atimeMs, 1_000_000_001_000);
  });

  it('a truncate elsewhere: the size and the cached pages go', async (t) => {
    const text = 'the content before the truncate\n'.repeat(100);
    fs.writeFileSync(m.p('file'), text);
    // Warm: attributes and pages (kept across opens).
    assert.equal(fs.statSync(m.p('file')).size, text.length);
    assert.equal(fs.readFileSync(m.p('file'), 'utf8'), text);
    assert.equal(fs.readFileSync(m.p('file'), 'utf8'), text);
    const ino = (await other.lookup(ROOT_INO, Buffer.from('file'))).ino;
    const rows = await other.blocks(ino);
    assert.ok(rows.length > 0, 'the closed file is committed to the database');
    await other.commitContent([{ ino, rows: new Map(rows.map((r) => [r.idx, undefined])), size: 0, storedBytes: 0, attrs: { mtime: nowSpec(), ctime: nowSpec() } }]);
    await seenWithin(t, 'a truncate', () => fs.statSync(m.p('file')).size === 0, () => fs.statSync(m.p('file')).size);
    assert.equal(fs.readFileSync(m.p('file'), 'utf8'), '', 'opened after the change: the new (empty) content');
  });

  it('new content elsewhere: a file opened after it reads the new bytes, not the cached pages', async (t) => {
    // Two files of one size: the other client points the first at the second's blocks.
    const one = Buffer.alloc(200_000, 'a');
    const two = Buffer.alloc(200_000, 'b');
    fs.writeFileSync(m.p('one'), one);
    fs.writeFileSync(m.p('two'), two);
    assert.ok(fs.readFileSync(m.p('one')).equals(one)); // its pages are cached, kept across opens
    const ino = (await other.lookup(ROOT_INO, Buffer.from('one'))).ino;
    const rows = await other.blocks((await other.lookup(ROOT_INO, Buffer.from('two'))).ino);
    await other.commitContent([{ ino, rows: new Map(rows.map((r) => [r.idx, { hash: r.hash, len: r.len }])), size: two.length, storedBytes: two.length, attrs: { mtime: nowSpec(), ctime: nowSpec() } }]);
    await seenWithin(t, 'new content', () => fs.readFileSync(m.p('one')).equals(two), () => fs.readFileSync(m.p('one')).subarray(0, 8).toString());
  });

  it('close-to-open: a file open here reads what it read until the file is opened again, which reads the change', async (t) => {
    const text = 'open while another client truncates it\n'.repeat(50);
    fs.writeFileSync(m.p('held'), text);
    const fd = fs.openSync(m.p('held'), 'r');
    const readAll = (): string => {
      const buf = Buffer.alloc(text.length);
      return buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString();
    };
    try {
      assert.equal(readAll(), text);
      const ino = (await other.lookup(ROOT_INO, Buffer.from('held'))).ino;
      const rows = await other.blocks(ino);
      await other.commitContent([{ ino, rows: new Map(rows.map((r) => [r.idx, undefined])), size: 0, storedBytes: 0, attrs: { mtime: nowSpec(), ctime: nowSpec() } }]);
      await new Promise((resolve) => setTimeout(resolve, 200)); // the notice has come: the kernel's pages are gone
      assert.equal(readAll(), text, 'the open handle reads what it read');
      assert.equal(fs.fstatSync(fd).size, text.length);
      // Opened after the change: the new, empty content (for the old handle too from then on).
      await seenWithin(t, 'a truncate, to a new open', () => fs.readFileSync(m.p('held'), 'utf8') === '', () => fs.statSync(m.p('held')).size);
      assert.equal(readAll(), '');
    } finally {
      fs.closeSync(fd);
    }
    assert.equal(fs.readFileSync(m.p('held'), 'utf8'), '');
  });

  it('after the feed missed changes (its connection lost), everything the kernel knows is dropped', async (t) => {
    fs.writeFileSync(m.p('kept'), 'x');
    assert.equal(fs.statSync(m.p('kept')).mode & 0o777, 0o644);
    assert.equal(exists(m.p('late')), false);
    const ino = (await other.lookup(ROOT_INO, Buffer.from('kept'))).ino;
    // The feed's connection is ended and cannot come back until the changes are made, so
    // their notices are missed for certain (the other client's connections stay open).
    const address = new URL(url);
    const database = decodeURIComponent(address.pathname.slice(1));
    address.pathname = '/postgres'; // a database cannot be closed to connections from inside it
    const admin = new Client({ connectionString: address.toString() });
    await admin.connect();
    try {
      await admin.query(`ALTER DATABASE "${database}" ALLOW_CONNECTIONS false`);
      const ended = await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pogfs-feed'");
      assert.equal(ended.rows.length, 1, 'the mount follows changes on one connection');
      await other.setattr(ino, { mode: 0o600, ctime: nowSpec() });
      await other.mknod(ROOT_INO, Buffer.from('late'), { mode: S_IFREG | 0o644, uid: 0, gid: 0 }, nowSpec());
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Still cached: the notices went nowhere.
      assert.equal(fs.statSync(m.p('kept')).mode & 0o777, 0o644);
      assert.equal(exists(m.p('late')), false);
    } finally {
      await admin.query(`ALTER DATABASE "${database}" ALLOW_CONNECTIONS true`);
      await admin.end();
    }
    await seenWithin(t, 'changes missed by the feed', () => (fs.statSync(m.p('kept')).mode & 0o777) === 0o600 && exists(m.p('late')), () => fs.readdirSync(m.mnt));
  });

  it('a burst of changes elsewhere (names of a tar x): every one shows', async (t) => {
    fs.mkdirSync(m.p('burst'));
    const dir = await other.lookup(ROOT_INO, Buffer.from('burst'));
    const count = 300;
    for (let i = 0; i < count; i += 7) assert.equal(exists(m.p('burst', `f${i}`)), false); // negative entries, cached
    assert.deepEqual(fs.readdirSync(m.p('burst')), []);
    for (let i = 0; i < count; i++) await other.mknod(dir.ino, Buffer.from(`f${i}`), { mode: S_IFREG | 0o644, uid: 0, gid: 0 }, nowSpec());
    await seenWithin(
      t,
      `${count} new names`,
      () => fs.readdirSync(m.p('burst')).length === count && Array.from({ length: Math.ceil(count / 7) }, (_, k) => k * 7).every((i) => exists(m.p('burst', `f${i}`))),
      () => fs.readdirSync(m.p('burst')).length,
    );
  });

  it('a directory made elsewhere lists and takes files', async (t) => {
    assert.equal(exists(m.p('sub')), false);
    await other.mknod(ROOT_INO, Buffer.from('sub'), { mode: S_IFDIR | 0o755, uid: 0, gid: 0 }, nowSpec());
    await seenWithin(t, 'a new directory', () => exists(m.p('sub')), () => fs.readdirSync(m.mnt));
    fs.writeFileSync(m.p('sub', 'here'), 'written through the mount');
    const sub = await other.lookup(ROOT_INO, Buffer.from('sub'));
    assert.deepEqual((await other.readdir(sub.ino)).entries.map((e) => e.name.toString()), ['here']);
  });
});

describe('two daemons on one PostgreSQL volume follow each other', () => {
  const url = server.createDatabase();
  const dir = tempDir('pogfs-feed-two-', () => {
    for (const mnt of [mb, ma]) if (isMounted(mnt)) pogfs(['umount', mnt]);
  });
  const ma = join(dir, 'ma');
  const mb = join(dir, 'mb');
  for (const d of [ma, mb]) fs.mkdirSync(d);

  before(() => {
    pogfsOk(['init', join(dir, 'vol'), '--meta', url, '--remote', `local:${join(dir, 'remote')}`]);
    pogfsOk(['mount', join(dir, 'vol'), ma]);
    pogfsOk(['mount', url, mb, '--cache-dir', join(dir, 'cache-b')]);
  });

  after(() => {
    for (const mnt of [mb, ma]) if (isMounted(mnt)) pogfsOk(['umount', mnt]);
  });

  it('a rename on A shows on B within a second; a file rewritten and closed on A reads new on B', async (t) => {
    fs.writeFileSync(join(ma, 'doc.txt'), 'first version\n');
    // B's caches warm: the name, the missing new name, the listing, the pages.
    assert.equal(fs.readFileSync(join(mb, 'doc.txt'), 'utf8'), 'first version\n');
    assert.equal(exists(join(mb, 'renamed.txt')), false);
    assert.deepEqual(fs.readdirSync(mb), ['doc.txt']);
    fs.renameSync(join(ma, 'doc.txt'), join(ma, 'renamed.txt'));
    await seenWithin(t, "A's rename on B", () => !exists(join(mb, 'doc.txt')) && exists(join(mb, 'renamed.txt')), () => fs.readdirSync(mb));
    assert.deepEqual(fs.readdirSync(mb), ['renamed.txt']);

    assert.equal(fs.readFileSync(join(mb, 'renamed.txt'), 'utf8'), 'first version\n');
    fs.writeFileSync(join(ma, 'renamed.txt'), 'the second, longer version\n');
    await seenWithin(t, "A's new content on B", () => fs.readFileSync(join(mb, 'renamed.txt'), 'utf8') === 'the second, longer version\n', () => fs.readFileSync(join(mb, 'renamed.txt'), 'utf8'));
    // And the other way.
    fs.unlinkSync(join(mb, 'renamed.txt'));
    await seenWithin(t, "B's unlink on A", () => !exists(join(ma, 'renamed.txt')), () => fs.readdirSync(ma));
  });
});
