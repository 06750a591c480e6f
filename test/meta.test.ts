import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { MetaDb, MetadataError } from '../src/meta/meta-db';
import { FORMAT_VERSION, SCHEMA_VERSION } from '../src/meta/schema';
import { tempDir } from './support/tmp';

const root = {
  mode: 0o040755,
  uid: 0,
  gid: 0,
  nlink: 2,
  size: 0,
  rdev: 0,
  atime_s: 1,
  atime_ns: 2,
  mtime_s: 3,
  mtime_ns: 4,
  ctime_s: 5,
  ctime_ns: 999999999,
  stored_bytes: 0,
};

function freshDb(): { path: string; meta: MetaDb } {
  const path = join(tempDir(), 'meta.db');
  return { path, meta: MetaDb.create(path, { blockSize: 131072, hashAlgorithm: 'blake3', root }) };
}

describe('MetaDb', () => {
  it('creates a superblock, a root inode and the current schema version', () => {
    const { path, meta } = freshDb();
    const sb = meta.superblock();
    assert.equal(sb.magic, 'pogfs-volume');
    assert.equal(sb.format_version, FORMAT_VERSION);
    assert.equal(sb.block_size, 131072);
    assert.equal(sb.hash_algorithm, 'blake3');
    assert.equal(meta.schemaVersion(), SCHEMA_VERSION);
    assert.deepEqual(meta.getInode(1), { ino: 1, ...root });
    meta.close();
    const db = new Database(path, { readonly: true });
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    db.close();
    const again = MetaDb.open(path);
    assert.equal(again.getInode(1)?.ctime_ns, 999999999);
    again.close();
  });

  it('stores names as bytes, unique per directory', () => {
    const { meta } = freshDb();
    const ino = meta.insertInode({ ...root, mode: 0o100644, nlink: 1 });
    const odd = Buffer.from([0x66, 0xff, 0xfe, 0x0a, 0x01]);
    meta.addEntry(1, odd, ino);
    assert.equal(meta.lookup(1, odd), ino);
    assert.equal(meta.lookup(1, Buffer.from([0x66, 0xff, 0xfe, 0x0a])), undefined);
    assert.throws(() => meta.addEntry(1, odd, ino), /UNIQUE/);
    assert.ok(meta.listDir(1)[0].name.equals(odd));
    meta.close();
  });

  it('deleting an inode returns the hashes its blocks referenced', () => {
    const { meta } = freshDb();
    const ino = meta.insertInode({ ...root, mode: 0o100644, nlink: 0 });
    meta.setBlock(ino, 0, Buffer.alloc(32, 1), 100);
    meta.setBlock(ino, 7, Buffer.alloc(32, 2), 100);
    meta.setXattr(ino, Buffer.from('user.a'), Buffer.from('v'));
    assert.deepEqual(meta.unlinkedInodes(), [ino]);
    const hashes = meta.deleteInode(ino);
    assert.deepEqual(hashes.map((h) => h[0]).sort(), [1, 2]);
    assert.equal(meta.getInode(ino), undefined);
    assert.deepEqual(meta.listXattrs(ino), []);
    meta.close();
  });

  it('refuses a database that is not a pogfs volume', () => {
    const path = join(tempDir(), 'foreign.db');
    const db = new Database(path);
    db.exec('CREATE TABLE t (x)');
    db.close();
    assert.throws(() => MetaDb.open(path), MetadataError);
  });

  it('refuses a volume of a newer format or schema', () => {
    const { path, meta } = freshDb();
    meta.close();
    const edit = new Database(path);
    edit.prepare('UPDATE superblock SET format_version = ?').run(FORMAT_VERSION + 1);
    edit.close();
    assert.throws(() => MetaDb.open(path), /newer than this pogfs understands/);
    const db = new Database(path);
    db.prepare('UPDATE superblock SET format_version = ?').run(FORMAT_VERSION);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    assert.throws(() => MetaDb.open(path), /schema version .* newer/);
  });

  it('refuses a missing database file instead of creating one', () => {
    assert.throws(() => MetaDb.open(join(tempDir(), 'nothing.db')), MetadataError);
  });

  it('syncs the log off the thread: the open group is committed, and a sync in flight outlives close', async () => {
    const { path, meta } = freshDb();
    meta.groupCommitMs = 60_000;
    meta.transaction(() => meta.updateInode({ ino: 1, ...root, mtime_s: 77 }));
    const other = new Database(path, { readonly: true });
    const mtime = () => (other.prepare('SELECT mtime_s FROM inodes WHERE ino = 1').get() as { mtime_s: number }).mtime_s;
    assert.equal(mtime(), 3, 'the group is still open');
    await meta.syncLog();
    assert.equal(mtime(), 77, 'committed by the sync');
    meta.transaction(() => meta.updateInode({ ino: 1, ...root, mtime_s: 78 }));
    const inFlight = meta.syncLog();
    meta.close();
    await inFlight;
    other.close();
    const again = MetaDb.open(path);
    assert.equal(again.getInode(1)?.mtime_s, 78);
    again.close();
  });
});
