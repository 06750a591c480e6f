import type { Pool, PoolClient, QueryResult } from 'pg';
import { attrUpdate } from './attr-update';
import type { AttrChange } from './engine';
import { INODE_COLUMNS, sqlIsDir, sqlIsReg, type NewInode } from './meta-db';

/** The PostgreSQL engine's statements (the only SQL it runs besides its schema, pg-schema.ts). */

/**
 * A record of inode `ino` held open by a live session: one whose heartbeat is within
 * `expiryMs` by the server's clock (an expired session's claims are dead, as its hold on
 * the volume is; a claim then deletes it with its records).
 */
function liveHolder(ino: string, expiryMs: string): string {
  return `SELECT 1 FROM session_opens o JOIN sessions s ON s.id = o.session_id
     WHERE o.ino = ${ino} AND s.heartbeat >= clock_timestamp() - ${expiryMs} * interval '1 millisecond' LIMIT 1`;
}

export const INODE_VALUES = '$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13';

/**
 * Every statement the engine runs, each prepared once per connection under its key (pg
 * names prepared statements; one name must always mean one text).
 */
export const SQL = {
  superblock: 'SELECT magic, format_version, block_size, hash_algorithm, uuid, created_ns FROM superblock WHERE id = 1',
  barrier: 'UPDATE superblock SET barrier = barrier + 1 WHERE id = 1',
  insertSuperblock: 'INSERT INTO superblock (id, magic, format_version, block_size, hash_algorithm, uuid, created_ns) VALUES (1, $1, $2, $3, $4, $5, $6)',
  setSetting: 'INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value',
  getInode: `SELECT ${INODE_COLUMNS} FROM inodes WHERE ino = $1`,
  // A miss says ENOENT or ENOTDIR by the parent's mode: one statement for a negative
  // lookup (before every create) and for a hit.
  lookupWithParent: `SELECT p.mode, ${INODE_COLUMNS.split(', ').map((c) => `i.${c}`).join(', ')}
      FROM inodes p LEFT JOIN dentries d ON d.parent = p.ino AND d.name = $1 LEFT JOIN inodes i ON i.ino = d.ino
     WHERE p.ino = $2`,
  lookupIno: 'SELECT ino FROM dentries WHERE parent = $1 AND name = $2',
  // Row locks in one order (by inode number) so that two operations never wait on each other in a cycle.
  lockInodes: `SELECT ${INODE_COLUMNS} FROM inodes WHERE ino = ANY($1::bigint[]) ORDER BY ino FOR UPDATE`,
  // The same, for directories $1 and the inodes names ($2 the directories, $3 the names)
  // name in them, found and locked in one statement (rows are locked in the sorted order).
  lockNamed: `SELECT ${INODE_COLUMNS} FROM inodes
     WHERE ino = ANY($1::bigint[])
        OR ino IN (SELECT d.ino FROM dentries d JOIN unnest($2::bigint[], $3::bytea[]) AS n(parent, name) ON d.parent = n.parent AND d.name = n.name)
     ORDER BY ino FOR UPDATE`,
  // What each name ($1 the directories, $2 the names) names, in the order given (null: nothing).
  lookupInos: `SELECT d.ino FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS n(parent, name, i)
       LEFT JOIN dentries d ON d.parent = n.parent AND d.name = n.name
     ORDER BY n.i`,
  // Cross-directory renames one at a time (Linux's s_vfs_rename_mutex): the ancestor check
  // of one cannot then be undone by another moving a directory meanwhile.
  renameLock: 'SELECT pg_advisory_xact_lock($1)',
  // A create after the parent's lock, in one round trip: the inode, its entry, a symlink's
  // target and the parent's link count and times, or nothing (no row back) when the name
  // is taken. $1 … $13 the inode, $14 the parent, $15 the name, $16 the target (or null),
  // $17 the parent's link count change, $18 and $19 the time, $20 the mount session that
  // holds the new file open (create(2) on a shared volume), or null.
  create: `WITH taken AS (SELECT 1 FROM dentries WHERE parent = $14 AND name = $15),
       ins AS (INSERT INTO inodes (mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
               SELECT ${INODE_VALUES.split(', ').map((v) => `${v}::bigint`).join(', ')} WHERE NOT EXISTS (SELECT 1 FROM taken) RETURNING ino),
       ent AS (INSERT INTO dentries (parent, name, ino) SELECT $14, $15, ino FROM ins),
       sym AS (INSERT INTO symlinks (ino, target) SELECT ino, $16::bytea FROM ins WHERE $16::bytea IS NOT NULL),
       opn AS (INSERT INTO session_opens (session_id, ino) SELECT $20::text, ino FROM ins WHERE $20::text IS NOT NULL),
       dir AS (UPDATE inodes SET nlink = nlink + $17, mtime_s = $18, mtime_ns = $19, ctime_s = $18, ctime_ns = $19
                WHERE ino = $14 AND EXISTS (SELECT 1 FROM ins))
     SELECT ino FROM ins`,
  // An unlink's writes in one round trip: the entry, the inode's link count and ctime, the
  // parent's times ($1 the parent, $2 the name, $3 the inode, $4 and $5 the time).
  dropName: `WITH gone AS (DELETE FROM dentries WHERE parent = $1 AND name = $2),
       node AS (UPDATE inodes SET nlink = nlink - 1, ctime_s = $4, ctime_ns = $5 WHERE ino = $3)
     UPDATE inodes SET mtime_s = $4, mtime_ns = $5, ctime_s = $4, ctime_ns = $5 WHERE ino = $1`,
  insertInodeWithIno: `INSERT INTO inodes (ino, mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
      VALUES ($14, ${INODE_VALUES})`,
  // After inserting inodes under given numbers: new inodes are numbered after them.
  syncInoSequence: "SELECT setval(pg_get_serial_sequence('inodes', 'ino'), (SELECT max(ino) FROM inodes))",
  deleteInode: `WITH b AS (DELETE FROM blocks WHERE ino = $1 RETURNING hash),
       s AS (DELETE FROM symlinks WHERE ino = $1),
       x AS (DELETE FROM xattrs WHERE ino = $1),
       o AS (DELETE FROM session_opens WHERE ino = $1),
       i AS (DELETE FROM inodes WHERE ino = $1)
     SELECT hash FROM b`,
  // Inodes without names that no live session ($1 the expiry in ms) holds open.
  unlinkedInodes: `SELECT i.ino FROM inodes i WHERE i.nlink = 0 AND NOT EXISTS (${liveHolder('i.ino', '$1')}) ORDER BY i.ino`,
  // Session $1 holds inode $2 open, if the inode is there, and the file's block map, read
  // in the same round trip (no row: the inode is gone; one row with a null idx: it has no
  // blocks). The key share lock orders it with an unlink or free of the inode (they lock
  // it for update): either it commits first and they see it, or it waits for them and
  // finds the inode as they left it (gone, or kept without a name).
  holdOpen: `WITH i AS (SELECT ino FROM inodes WHERE ino = $2 FOR KEY SHARE),
       ins AS (INSERT INTO session_opens (session_id, ino) SELECT $1, ino FROM i ON CONFLICT DO NOTHING)
     SELECT b.idx, b.hash, b.len FROM i LEFT JOIN blocks b ON b.ino = i.ino ORDER BY b.idx`,
  // Session $1 holds inode $2, which its transaction has locked.
  holdLocked: 'INSERT INTO session_opens (session_id, ino) VALUES ($1, $2) ON CONFLICT DO NOTHING',
  // Session $1 lets go of inodes $2: its records gone, the inodes locked (as by an unlink,
  // so that of this and another session's open or unlink one sees the other), their link
  // counts.
  letGo: `WITH gone AS (DELETE FROM session_opens WHERE session_id = $1 AND ino = ANY($2::bigint[]))
     SELECT ino, nlink FROM inodes WHERE ino = ANY($2::bigint[]) ORDER BY ino FOR UPDATE`,
  // Whether a live session ($2 the expiry in ms) holds inode $1 open.
  heldOpen: `${liveHolder('$1::bigint', '$2')}`,
  touch: 'UPDATE inodes SET nlink = nlink + $1, mtime_s = $2, mtime_ns = $3, ctime_s = $2, ctime_ns = $3 WHERE ino = $4',
  change: 'UPDATE inodes SET nlink = nlink + $1, ctime_s = $2, ctime_ns = $3 WHERE ino = $4',
  nlink: 'UPDATE inodes SET nlink = nlink + $1 WHERE ino = $2',
  orphan: 'UPDATE inodes SET nlink = 0, ctime_s = $1, ctime_ns = $2 WHERE ino = $3',
  addEntry: 'INSERT INTO dentries (parent, name, ino) VALUES ($1, $2, $3)',
  removeEntry: 'DELETE FROM dentries WHERE parent = $1 AND name = $2',
  retargetEntry: 'UPDATE dentries SET ino = $1 WHERE parent = $2 AND name = $3',
  hasChildren: 'SELECT 1 FROM dentries WHERE parent = $1 LIMIT 1',
  parentOf: 'SELECT parent FROM dentries WHERE ino = $1 LIMIT 1',
  // LIMIT NULL is no limit.
  listFirst: `SELECT d.name AS name, d.ino AS ino, i.mode AS mode FROM dentries d JOIN inodes i ON i.ino = d.ino
     WHERE d.parent = $1 ORDER BY d.name LIMIT $2`,
  listAfter: `SELECT d.name AS name, d.ino AS ino, i.mode AS mode FROM dentries d JOIN inodes i ON i.ino = d.ino
     WHERE d.parent = $1 AND d.name > $2 ORDER BY d.name LIMIT $3`,
  getSymlink: 'SELECT target FROM symlinks WHERE ino = $1',
  getXattr: 'SELECT value FROM xattrs WHERE ino = $1 AND name = $2',
  setXattr: 'INSERT INTO xattrs (ino, name, value) VALUES ($1, $2, $3) ON CONFLICT (ino, name) DO UPDATE SET value = EXCLUDED.value',
  listXattrs: 'SELECT name FROM xattrs WHERE ino = $1 ORDER BY name',
  removeXattr: 'DELETE FROM xattrs WHERE ino = $1 AND name = $2',
  anySecurityXattr: 'SELECT 1 FROM xattrs WHERE substring(name FROM 1 FOR 9) = $1 LIMIT 1',
  listBlocks: 'SELECT idx, hash, len FROM blocks WHERE ino = $1 ORDER BY idx',
  // A file's changed rows in one statement each way, however many blocks a commit holds.
  upsertBlocks: `INSERT INTO blocks (ino, idx, hash, len) SELECT $1, r.idx, r.hash, r.len FROM unnest($2::bigint[], $3::bytea[], $4::bigint[]) AS r(idx, hash, len)
     ON CONFLICT (ino, idx) DO UPDATE SET hash = EXCLUDED.hash, len = EXCLUDED.len`,
  deleteBlocks: 'DELETE FROM blocks WHERE ino = $1 AND idx = ANY($2::bigint[])',
  // A content commit on a volume several machines share: the shared index's entries of the
  // blocks it names, locked against gc's FOR UPDATE until the commit ends (in hash order, as
  // publications and gc lock them). Entries gc deleted meanwhile are not returned.
  keyShareEntries: 'SELECT hash FROM pack_blocks WHERE hash = ANY($1::bytea[]) ORDER BY hash FOR KEY SHARE',
  totals: `SELECT
      (SELECT count(*) FROM inodes WHERE ${sqlIsReg('mode')}) AS files,
      (SELECT count(*) FROM inodes WHERE ${sqlIsDir('mode')}) AS directories,
      (SELECT count(*) FROM inodes) AS inodes,
      (SELECT coalesce(sum(size), 0) FROM inodes WHERE ${sqlIsReg('mode')}) AS "logicalBytes",
      (SELECT count(*) FROM blocks) AS "blockRefs"`,
} as const;

export type StatementKey = keyof typeof SQL;



/** A connection (inside a transaction) or the pool (one statement on its own). */
export type Queryable = Pool | PoolClient;

export function run(on: Queryable, key: StatementKey, values: unknown[]): Promise<QueryResult> {
  return on.query({ name: `pogfs_${key}`, text: SQL[key], values });
}

/** `run` with rows as arrays (inode rows: read by inodeFromRaw). */
export function runRaw(on: Queryable, key: StatementKey, values: unknown[]): Promise<QueryResult<unknown[]>> {
  return on.query({ name: `pogfs_${key}`, text: SQL[key], values, rowMode: 'array' });
}

/** An inode's values in the order of INODE_VALUES ($1 … $13). */
export function inodeValues(r: NewInode): number[] {
  return [r.mode, r.uid, r.gid, r.nlink, r.size, r.rdev, r.atime_s, r.atime_ns, r.mtime_s, r.mtime_ns, r.ctime_s, r.ctime_ns, r.stored_bytes];
}

const attrUpdates = new Map<string, string>();

/**
 * The UPDATE ... RETURNING of an inode's row that writes the fields `change` gives, and
 * only those (one prepared statement per set of fields), or undefined when it gives none.
 */
export function runAttrUpdate(on: Queryable, ino: number, change: AttrChange): Promise<QueryResult<unknown[]>> | undefined {
  const u = attrUpdate(change);
  if (!u) return undefined;
  let text = attrUpdates.get(u.key);
  if (!text) {
    let n = 0;
    const next = () => `$${++n}`;
    text = `UPDATE inodes SET ${u.sets(next)} WHERE ino = ${next()} RETURNING ${INODE_COLUMNS}`;
    attrUpdates.set(u.key, text);
  }
  return on.query({ name: `pogfs_update_${u.key}`, text, values: [...u.args, ino], rowMode: 'array' });
}
