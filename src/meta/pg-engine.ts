import { randomUUID } from 'node:crypto';
import { Pool, types as pgTypes, type PoolClient, type QueryResult } from 'pg';
import {
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  XATTR_CREATE,
  XATTR_REPLACE,
  type AttrChange,
  type ContentCommit,
  type Detached,
  type DirPage,
  type InUse,
  type MetaEngine,
  type NodeSpec,
  type RenameResult,
  type Timespec,
} from './engine';
import { E, fail } from '../posix/errors';
import { ROOT_INO, S_IFLNK, S_IFMT, S_ISGID, isDir } from '../posix/file-system';
import {
  INODE_COLUMNS,
  MetadataError,
  inodeFromRaw,
  newInode,
  sqlIsDir,
  sqlIsReg,
  type BlockRow,
  type DirRow,
  type InodeRow,
  type NewInode,
  type Superblock,
  type VolumeTotals,
} from './meta-db';
import { SYMLINK_MAX, XATTR_SIZE_MAX, checkName, checkXattrName } from './name-rules';
import { pgMigrate } from './pg-schema';
import { parsePgUrl } from './pg-url';
import type { OpenMetaOptions } from './registry';
import { FORMAT_VERSION, VOLUME_MAGIC } from './schema';

const INODE_VALUES = '$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13';

/**
 * Every statement the engine runs, each prepared once per connection under its key (pg
 * names prepared statements; one name must always mean one text).
 */
const SQL = {
  superblock: 'SELECT magic, format_version, block_size, hash_algorithm, uuid, created_ns FROM superblock WHERE id = 1',
  barrier: 'UPDATE superblock SET barrier = barrier + 1 WHERE id = 1',
  getInode: `SELECT ${INODE_COLUMNS} FROM inodes WHERE ino = $1`,
  // A miss says ENOENT or ENOTDIR by the parent's mode: one statement for a negative
  // lookup (before every create) and for a hit.
  lookupWithParent: `SELECT p.mode, ${INODE_COLUMNS.split(', ').map((c) => `i.${c}`).join(', ')}
      FROM inodes p LEFT JOIN dentries d ON d.parent = p.ino AND d.name = $1 LEFT JOIN inodes i ON i.ino = d.ino
     WHERE p.ino = $2`,
  lookupIno: 'SELECT ino FROM dentries WHERE parent = $1 AND name = $2',
  // Row locks in one order (by inode number) so that two operations never wait on each other in a cycle.
  lockInodes: `SELECT ${INODE_COLUMNS} FROM inodes WHERE ino = ANY($1::bigint[]) ORDER BY ino FOR UPDATE`,
  // Cross-directory renames one at a time (Linux's s_vfs_rename_mutex): the ancestor check
  // of one cannot then be undone by another moving a directory meanwhile.
  renameLock: 'SELECT pg_advisory_xact_lock($1)',
  insertInode: `INSERT INTO inodes (mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
      VALUES (${INODE_VALUES}) RETURNING ino`,
  insertInodeWithIno: `INSERT INTO inodes (ino, mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
      VALUES ($14, ${INODE_VALUES})`,
  // After inserting inodes under given numbers: new inodes are numbered after them.
  syncInoSequence: "SELECT setval(pg_get_serial_sequence('inodes', 'ino'), (SELECT max(ino) FROM inodes))",
  deleteInode: `WITH b AS (DELETE FROM blocks WHERE ino = $1 RETURNING hash),
       s AS (DELETE FROM symlinks WHERE ino = $1),
       x AS (DELETE FROM xattrs WHERE ino = $1),
       i AS (DELETE FROM inodes WHERE ino = $1)
     SELECT hash FROM b`,
  unlinkedInodes: 'SELECT ino FROM inodes WHERE nlink = 0 ORDER BY ino',
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
  setSymlink: 'INSERT INTO symlinks (ino, target) VALUES ($1, $2) ON CONFLICT (ino) DO UPDATE SET target = EXCLUDED.target',
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
  totals: `SELECT
      (SELECT count(*) FROM inodes WHERE ${sqlIsReg('mode')}) AS files,
      (SELECT count(*) FROM inodes WHERE ${sqlIsDir('mode')}) AS directories,
      (SELECT count(*) FROM inodes) AS inodes,
      (SELECT coalesce(sum(size), 0) FROM inodes WHERE ${sqlIsReg('mode')}) AS "logicalBytes",
      (SELECT count(*) FROM blocks) AS "blockRefs"`,
} as const;

type StatementKey = keyof typeof SQL;

/** The columns each AttrChange field writes, in a fixed order (the key of a prepared UPDATE). */
const ATTR_COLUMNS: readonly [keyof AttrChange, (n: () => string) => string][] = [
  ['mode', (n) => `mode = (mode & ${S_IFMT}) | (${n()} & ${0o7777})`],
  ['uid', (n) => `uid = ${n()}`],
  ['gid', (n) => `gid = ${n()}`],
  ['size', (n) => `size = ${n()}`],
  ['storedBytes', (n) => `stored_bytes = ${n()}`],
  ['atime', (n) => `atime_s = ${n()}, atime_ns = ${n()}`],
  ['mtime', (n) => `mtime_s = ${n()}, mtime_ns = ${n()}`],
  ['ctime', (n) => `ctime_s = ${n()}, ctime_ns = ${n()}`],
];

const SECURITY_PREFIX = Buffer.from('security.');
/** The advisory lock key of cross-directory renames ("pogr"). */
const RENAME_LOCK = 0x706f6772;

/** How often an operation is tried when PostgreSQL reports a conflict with another client. */
const MAX_ATTEMPTS = 20;

/** PostgreSQL's SQLSTATEs for "try the transaction again": serialization failure, deadlock. */
const RETRYABLE = new Set(['40001', '40P01']);

/** Thrown inside a transaction whose reads before its locks were overtaken by another client: run it again. */
class Restart extends Error {}

/**
 * int8 and numeric as JS numbers (inode numbers, sizes, times, counts, sums), not the
 * strings pg gives by default; a value past 2^53 (only the creation time in ns) as a bigint.
 */
const INT8_OID = 20;
const NUMERIC_OID = 1700;
function parseWide(text: string): number | bigint {
  const n = Number(text);
  return Number.isSafeInteger(n) || !/^-?\d+$/.test(text) ? n : BigInt(text);
}
const typeParsers = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    (oid === INT8_OID || oid === NUMERIC_OID) && format !== 'binary' ? parseWide : pgTypes.getTypeParser(oid, format)) as typeof pgTypes.getTypeParser,
};

/** Changes to one inode gathered while a rename runs, written once at its end. */
interface Touch {
  nlink: number;
  /** mtime and ctime (a directory whose entries changed). */
  modified: boolean;
  /** ctime only (an inode whose names or links changed). */
  changed: boolean;
}

/** A connection (inside a transaction) or the pool (one statement on its own). */
type Queryable = Pool | PoolClient;

function run(on: Queryable, key: StatementKey, values: unknown[]): Promise<QueryResult> {
  return on.query({ name: `pogfs_${key}`, text: SQL[key], values });
}

function runRaw(on: Queryable, key: StatementKey, values: unknown[]): Promise<QueryResult<unknown[]>> {
  return on.query({ name: `pogfs_${key}`, text: SQL[key], values, rowMode: 'array' });
}

const timeArgs = (t: Timespec): [number, number] => [t.s, t.ns];

/**
 * The PostgreSQL engine: every MetaEngine operation as one transaction (READ COMMITTED)
 * over a pool of connections, with row locks where the SQLite engine relies on its single
 * writer. An operation that changes names locks the directories it changes and the inodes
 * it re-links, all in inode-number order (cross-directory renames first take one volume
 * lock, as Linux does): another client's operation on the same directory waits, then sees
 * the result, so create against create of one name, rmdir against a create inside, rename
 * against unlink and link against the unlink of the last name each have one outcome. Names
 * read before the locks are read again after them; if another client changed them
 * meanwhile, the operation starts again. A deadlock or serialization failure PostgreSQL
 * reports is retried a bounded number of times. Link counts and times are written as field
 * updates (nlink = nlink + $1), never as whole rows read before.
 *
 * Durability: commits are asynchronous (synchronous_commit = off): committed and visible
 * to every client at once, on disk within PostgreSQL's WAL writer delay (200 ms), which is
 * PostgreSQL's own group commit. `barrier` commits synchronously, and so flushes the WAL
 * past every earlier commit.
 */
export class PgEngine implements MetaEngine {
  private readonly updates = new Map<string, string>();
  /**
   * The last change called: changes of this client run one after another in call order,
   * and a read waits for the changes called before it, as with the SQLite engine (whose
   * calls complete when made). Without it, a setattr called after a commitContent of the
   * same file could reach the server first and lose to the older times. Clients of other
   * processes and machines meet at the row locks instead.
   */
  private lastChange: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly pool: Pool,
    readonly url: string,
  ) {}

  /** Opens (or with `create`, creates) the metadata in the database `address` names (after "postgres:"). */
  static async open(address: string, options: OpenMetaOptions): Promise<PgEngine> {
    const target = parsePgUrl(address);
    const pool = new Pool({
      connectionString: target.connectionString,
      max: 4,
      types: typeParsers,
      options: `-c synchronous_commit=off${options.readOnly ? ' -c default_transaction_read_only=on' : ''}`,
      application_name: 'pogfs',
    });
    // An idle connection the server closed (a restart) is dropped by the pool; the next
    // operation connects again. Without a listener the error would end the process.
    pool.on('error', () => undefined);
    const engine = new PgEngine(pool, target.url);
    try {
      const client = await pool.connect();
      try {
        if (!options.readOnly) await pgMigrate(client);
        if (options.create) await engine.create(client, options.create);
      } finally {
        client.release();
      }
      await engine.checkSuperblock();
      if (options.create) await engine.barrier();
    } catch (err) {
      await pool.end().catch(() => undefined);
      if (err instanceof MetadataError) throw err;
      throw new MetadataError(`cannot open metadata database ${target.url}: ${(err as Error).message}`);
    }
    return engine;
  }

  private async create(client: PoolClient, init: NonNullable<OpenMetaOptions['create']>): Promise<void> {
    await client.query('BEGIN');
    try {
      const existing = await client.query({ text: SQL.superblock });
      if (existing.rows.length > 0) throw new MetadataError(`${this.url} already holds a pogfs volume`);
      await client.query(
        'INSERT INTO superblock (id, magic, format_version, block_size, hash_algorithm, uuid, created_ns) VALUES (1, $1, $2, $3, $4, $5, $6)',
        [VOLUME_MAGIC, FORMAT_VERSION, init.blockSize, init.hashAlgorithm, randomUUID(), (BigInt(Date.now()) * 1000000n).toString()],
      );
      for (const [key, value] of Object.entries(init.settings ?? {})) {
        await client.query('INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value', [key, value]);
      }
      await run(client, 'insertInodeWithIno', [...inodeValues(init.root), ROOT_INO]);
      await run(client, 'syncInoSequence', []);
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK');
      throw err;
    }
  }

  private async checkSuperblock(): Promise<void> {
    let sb: Superblock;
    try {
      sb = await this.superblock();
    } catch (err) {
      if ((err as { code?: string }).code === '42P01') throw new MetadataError(`${this.url} has no pogfs schema: not a pogfs volume`);
      throw err;
    }
    if (sb.magic !== VOLUME_MAGIC) throw new MetadataError(`not a pogfs volume (magic ${JSON.stringify(sb.magic)})`);
    if (sb.format_version > FORMAT_VERSION) {
      throw new MetadataError(`the volume has format version ${sb.format_version}, newer than this pogfs understands (${FORMAT_VERSION}); upgrade pogfs`);
    }
  }

  async superblock(): Promise<Superblock> {
    const r = await run(this.pool, 'superblock', []);
    const row = r.rows[0] as Superblock | undefined;
    if (!row) throw new MetadataError('the metadata database has no superblock: not a pogfs volume');
    return { ...row };
  }

  // ---- durability ----

  /**
   * Kept for the interface: every operation already commits on its own, asynchronously,
   * which groups the WAL flushes of many commits as a group commit would (see the class).
   */
  setGroupCommit(): void {
    return;
  }

  /** Nothing is held back: every operation's commit has been handed to the server when it returns. */
  async commitGroup(): Promise<void> {
    await this.lastChange;
  }

  async barrier(): Promise<void> {
    // A synchronous commit waits for the WAL to be flushed up to its commit record, which
    // lies after the records of every commit that returned before it.
    await this.transaction(async (c) => {
      await c.query('SET LOCAL synchronous_commit = on');
      await run(c, 'barrier', []);
    });
  }

  // ---- names and attributes ----

  async lookup(parent: number, name: Buffer): Promise<InodeRow> {
    checkName(name);
    await this.lastChange;
    const r = (await runRaw(this.pool, 'lookupWithParent', [name, parent])).rows[0];
    if (!r) fail(E.ENOENT);
    if (!isDir(r[0] as number)) fail(E.ENOTDIR);
    if (r[1] === null) fail(E.ENOENT);
    return inodeFromRaw(r, 1);
  }

  async getattr(ino: number): Promise<InodeRow> {
    await this.lastChange;
    return this.inode(this.pool, ino);
  }

  async setattr(ino: number, change: AttrChange): Promise<InodeRow> {
    // One statement (UPDATE ... RETURNING): atomic on its own, and only the fields given.
    return this.inOrder(async () => {
      const row = (await this.update(this.pool, ino, change)) ?? (await this.getInode(this.pool, ino));
      if (!row) fail(E.ENOENT);
      return row;
    });
  }

  async parentOf(ino: number): Promise<number | undefined> {
    await this.lastChange;
    if (ino === ROOT_INO) return undefined;
    return this.parentOfIn(this.pool, ino);
  }

  async statfs(): Promise<VolumeTotals> {
    await this.lastChange;
    return (await run(this.pool, 'totals', [])).rows[0] as VolumeTotals;
  }

  // ---- the namespace ----

  async mknod(parent: number, name: Buffer, spec: NodeSpec, t: Timespec): Promise<InodeRow> {
    if (spec.target !== undefined) {
      if (spec.target.length === 0) fail(E.ENOENT);
      if (spec.target.length > SYMLINK_MAX) fail(E.ENAMETOOLONG);
    }
    checkName(name);
    return this.transaction(async (c) => {
      const dir = (await this.lock(c, [parent])).get(parent);
      if (!dir) fail(E.ENOENT);
      if (!isDir(dir.mode)) fail(E.ENOTDIR);
      if ((await this.lookupIno(c, parent, name)) !== undefined) fail(E.EEXIST);
      // In a set-group-ID directory new entries take the directory's group, and new
      // subdirectories inherit the bit (as ext4 does).
      let mode = spec.mode;
      const sgid = (dir.mode & S_ISGID) !== 0;
      if (sgid && isDir(mode)) mode |= S_ISGID;
      const fresh = newInode(
        { mode, uid: spec.uid, gid: sgid ? dir.gid : spec.gid, nlink: isDir(mode) ? 2 : 1, size: spec.target?.length, rdev: spec.rdev },
        t,
      );
      const ino = (await run(c, 'insertInode', inodeValues(fresh))).rows[0].ino as number;
      await run(c, 'addEntry', [parent, name, ino]);
      if (spec.target) await run(c, 'setSymlink', [ino, spec.target]);
      await run(c, 'touch', [isDir(mode) ? 1 : 0, ...timeArgs(t), parent]);
      return { ino, ...fresh };
    });
  }

  async link(ino: number, parent: number, name: Buffer, t: Timespec): Promise<InodeRow> {
    checkName(name);
    return this.transaction(async (c) => {
      const rows = await this.lock(c, [ino, parent]);
      const node = rows.get(ino);
      if (!node) fail(E.ENOENT);
      if (isDir(node.mode)) fail(E.EPERM);
      const dir = rows.get(parent);
      if (!dir) fail(E.ENOENT);
      if (!isDir(dir.mode)) fail(E.ENOTDIR);
      if ((await this.lookupIno(c, parent, name)) !== undefined) fail(E.EEXIST);
      await run(c, 'addEntry', [parent, name, ino]);
      await run(c, 'change', [1, ...timeArgs(t), ino]);
      await run(c, 'touch', [0, ...timeArgs(t), parent]);
      return { ...node, nlink: node.nlink + 1, ctime_s: t.s, ctime_ns: t.ns };
    });
  }

  async unlink(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached> {
    checkName(name);
    return this.transaction(async (c) => {
      const { rows, inos } = await this.lockNamed(c, [parent], [[parent, name]]);
      this.dirIn(rows, parent);
      const node = this.namedIn(rows, inos[0]);
      if (isDir(node.mode)) fail(E.EISDIR);
      await run(c, 'removeEntry', [parent, name]);
      await run(c, 'change', [-1, ...timeArgs(t), node.ino]);
      await run(c, 'touch', [0, ...timeArgs(t), parent]);
      return this.detached(c, { ...node, nlink: node.nlink - 1, ctime_s: t.s, ctime_ns: t.ns }, inUse);
    });
  }

  async rmdir(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached> {
    checkName(name);
    return this.transaction(async (c) => {
      const { rows, inos } = await this.lockNamed(c, [parent], [[parent, name]]);
      this.dirIn(rows, parent);
      const node = this.namedIn(rows, inos[0]);
      if (!isDir(node.mode)) fail(E.ENOTDIR);
      // Locked: no entry can be made in it until this commits.
      if ((await run(c, 'hasChildren', [node.ino])).rows.length > 0) fail(E.ENOTEMPTY);
      await run(c, 'removeEntry', [parent, name]);
      await run(c, 'orphan', [...timeArgs(t), node.ino]);
      await run(c, 'touch', [-1, ...timeArgs(t), parent]); // its ".." is gone
      return this.detached(c, { ...node, nlink: 0, ctime_s: t.s, ctime_ns: t.ns }, inUse);
    });
  }

  async rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, t: Timespec, inUse?: InUse): Promise<RenameResult> {
    checkName(name);
    checkName(newName);
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || flags === (RENAME_NOREPLACE | RENAME_EXCHANGE)) fail(E.EINVAL);
    return this.transaction(async (c) => {
      if (newParent !== parent) await run(c, 'renameLock', [RENAME_LOCK]);
      const { rows, inos } = await this.lockNamed(c, [parent, newParent], [[parent, name], [newParent, newName]]);
      this.dirIn(rows, parent);
      if (newParent !== parent) this.dirIn(rows, newParent);
      const src = this.namedIn(rows, inos[0]);
      const dstIno = inos[1];
      let dst: InodeRow | undefined;
      if (dstIno !== undefined) {
        dst = rows.get(dstIno);
        if (!dst) fail(E.ENOENT);
      }
      const touches = new Map<number, Touch>();
      const touch = (ino: number): Touch => {
        let x = touches.get(ino);
        if (!x) touches.set(ino, (x = { nlink: 0, modified: false, changed: false }));
        return x;
      };

      if (flags & RENAME_EXCHANGE) {
        if (!dst) fail(E.ENOENT);
        if (src.ino === dst.ino) return { moved: src, exchanged: dst };
        if (isDir(src.mode)) await this.checkNotAncestor(c, src.ino, newParent);
        if (isDir(dst.mode)) await this.checkNotAncestor(c, dst.ino, parent);
        await run(c, 'retargetEntry', [dst.ino, parent, name]);
        await run(c, 'retargetEntry', [src.ino, newParent, newName]);
        if (parent !== newParent && isDir(src.mode) !== isDir(dst.mode)) {
          const delta = isDir(src.mode) ? 1 : -1;
          touch(newParent).nlink += delta;
          touch(parent).nlink -= delta;
        }
        touch(src.ino).changed = true;
        touch(dst.ino).changed = true;
        touch(parent).modified = true;
        touch(newParent).modified = true;
        await this.apply(c, touches, t);
        return { moved: { ...src, ctime_s: t.s, ctime_ns: t.ns }, exchanged: { ...dst, ctime_s: t.s, ctime_ns: t.ns } };
      }

      if (dst) {
        // Two names of one inode: POSIX says do nothing and succeed.
        if (dst.ino === src.ino) return { moved: src };
        if (flags & RENAME_NOREPLACE) fail(E.EEXIST);
        if (isDir(src.mode)) {
          if (!isDir(dst.mode)) fail(E.ENOTDIR);
          if ((await run(c, 'hasChildren', [dst.ino])).rows.length > 0) fail(E.ENOTEMPTY);
        } else if (isDir(dst.mode)) fail(E.EISDIR);
      }
      if (isDir(src.mode)) await this.checkNotAncestor(c, src.ino, newParent);

      await run(c, 'removeEntry', [parent, name]);
      if (dst) {
        await run(c, 'retargetEntry', [src.ino, newParent, newName]);
        if (isDir(dst.mode)) {
          await run(c, 'orphan', [...timeArgs(t), dst.ino]);
          touch(newParent).nlink -= 1; // the replaced directory's ".." is gone
        } else touch(dst.ino).nlink -= 1;
        touch(dst.ino).changed = true;
      } else await run(c, 'addEntry', [newParent, newName, src.ino]);
      if (isDir(src.mode) && parent !== newParent) {
        touch(parent).nlink -= 1;
        touch(newParent).nlink += 1;
      }
      touch(src.ino).changed = true;
      touch(parent).modified = true;
      touch(newParent).modified = true;
      await this.apply(c, touches, t);
      const moved = { ...src, ctime_s: t.s, ctime_ns: t.ns };
      if (!dst) return { moved };
      const replaced = await this.detached(c, { ...dst, nlink: isDir(dst.mode) ? 0 : dst.nlink - 1, ctime_s: t.s, ctime_ns: t.ns }, inUse);
      return { moved, replaced };
    });
  }

  async readdir(dir: number, after?: Buffer, limit?: number): Promise<DirPage> {
    await this.lastChange;
    const row = await this.inode(this.pool, dir);
    if (!isDir(row.mode)) fail(E.ENOTDIR);
    const max = limit ?? null;
    const r = after ? await run(this.pool, 'listAfter', [dir, after, max]) : await run(this.pool, 'listFirst', [dir, max]);
    const entries = r.rows as DirRow[];
    const last = entries.at(-1);
    return { entries, next: limit !== undefined && entries.length === limit && last ? last.name : undefined };
  }

  async readlink(ino: number): Promise<Buffer> {
    await this.lastChange;
    const r = await run(this.pool, 'getSymlink', [ino]);
    if (r.rows.length > 0) return r.rows[0].target as Buffer;
    if (((await this.inode(this.pool, ino)).mode & S_IFMT) !== S_IFLNK) fail(E.EINVAL);
    return fail(E.EIO, `symlink ${ino} has no target`);
  }

  // ---- extended attributes ----

  async getxattr(ino: number, name: Buffer): Promise<Buffer> {
    checkXattrName(name);
    await this.lastChange;
    const r = await run(this.pool, 'getXattr', [ino, name]);
    if (r.rows.length > 0) return r.rows[0].value as Buffer;
    await this.inode(this.pool, ino);
    return fail(E.ENODATA);
  }

  async setxattr(ino: number, name: Buffer, value: Buffer, flags: number, t: Timespec): Promise<void> {
    checkXattrName(name);
    if (value.length > XATTR_SIZE_MAX) fail(E.E2BIG);
    await this.transaction(async (c) => {
      if (!(await this.lock(c, [ino])).has(ino)) fail(E.ENOENT);
      const exists = (await run(c, 'getXattr', [ino, name])).rows.length > 0;
      if (flags & XATTR_CREATE && exists) fail(E.EEXIST);
      if (flags & XATTR_REPLACE && !exists) fail(E.ENODATA);
      await run(c, 'setXattr', [ino, name, value]);
      await run(c, 'change', [0, ...timeArgs(t), ino]);
    });
  }

  async listxattr(ino: number): Promise<Buffer[]> {
    await this.lastChange;
    await this.inode(this.pool, ino);
    return (await run(this.pool, 'listXattrs', [ino])).rows.map((r) => r.name as Buffer);
  }

  async removexattr(ino: number, name: Buffer, t: Timespec): Promise<void> {
    checkXattrName(name);
    await this.transaction(async (c) => {
      if (!(await this.lock(c, [ino])).has(ino)) fail(E.ENOENT);
      if ((await run(c, 'removeXattr', [ino, name])).rowCount === 0) fail(E.ENODATA);
      await run(c, 'change', [0, ...timeArgs(t), ino]);
    });
  }

  async anySecurityXattr(): Promise<boolean> {
    await this.lastChange;
    return (await run(this.pool, 'anySecurityXattr', [SECURITY_PREFIX])).rows.length > 0;
  }

  // ---- content ----

  async blocks(ino: number): Promise<BlockRow[]> {
    await this.lastChange;
    return (await run(this.pool, 'listBlocks', [ino])).rows as BlockRow[];
  }

  async commitContent(commits: readonly ContentCommit[]): Promise<void> {
    if (commits.length === 0) return;
    await this.transaction(async (c) => {
      // Locked, so a free of one of these inodes by another client waits for this commit.
      await this.lock(c, commits.map((x) => x.ino));
      for (const x of commits) {
        const idx: number[] = [];
        const hashes: Buffer[] = [];
        const lens: number[] = [];
        const gone: number[] = [];
        for (const [i, ref] of x.rows) {
          if (ref) {
            idx.push(i);
            hashes.push(ref.hash);
            lens.push(ref.len);
          } else gone.push(i);
        }
        if (idx.length > 0) await run(c, 'upsertBlocks', [x.ino, idx, hashes, lens]);
        if (gone.length > 0) await run(c, 'deleteBlocks', [x.ino, gone]);
        await this.update(c, x.ino, { ...x.attrs, size: x.size, storedBytes: x.storedBytes });
      }
    });
  }

  // ---- freeing ----

  async free(ino: number): Promise<Buffer[]> {
    return this.transaction(async (c) => {
      const row = (await this.lock(c, [ino])).get(ino);
      // Another client may have given it a name again meanwhile: then it stays.
      if (!row || row.nlink > 0) return [];
      return this.deleteInode(c, ino);
    });
  }

  async unlinkedInodes(): Promise<number[]> {
    await this.lastChange;
    return (await run(this.pool, 'unlinkedInodes', [])).rows.map((r) => r.ino as number);
  }

  async close(): Promise<void> {
    await this.lastChange;
    await this.pool.end();
  }

  // ---- internals ----

  /**
   * Runs `fn` as one transaction on one connection, again (up to MAX_ATTEMPTS) when
   * PostgreSQL reports a deadlock or serialization failure or `fn` finds that another
   * client overtook its unlocked reads.
   */
  private transaction<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    return this.inOrder(() => this.attempts(fn));
  }

  /** Runs a change after the changes called before it (see lastChange). */
  private inOrder<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.lastChange.then(fn);
    this.lastChange = result.catch(() => undefined);
    return result;
  }

  private async attempts<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch((e: Error) => {
          broken = e;
        });
        const retry = err instanceof Restart || RETRYABLE.has((err as { code?: string }).code ?? '');
        if (!retry || attempt >= MAX_ATTEMPTS) throw err;
      } finally {
        client.release(broken);
      }
      // A little, growing, random wait, so that two clients that collided do not collide again.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(100, 2 ** attempt)));
    }
  }

  /** Locks the inode rows (in inode order) and returns those that exist. */
  private async lock(c: PoolClient, inos: readonly number[]): Promise<Map<number, InodeRow>> {
    const r = await runRaw(c, 'lockInodes', [[...new Set(inos)]]);
    return new Map(r.rows.map((raw) => {
      const row = inodeFromRaw(raw);
      return [row.ino, row];
    }));
  }

  /**
   * Locks directories `dirs` and the inodes that `names` name in them, and returns the
   * rows and what each name names under the locks. The names are read before the locks
   * (so the inodes can be locked in order with the directories); if another client
   * changed one meanwhile, the transaction starts again.
   */
  private async lockNamed(
    c: PoolClient,
    dirs: readonly number[],
    names: readonly [number, Buffer][],
  ): Promise<{ rows: Map<number, InodeRow>; inos: (number | undefined)[] }> {
    const before: (number | undefined)[] = [];
    for (const [p, n] of names) before.push(await this.lookupIno(c, p, n));
    const rows = await this.lock(c, [...dirs, ...before.filter((x): x is number => x !== undefined)]);
    for (let i = 0; i < names.length; i++) {
      if ((await this.lookupIno(c, names[i][0], names[i][1])) !== before[i]) throw new Restart();
    }
    return { rows, inos: before };
  }

  private dirIn(rows: Map<number, InodeRow>, ino: number): InodeRow {
    const row = rows.get(ino);
    if (!row) fail(E.ENOENT);
    if (!isDir(row.mode)) fail(E.ENOTDIR);
    return row;
  }

  /** The locked inode a name names; ENOENT for no name (or a name whose inode is missing). */
  private namedIn(rows: Map<number, InodeRow>, ino: number | undefined): InodeRow {
    const row = ino === undefined ? undefined : rows.get(ino);
    if (!row) fail(E.ENOENT);
    return row;
  }

  private async lookupIno(on: Queryable, parent: number, name: Buffer): Promise<number | undefined> {
    const r = await run(on, 'lookupIno', [parent, name]);
    return r.rows.length > 0 ? (r.rows[0].ino as number) : undefined;
  }

  private async getInode(on: Queryable, ino: number): Promise<InodeRow | undefined> {
    const r = (await runRaw(on, 'getInode', [ino])).rows[0];
    return r && inodeFromRaw(r);
  }

  private async inode(on: Queryable, ino: number): Promise<InodeRow> {
    const row = await this.getInode(on, ino);
    if (!row) fail(E.ENOENT);
    return row;
  }

  private async parentOfIn(on: Queryable, ino: number): Promise<number | undefined> {
    const r = await run(on, 'parentOf', [ino]);
    return r.rows.length > 0 ? (r.rows[0].parent as number) : undefined;
  }

  /** Deletes an inode and everything it owns; returns the block hashes it referenced. */
  private async deleteInode(c: PoolClient, ino: number): Promise<Buffer[]> {
    return (await run(c, 'deleteInode', [ino])).rows.map((r) => r.hash as Buffer);
  }

  /** The inode after it lost a name (`attr` as written); freed now when it has none left and nobody uses it. */
  private async detached(c: PoolClient, attr: InodeRow, inUse: InUse | undefined): Promise<Detached> {
    if (attr.nlink > 0 || inUse?.(attr.ino)) return { attr };
    return { attr, freed: await this.deleteInode(c, attr.ino) };
  }

  /** EINVAL when moving directory `ino` under `target` would put it inside itself. */
  private async checkNotAncestor(c: PoolClient, ino: number, target: number): Promise<void> {
    let cur: number | undefined = target;
    for (let depth = 0; cur !== undefined && depth < 100000; depth++) {
      if (cur === ino) fail(E.EINVAL);
      if (cur === ROOT_INO) return;
      cur = await this.parentOfIn(c, cur);
    }
  }

  private async apply(c: PoolClient, touches: Map<number, Touch>, t: Timespec): Promise<void> {
    for (const [ino, x] of touches) {
      if (x.modified) await run(c, 'touch', [x.nlink, ...timeArgs(t), ino]);
      else if (x.changed) await run(c, 'change', [x.nlink, ...timeArgs(t), ino]);
      else if (x.nlink !== 0) await run(c, 'nlink', [x.nlink, ino]);
    }
  }

  /**
   * Writes the fields `change` gives, and only those (one prepared statement per set of
   * fields); the row after, or undefined when no such inode (or no field) is given.
   */
  private async update(on: Queryable, ino: number, change: AttrChange): Promise<InodeRow | undefined> {
    const args: number[] = [];
    let key = '';
    for (const [field] of ATTR_COLUMNS) {
      const v = change[field];
      if (v === undefined) continue;
      key += `${field},`;
      if (typeof v === 'number') args.push(v);
      else args.push(v.s, v.ns);
    }
    if (key === '') return undefined;
    let text = this.updates.get(key);
    if (!text) {
      let n = 0;
      const next = () => `$${++n}`;
      const sets = ATTR_COLUMNS.filter(([field]) => change[field] !== undefined).map(([, sql]) => sql(next));
      text = `UPDATE inodes SET ${sets.join(', ')} WHERE ino = ${next()} RETURNING ${INODE_COLUMNS}`;
      this.updates.set(key, text);
    }
    const r = (await on.query({ name: `pogfs_update_${key}`, text, values: [...args, ino], rowMode: 'array' })).rows[0] as unknown[] | undefined;
    return r && inodeFromRaw(r);
  }
}

/** An inode's values in the order of INODE_VALUES ($1 … $13). */
function inodeValues(r: NewInode): number[] {
  return [r.mode, r.uid, r.gid, r.nlink, r.size, r.rdev, r.atime_s, r.atime_ns, r.mtime_s, r.mtime_ns, r.ctime_s, r.ctime_ns, r.stored_bytes];
}
