import type Database from 'better-sqlite3';

/** Written into the superblock; a volume of another magic is not a pogfs volume. */
export const VOLUME_MAGIC = 'pogfs-volume';
/** The on-disk format this program writes and understands (the superblock's format_version). */
export const FORMAT_VERSION = 1;

/**
 * Schema migrations, applied in order; PRAGMA user_version holds how many have run.
 * Append only: a released migration is never edited, so every older volume can be
 * brought forward one step at a time.
 */
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE superblock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    magic TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    hash_algorithm TEXT NOT NULL,
    uuid TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    -- bumped by durability barriers: a write that forces the WAL to disk
    barrier INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE inodes (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    rdev INTEGER NOT NULL DEFAULT 0,
    atime_s INTEGER NOT NULL, atime_ns INTEGER NOT NULL,
    mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    -- bytes held in stored (non-hole) blocks: what st_blocks reports
    stored_bytes INTEGER NOT NULL DEFAULT 0
  );
  CREATE INDEX inodes_unlinked ON inodes(nlink) WHERE nlink = 0;
  CREATE TABLE dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
  ) WITHOUT ROWID;
  CREATE INDEX dentries_ino ON dentries(ino);
  CREATE TABLE symlinks (
    ino INTEGER PRIMARY KEY,
    target BLOB NOT NULL
  );
  CREATE TABLE xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
  ) WITHOUT ROWID;
  CREATE TABLE blocks (
    ino INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY (ino, idx)
  ) WITHOUT ROWID;
  CREATE INDEX blocks_hash ON blocks(hash);
  `,
  // 2: the codec new blocks are written with ('lz4' or 'none'). Volumes made before this
  // keep writing raw blocks; `pogfs init` sets 'lz4' for new ones, `pogfs tune` changes it.
  `
  ALTER TABLE superblock ADD COLUMN compression TEXT NOT NULL DEFAULT 'none';
  `,
  // 3: volume settings as (key, value) rows, so a new setting needs no migration of its own.
  // The compression setting moves here; super-chunks stay off for volumes made before them.
  `
  CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;
  INSERT INTO settings (key, value) SELECT 'compression', compression FROM superblock WHERE id = 1;
  INSERT INTO settings (key, value) VALUES ('superchunks', 'off');
  ALTER TABLE superblock DROP COLUMN compression;
  `,
  // 4: the remote. Packs uploaded (name, the backend's id for it), where each block lives
  // in one (the byte range of the stored value holding it, and the block's place in that
  // value's decoded bytes), trees pinned to the local cache, and small state kept with the
  // metadata (backup generation numbers).
  `
  CREATE TABLE packs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    remote_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
  );
  CREATE TABLE pack_blocks (
    hash BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    value_offset INTEGER NOT NULL,
    value_length INTEGER NOT NULL,
    block_offset INTEGER NOT NULL,
    length INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX pack_blocks_pack ON pack_blocks(pack, value_offset);
  CREATE TABLE pins (
    ino INTEGER PRIMARY KEY
  );
  CREATE TABLE volume_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;
  `,
  // 5: blocks of files just closed, parked here in the transaction that commits their rows
  // until the block store has them durably (a NULL data: one more reference to a block the
  // store has). The sequence only grows (AUTOINCREMENT): the store records the last it took.
  `
  CREATE TABLE parked_blocks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL,
    data BLOB
  );
  `,
  // 6: clones and snapshots. A tree operation under way (a clone staged but not yet
  // named, a snapshot being removed) is a row of tree_ops naming the inode range it made
  // (clones take consecutive inode numbers), so a crash leaves something to finish
  // (src/vfs/tree-ops.ts). A snapshot is a read-only tree under the .snapshots directory
  // (its inode in volume_state), holding every inode of its range.
  `
  CREATE TABLE tree_ops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    first_ino INTEGER NOT NULL,
    last_ino INTEGER NOT NULL,
    created_ns INTEGER NOT NULL
  );
  CREATE TABLE snapshots (
    name BLOB PRIMARY KEY,
    root INTEGER NOT NULL,
    first_ino INTEGER NOT NULL,
    last_ino INTEGER NOT NULL,
    source TEXT NOT NULL,
    created_ns INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;
/** The schema version that brought clones and snapshots (tree_ops, snapshots). */
export const SNAPSHOTS_SCHEMA = 6;

export class SchemaTooNewError extends Error {}

/** Brings the schema up to SCHEMA_VERSION; refuses a database written by a newer pogfs. */
export function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    throw new SchemaTooNewError(
      `the volume's metadata has schema version ${current}, newer than this pogfs understands (${SCHEMA_VERSION}); upgrade pogfs`,
    );
  }
  for (let v = current; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
