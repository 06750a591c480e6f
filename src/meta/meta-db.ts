import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import { promisify } from 'node:util';
import type { MetaRepair, MetaScan, MetaSnapshot } from './engine';
import { FsError } from '../posix/errors';
import { ROOT_INO, S_IFDIR, S_IFMT, S_IFREG } from '../posix/file-system';
import { ParkedBlocks, type ParkedRow } from './parked-blocks';
import { RemoteIndex } from './remote-index';
import { FORMAT_VERSION, VOLUME_MAGIC, migrate } from './schema';
import { snapshotDatabase } from './snapshot';
import { SqliteEngine } from './sqlite-engine';
import { SqliteClone } from './tree-clone';

export interface Superblock {
  magic: string;
  format_version: number;
  block_size: number;
  hash_algorithm: string;
  uuid: string;
  created_ns: bigint | number;
}

/** One inode row. Times are (seconds, nanoseconds) pairs so nanoseconds survive JS numbers. */
export interface InodeRow {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  size: number;
  rdev: number;
  atime_s: number;
  atime_ns: number;
  mtime_s: number;
  mtime_ns: number;
  ctime_s: number;
  ctime_ns: number;
  stored_bytes: number;
}

export type NewInode = Omit<InodeRow, 'ino'>;

/** An inode row's columns in InodeRow's order, for statements that read rows as arrays. */
export const INODE_COLUMNS = 'ino, mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes';

/**
 * The InodeRow of a row read as an array (from `at`): better-sqlite3 makes an array
 * and this object faster than it makes a row object (about 2 us against 3.4 per row),
 * and inode rows are read on every lookup and getattr.
 */
export function inodeFromRaw(r: readonly unknown[], at = 0): InodeRow {
  return {
    ino: r[at] as number,
    mode: r[at + 1] as number,
    uid: r[at + 2] as number,
    gid: r[at + 3] as number,
    nlink: r[at + 4] as number,
    size: r[at + 5] as number,
    rdev: r[at + 6] as number,
    atime_s: r[at + 7] as number,
    atime_ns: r[at + 8] as number,
    mtime_s: r[at + 9] as number,
    mtime_ns: r[at + 10] as number,
    ctime_s: r[at + 11] as number,
    ctime_ns: r[at + 12] as number,
    stored_bytes: r[at + 13] as number,
  };
}

/** A fresh inode row: all three times set to `t`, nothing stored yet. */
export function newInode(
  f: { mode: number; uid: number; gid: number; nlink: number; size?: number; rdev?: number },
  t: { s: number; ns: number },
): NewInode {
  return {
    mode: f.mode,
    uid: f.uid,
    gid: f.gid,
    nlink: f.nlink,
    size: f.size ?? 0,
    rdev: f.rdev ?? 0,
    atime_s: t.s,
    atime_ns: t.ns,
    mtime_s: t.s,
    mtime_ns: t.ns,
    ctime_s: t.s,
    ctime_ns: t.ns,
    stored_bytes: 0,
  };
}

export interface DirRow {
  name: Buffer;
  ino: number;
  mode: number;
}

export interface BlockRow {
  idx: number;
  hash: Buffer;
  len: number;
}

/** An inode without its times and owner: what whole-volume checks need. */
export interface InodeSummary {
  ino: number;
  mode: number;
  nlink: number;
  size: number;
  stored_bytes: number;
}

/** One directory entry. */
export interface EntryRow {
  parent: number;
  name: Buffer;
  ino: number;
}

export interface VolumeTotals {
  files: number;
  directories: number;
  inodes: number;
  logicalBytes: number;
  blockRefs: number;
}

export class MetadataError extends Error {}

// The file-type tests as SQL over an inode's mode column `m` (constants, not magic numbers).
export const sqlIsReg = (m: string): string => `(${m} & ${S_IFMT}) = ${S_IFREG}`;
export const sqlIsDir = (m: string): string => `(${m} & ${S_IFMT}) = ${S_IFDIR}`;

/** A group commit closes after this many changes even before its interval is up. */
const GROUP_COMMIT_MAX_CHANGES = 5000;

const fdatasync = promisify(fs.fdatasync);

/**
 * The volume's metadata in SQLite (WAL). Owns the schema and every statement; callers
 * group calls with `transaction`. Commits are not synced by default (like a journalling
 * filesystem's metadata); `durableTransaction` and `barrier` force the WAL to disk, which
 * also makes every earlier commit durable.
 *
 * The POSIX-level operations are its `engine` (the MetaEngine of this database); the
 * whole-volume scans (MetaScan), fsck's repairs (MetaRepair) and the backup snapshot
 * (MetaSnapshot) are here. The
 * SQLite handle never leaves src/meta.
 */
export class MetaDb implements MetaScan, MetaRepair, MetaSnapshot {
  private readonly db: Database.Database;
  private readonly s;
  /** Runs a function atomically: made once, as wrapping a function per call costs more than the statements it runs. */
  private readonly atomic: Database.Transaction<(fn: () => unknown) => unknown>;
  private sqliteEngine: SqliteEngine | undefined;
  /** Group commit interval in ms; 0 commits every transaction on its own. */
  groupCommitMs = 0;
  private groupTimer: NodeJS.Timeout | undefined;
  private groupChanges = 0;
  private remoteIndex: RemoteIndex | undefined;
  private sqliteClone: SqliteClone | undefined;
  /** Blocks of files just closed, until the block store has them (see MetaBlockParking). */
  readonly parked: ParkedBlocks;
  /** The write-ahead log, opened for `syncLog` (undefined until it exists). */
  private logFd: number | undefined;
  /** Syncs of the log in flight: its descriptor is closed only after them. */
  private logSyncs = 0;

  private constructor(
    readonly path: string,
    options: { create: boolean; readOnly: boolean },
  ) {
    this.db = new Database(path, { fileMustExist: !options.create, readonly: options.readOnly });
    if (!options.readOnly) {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
    }
    this.db.pragma('foreign_keys = OFF');
    this.db.pragma('cache_size = -65536');
    if (!options.readOnly) migrate(this.db);
    const db = this.db;
    this.atomic = db.transaction((fn: () => unknown) => fn());
    this.parked = new ParkedBlocks(db);
    this.s = {
      // `*`: a read-only open does not migrate, so an older volume may lack later columns.
      superblock: db.prepare('SELECT * FROM superblock WHERE id = 1'),
      barrier: db.prepare('UPDATE superblock SET barrier = barrier + 1 WHERE id = 1'),
      getInode: db.prepare(`SELECT ${INODE_COLUMNS} FROM inodes WHERE ino = ?`).raw(),
      insertInode: db.prepare(
        `INSERT INTO inodes (mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
         VALUES (@mode, @uid, @gid, @nlink, @size, @rdev, @atime_s, @atime_ns, @mtime_s, @mtime_ns, @ctime_s, @ctime_ns, @stored_bytes)`,
      ),
      insertInodeWithIno: db.prepare(
        `INSERT INTO inodes (ino, mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
         VALUES (@ino, @mode, @uid, @gid, @nlink, @size, @rdev, @atime_s, @atime_ns, @mtime_s, @mtime_ns, @ctime_s, @ctime_ns, @stored_bytes)`,
      ),
      // Positional parameters: binding 14 named ones from an object costs several times more,
      // and this runs for every attribute change.
      updateInode: db.prepare(
        `UPDATE inodes SET mode=?, uid=?, gid=?, nlink=?, size=?, rdev=?,
         atime_s=?, atime_ns=?, mtime_s=?, mtime_ns=?, ctime_s=?, ctime_ns=?, stored_bytes=? WHERE ino=?`,
      ),
      deleteInode: db.prepare('DELETE FROM inodes WHERE ino = ?'),
      deleteSymlink: db.prepare('DELETE FROM symlinks WHERE ino = ?'),
      deleteXattrs: db.prepare('DELETE FROM xattrs WHERE ino = ?'),
      unlinkedInodes: db.prepare('SELECT ino FROM inodes WHERE nlink = 0'),
      lookup: db.prepare('SELECT ino FROM dentries WHERE parent = ? AND name = ?').pluck(),
      insertDentry: db.prepare('INSERT INTO dentries (parent, name, ino) VALUES (?, ?, ?)'),
      deleteDentry: db.prepare('DELETE FROM dentries WHERE parent = ? AND name = ?'),
      setDentryIno: db.prepare('UPDATE dentries SET ino = ? WHERE parent = ? AND name = ?'),
      hasChildren: db.prepare('SELECT 1 FROM dentries WHERE parent = ? LIMIT 1').pluck(),
      listDir: db.prepare(
        'SELECT d.name AS name, d.ino AS ino, i.mode AS mode FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? ORDER BY d.name',
      ),
      parentOf: db.prepare('SELECT parent FROM dentries WHERE ino = ? LIMIT 1').pluck(),
      getSymlink: db.prepare('SELECT target FROM symlinks WHERE ino = ?').pluck(),
      setSymlink: db.prepare('INSERT OR REPLACE INTO symlinks (ino, target) VALUES (?, ?)'),
      getXattr: db.prepare('SELECT value FROM xattrs WHERE ino = ? AND name = ?').pluck(),
      setXattr: db.prepare('INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)'),
      listXattrs: db.prepare('SELECT name FROM xattrs WHERE ino = ? ORDER BY name').pluck(),
      removeXattr: db.prepare('DELETE FROM xattrs WHERE ino = ? AND name = ?'),
      anySecurityXattr: db.prepare("SELECT 1 FROM xattrs WHERE substr(name, 1, 9) = CAST('security.' AS BLOB) LIMIT 1").pluck(),
      listBlocks: db.prepare('SELECT idx, hash, len FROM blocks WHERE ino = ? ORDER BY idx'),
      upsertBlock: db.prepare('INSERT OR REPLACE INTO blocks (ino, idx, hash, len) VALUES (?, ?, ?, ?)'),
      deleteBlock: db.prepare('DELETE FROM blocks WHERE ino = ? AND idx = ?'),
      deleteAllBlocks: db.prepare('DELETE FROM blocks WHERE ino = ? RETURNING hash'),
      changes: db.prepare('SELECT total_changes()').pluck(),
      referencedBytes: db.prepare('SELECT coalesce(sum(len), 0) FROM blocks').pluck(),
      uniqueBlocks: db.prepare('SELECT count(*) AS n, coalesce(sum(len), 0) AS bytes FROM (SELECT hash, max(len) AS len FROM blocks GROUP BY hash)'),
      namesOf: db.prepare('SELECT name FROM dentries WHERE parent = ? AND ino = ? ORDER BY name').pluck(),
      totals: db.prepare(
        `SELECT
           (SELECT count(*) FROM inodes WHERE ${sqlIsReg('mode')}) AS files,
           (SELECT count(*) FROM inodes WHERE ${sqlIsDir('mode')}) AS directories,
           (SELECT count(*) FROM inodes) AS inodes,
           (SELECT coalesce(sum(size), 0) FROM inodes WHERE ${sqlIsReg('mode')}) AS logicalBytes,
           (SELECT count(*) FROM blocks) AS blockRefs`,
      ),
    };
  }

  /** Opens an existing volume database, bringing its schema forward if it is older. */
  static open(path: string, options: { readOnly?: boolean } = {}): MetaDb {
    let meta: MetaDb;
    try {
      meta = new MetaDb(path, { create: false, readOnly: options.readOnly ?? false });
    } catch (err) {
      throw new MetadataError(`cannot open metadata database ${path}: ${(err as Error).message}`);
    }
    meta.checkSuperblock();
    return meta;
  }

  /** Creates a new volume database with its superblock and root directory. */
  static create(path: string, init: { blockSize: number; hashAlgorithm: string; settings?: Record<string, string>; root: NewInode }): MetaDb {
    const meta = new MetaDb(path, { create: true, readOnly: false });
    meta.db.transaction(() => {
      meta.db
        .prepare('INSERT INTO superblock (id, magic, format_version, block_size, hash_algorithm, uuid, created_ns) VALUES (1, ?, ?, ?, ?, ?, ?)')
        .run(VOLUME_MAGIC, FORMAT_VERSION, init.blockSize, init.hashAlgorithm, randomUUID(), BigInt(Date.now()) * 1000000n);
      for (const [key, value] of Object.entries(init.settings ?? {})) meta.db.prepare('INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)').run(key, value);
      meta.s.insertInodeWithIno.run({ ino: ROOT_INO, ...init.root });
    })();
    meta.barrier();
    return meta;
  }

  /** The POSIX-level operations on this database (one engine per connection). */
  get engine(): SqliteEngine {
    this.sqliteEngine ??= new SqliteEngine(this.db, this);
    return this.sqliteEngine;
  }

  /** Packs, block locations, pins and volume state (schema 4 on). */
  get remote(): RemoteIndex {
    this.remoteIndex ??= new RemoteIndex(this.db);
    return this.remoteIndex;
  }

  /** Clones and snapshots (schema 5 on). */
  get clone(): SqliteClone {
    this.sqliteClone ??= new SqliteClone(this.db, this);
    return this.sqliteClone;
  }

  superblock(): Superblock {
    let row: Superblock | undefined;
    try {
      row = this.s.superblock.get() as Superblock | undefined;
    } catch {
      row = undefined;
    }
    if (!row) throw new MetadataError('the metadata database has no superblock: not a pogfs volume');
    return {
      magic: row.magic,
      format_version: row.format_version,
      block_size: row.block_size,
      hash_algorithm: row.hash_algorithm,
      uuid: row.uuid,
      created_ns: row.created_ns,
    };
  }

  /**
   * The volume's settings as stored (key → value text; absent keys take their defaults).
   * A read-only open does not migrate, so an older schema is read where it kept them.
   */
  settings(): Record<string, string> {
    const out: Record<string, string> = {};
    const version = this.schemaVersion();
    if (version >= 3) {
      for (const r of this.db.prepare('SELECT key, value FROM settings').all() as { key: string; value: string }[]) out[r.key] = r.value;
    } else {
      const row = this.db.prepare('SELECT * FROM superblock WHERE id = 1').get() as { compression?: string } | undefined;
      out.compression = row?.compression ?? 'none';
      out.superchunks = 'off';
    }
    return out;
  }

  /** Stores settings (durable on return). */
  setSettings(values: Record<string, string>): void {
    this.db.transaction(() => {
      for (const [key, value] of Object.entries(values)) this.db.prepare('INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)').run(key, value);
    })();
    this.barrier();
  }

  private checkSuperblock(): void {
    const sb = this.superblock();
    if (sb.magic !== VOLUME_MAGIC) throw new MetadataError(`not a pogfs volume (magic ${JSON.stringify(sb.magic)})`);
    if (sb.format_version > FORMAT_VERSION) {
      throw new MetadataError(
        `the volume has format version ${sb.format_version}, newer than this pogfs understands (${FORMAT_VERSION}); upgrade pogfs`,
      );
    }
  }

  /**
   * Runs `fn` atomically. With group commit on, it runs as a savepoint inside a
   * transaction that stays open for up to `groupCommitMs` (like a journalling
   * filesystem's commit interval): thousands of small metadata changes then cost one
   * commit instead of one each. Durability points (`durableTransaction`, `barrier`)
   * commit the group at once.
   */
  transaction<T>(fn: () => T): T {
    if (this.groupCommitMs <= 0) return this.atomic(fn) as T;
    if (!this.db.inTransaction) {
      // IMMEDIATE: the group writes anyway, and taking the write lock up front keeps
      // another connection from slipping a write between a read and a write of it.
      this.db.exec('BEGIN IMMEDIATE');
      this.groupTimer = setTimeout(() => this.commitGroup(), this.groupCommitMs);
      this.groupTimer.unref();
    }
    const result = this.atomic(fn) as T;
    if (++this.groupChanges >= GROUP_COMMIT_MAX_CHANGES) this.commitGroup();
    return result;
  }

  /**
   * `transaction` for a read-then-write operation: on its own (no group open) it begins
   * IMMEDIATE, taking the write lock before its first read, so another connection's
   * operation cannot change what it read before it writes.
   */
  writeTransaction<T>(fn: () => T): T {
    if (this.groupCommitMs <= 0) return this.atomic.immediate(fn) as T;
    return this.transaction(fn);
  }

  /** Commits the open group, if any (not synced unless `synchronous` says so). */
  commitGroup(): void {
    if (this.groupTimer) clearTimeout(this.groupTimer);
    this.groupTimer = undefined;
    this.groupChanges = 0;
    if (this.db.inTransaction) this.db.exec('COMMIT');
  }

  /** Runs `fn` in a transaction whose commit is forced to disk (and with it every earlier commit). */
  durableTransaction<T>(fn: () => T): T {
    const result = this.transaction(fn);
    this.barrier();
    return result;
  }

  /**
   * Stops SQLite's automatic checkpoints (every 1,000 pages of log, on the committing
   * thread, each with two fsyncs): a mounted volume commits at every close, and those
   * would land on the thread serving FUSE many times a second. `checkpoint()` at sync
   * points moves the log into the database instead.
   */
  checkpointAtSyncPoints(): void {
    this.db.pragma('wal_autocheckpoint = 0');
    // A log that grew large between two sync points is cut back once it starts over.
    this.db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
  }

  /**
   * Copies the write-ahead log into the database as far as no reader holds it back
   * (PASSIVE), so the log starts over instead of growing; called after a barrier.
   */
  checkpoint(): void {
    this.commitGroup();
    this.db.pragma('wal_checkpoint(PASSIVE)');
  }

  /**
   * Makes every change so far durable: commits the open group, then commits one small
   * write with synchronous=FULL, whose fsync of the WAL covers every earlier frame too.
   * (SQLite refuses to change the safety level inside a transaction, hence two steps.)
   */
  barrier(): void {
    this.commitGroup();
    this.db.pragma('synchronous = FULL');
    try {
      this.s.barrier.run();
    } finally {
      this.db.pragma('synchronous = NORMAL');
    }
  }

  /**
   * `barrier` without holding the calling thread while the disk writes: commits the
   * open group (handing it to the OS), then syncs the write-ahead log file on libuv's
   * thread pool, so FUSE requests go on being served meanwhile. That is the sync a
   * synchronous commit makes: it covers every frame written before it, and recovery
   * keeps the log's longest valid prefix. The log only starts over after a checkpoint
   * has synced the database, so no frame it overwrites was needed.
   */
  async syncLog(): Promise<void> {
    this.commitGroup();
    const fd = this.logFile();
    if (fd === undefined) return this.barrier();
    this.logSyncs++;
    try {
      await fdatasync(fd);
    } catch (err) {
      // What fsync(2) on the volume then answers: the sync's own errno (ENOSPC, EIO).
      const errno = (err as NodeJS.ErrnoException).errno;
      throw typeof errno === 'number' && errno < 0 ? new FsError(-errno, `syncing the metadata log failed: ${String(err)}`) : err;
    } finally {
      if (--this.logSyncs === 0 && !this.db.open) fs.closeSync(fd);
    }
  }

  private logFile(): number | undefined {
    if (this.logFd === undefined) {
      try {
        // Read-only is enough: Linux syncs a file through any descriptor of it.
        this.logFd = fs.openSync(`${this.path}-wal`, 'r');
      } catch {
        return undefined; // no log yet (nothing written since it was last removed)
      }
    }
    return this.logFd;
  }

  getInode(ino: number): InodeRow | undefined {
    const r = this.s.getInode.get(ino) as unknown[] | undefined;
    return r && inodeFromRaw(r);
  }

  insertInode(row: NewInode): number {
    return Number(this.s.insertInode.run(row).lastInsertRowid);
  }

  updateInode(r: InodeRow): void {
    this.s.updateInode.run(
      r.mode, r.uid, r.gid, r.nlink, r.size, r.rdev,
      r.atime_s, r.atime_ns, r.mtime_s, r.mtime_ns, r.ctime_s, r.ctime_ns, r.stored_bytes, r.ino,
    );
  }

  /** Deletes an inode and everything it owns; returns the block hashes it referenced. */
  deleteInode(ino: number): Buffer[] {
    const hashes = (this.s.deleteAllBlocks.all(ino) as { hash: Buffer }[]).map((r) => r.hash);
    this.s.deleteSymlink.run(ino);
    this.s.deleteXattrs.run(ino);
    this.s.deleteInode.run(ino);
    return hashes;
  }

  unlinkedInodes(): number[] {
    return (this.s.unlinkedInodes.all() as { ino: number }[]).map((r) => r.ino);
  }

  lookup(parent: number, name: Buffer): number | undefined {
    return this.s.lookup.get(parent, name) as number | undefined;
  }

  addEntry(parent: number, name: Buffer, ino: number): void {
    this.s.insertDentry.run(parent, name, ino);
  }

  removeEntry(parent: number, name: Buffer): void {
    this.s.deleteDentry.run(parent, name);
  }

  /** Points an existing entry at another inode (rename over an existing name). */
  retargetEntry(parent: number, name: Buffer, ino: number): void {
    this.s.setDentryIno.run(ino, parent, name);
  }

  hasChildren(dir: number): boolean {
    return this.s.hasChildren.get(dir) !== undefined;
  }

  listDir(dir: number): DirRow[] {
    return this.s.listDir.all(dir) as DirRow[];
  }

  /** A parent of `ino` (for directories, the only one). */
  parentOf(ino: number): number | undefined {
    return this.s.parentOf.get(ino) as number | undefined;
  }

  symlinkTarget(ino: number): Buffer | undefined {
    return this.s.getSymlink.get(ino) as Buffer | undefined;
  }

  setSymlinkTarget(ino: number, target: Buffer): void {
    this.s.setSymlink.run(ino, target);
  }

  getXattr(ino: number, name: Buffer): Buffer | undefined {
    return this.s.getXattr.get(ino, name) as Buffer | undefined;
  }

  setXattr(ino: number, name: Buffer, value: Buffer): void {
    this.s.setXattr.run(ino, name, value);
  }

  listXattrs(ino: number): Buffer[] {
    return this.s.listXattrs.all(ino) as Buffer[];
  }

  removeXattr(ino: number, name: Buffer): boolean {
    return this.s.removeXattr.run(ino, name).changes > 0;
  }

  anySecurityXattr(): boolean {
    return this.s.anySecurityXattr.get() !== undefined;
  }

  listBlocks(ino: number): BlockRow[] {
    return this.s.listBlocks.all(ino) as BlockRow[];
  }

  setBlock(ino: number, idx: number, hash: Buffer, len: number): void {
    this.s.upsertBlock.run(ino, idx, hash, len);
  }

  deleteBlock(ino: number, idx: number): void {
    this.s.deleteBlock.run(ino, idx);
  }

  totals(): VolumeTotals {
    return this.s.totals.get() as VolumeTotals;
  }

  // ---- Whole-volume scans and direct repairs, for fsck and gc on an unmounted volume. ----

  /** PRAGMA user_version: how many schema migrations this database has had. */
  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  /** SQLite's own structural check: an empty list when the database file is sound. */
  quickCheck(): string[] {
    const rows = this.db.pragma('quick_check') as { quick_check: string }[];
    const problems = rows.map((r) => r.quick_check).filter((m) => m !== 'ok');
    return problems;
  }

  /** Every inode, in inode order, without the times. */
  allInodes(): IterableIterator<InodeSummary> {
    return this.db.prepare('SELECT ino, mode, nlink, size, stored_bytes FROM inodes ORDER BY ino').iterate() as IterableIterator<InodeSummary>;
  }

  /** Every directory entry, ordered by (parent, name). */
  allEntries(): IterableIterator<EntryRow> {
    return this.db.prepare('SELECT parent, name, ino FROM dentries ORDER BY parent, name').iterate() as IterableIterator<EntryRow>;
  }

  /** The entries naming `ino` (its links), ordered by (parent, name). */
  entriesOf(ino: number): { parent: number; name: Buffer }[] {
    return this.db.prepare('SELECT parent, name FROM dentries WHERE ino = ? ORDER BY parent, name').all(ino) as { parent: number; name: Buffer }[];
  }

  /** Block rows per digest, over every row in the index (one pass over the hash index). */
  blockRowCounts(): IterableIterator<{ hash: Buffer; n: number }> {
    return this.db.prepare('SELECT hash, count(*) AS n FROM blocks GROUP BY hash').iterate() as IterableIterator<{ hash: Buffer; n: number }>;
  }

  /** The rows that reference `hash`. */
  blockRowsOf(hash: Buffer): { ino: number; idx: number; len: number }[] {
    return this.db.prepare('SELECT ino, idx, len FROM blocks WHERE hash = ? ORDER BY ino, idx').all(hash) as { ino: number; idx: number; len: number }[];
  }

  /** The names in `parent` that name `ino`, in name order. */
  namesOf(parent: number, ino: number): Buffer[] {
    return this.s.namesOf.all(parent, ino) as Buffer[];
  }

  /** Bytes the block rows reference (a block shared by N rows counts N times). */
  referencedBytes(): number {
    return this.s.referencedBytes.get() as number;
  }

  /** Distinct blocks the rows reference, and their bytes. */
  uniqueBlocks(): { n: number; bytes: number } {
    return this.s.uniqueBlocks.get() as { n: number; bytes: number };
  }

  /**
   * Block rows that lie (partly) past their file's size, and rows of inodes that are not
   * regular files (which hold no blocks).
   */
  blockRowsPastSize(blockSize: number): { ino: number; idx: number; hash: Buffer; len: number; size: number; mode: number }[] {
    return this.db
      .prepare(
        `SELECT b.ino AS ino, b.idx AS idx, b.hash AS hash, b.len AS len, i.size AS size, i.mode AS mode
           FROM blocks b JOIN inodes i ON i.ino = b.ino
          WHERE NOT ${sqlIsReg('i.mode')} OR b.idx * ? >= i.size OR b.idx * ? + b.len > i.size
          ORDER BY b.ino, b.idx`,
      )
      .all(blockSize, blockSize) as { ino: number; idx: number; hash: Buffer; len: number; size: number; mode: number }[];
  }

  /** Regular files whose stored_bytes disagrees with the lengths of their block rows. */
  storedBytesMismatches(): { ino: number; stored: number; actual: number }[] {
    return this.db
      .prepare(
        `SELECT i.ino AS ino, i.stored_bytes AS stored, coalesce(s.n, 0) AS actual
           FROM inodes i LEFT JOIN (SELECT ino, sum(len) AS n FROM blocks GROUP BY ino) s ON s.ino = i.ino
          WHERE ${sqlIsReg('i.mode')} AND i.stored_bytes != coalesce(s.n, 0)`,
      )
      .all() as { ino: number; stored: number; actual: number }[];
  }

  /** Inode numbers that own block, symlink or xattr rows but have no inode row. */
  strayRowOwners(): { ino: number; blocks: number; symlinks: number; xattrs: number }[] {
    return this.db
      .prepare(
        `SELECT ino, sum(kb) AS blocks, sum(ks) AS symlinks, sum(kx) AS xattrs FROM (
           SELECT ino, count(*) AS kb, 0 AS ks, 0 AS kx FROM blocks WHERE ino NOT IN (SELECT ino FROM inodes) GROUP BY ino
           UNION ALL SELECT ino, 0, 1, 0 FROM symlinks WHERE ino NOT IN (SELECT ino FROM inodes)
           UNION ALL SELECT ino, 0, 0, count(*) FROM xattrs WHERE ino NOT IN (SELECT ino FROM inodes) GROUP BY ino
         ) GROUP BY ino ORDER BY ino`,
      )
      .all() as { ino: number; blocks: number; symlinks: number; xattrs: number }[];
  }

  /** How many entries name each inode (inodes named by none are absent). */
  linkCounts(): Map<number, number> {
    const rows = this.db.prepare('SELECT ino, count(*) AS n FROM dentries GROUP BY ino').raw().all() as [number, number][];
    return new Map(rows);
  }

  /** How many entries of each directory name a directory (directories with none are absent). */
  subdirCounts(): Map<number, number> {
    const rows = this.db
      .prepare(`SELECT d.parent, count(*) FROM dentries d JOIN inodes c ON c.ino = d.ino WHERE ${sqlIsDir('c.mode')} GROUP BY d.parent`)
      .raw()
      .all() as [number, number][];
    return new Map(rows);
  }

  /** Inserts an inode under a given number (fsck recreating the root directory). */
  insertInodeWithIno(row: InodeRow): void {
    this.s.insertInodeWithIno.run(row);
  }

  setNlink(ino: number, nlink: number): void {
    this.db.prepare('UPDATE inodes SET nlink = ? WHERE ino = ?').run(nlink, ino);
  }

  setStoredBytes(ino: number, storedBytes: number): void {
    this.db.prepare('UPDATE inodes SET stored_bytes = ? WHERE ino = ?').run(storedBytes, ino);
  }

  // ---- metadata backups (MetaSnapshot) ----

  /** SQLite's count of rows this connection changed since it opened. */
  parkedBlocksAfter(seq: number): ParkedRow[] {
    return this.parked.after(seq);
  }

  changeCount(): number {
    return this.s.changes.get() as number;
  }

  /** A consistent, compressed copy of the committed database, made by a connection of its own in a worker. */
  snapshot(): Promise<{ data: Buffer; rawBytes: number }> {
    return snapshotDatabase(this.path);
  }


  close(): void {
    if (!this.db.open) return;
    this.commitGroup();
    if (this.logFd !== undefined && this.logSyncs === 0) fs.closeSync(this.logFd);
    this.logFd = undefined;
    this.db.close();
  }
}
