import { randomUUID } from 'node:crypto';
import type { PoolClient } from 'pg';
import {
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  XATTR_CREATE,
  XATTR_REPLACE,
  BlocksNotPublished,
  type AttrChange,
  type ChangeWatch,
  type ContentCommit,
  type Detached,
  type DirPage,
  type ExternalChange,
  type InUse,
  type MetaEngine,
  type NodeSpec,
  type RenameResult,
  type Timespec,
} from './engine';
import { E, fail } from '../posix/errors';
import { ROOT_INO, S_IFLNK, S_IFMT, S_ISGID, isDir } from '../posix/file-system';
import { MetadataError, inodeFromRaw, newInode, type BlockRow, type DirRow, type InodeRow, type Superblock, type VolumeTotals } from './meta-db';
import { SYMLINK_MAX, XATTR_SIZE_MAX, checkName, checkXattrName } from './name-rules';
import { ChangeNotice, PgChangeFeed, newClientId } from './pg-change-feed';
import { PgMountSession, SESSION_EXPIRY_MS } from './pg-mount-session';
import { pgMigrate } from './pg-schema';
import { PgSession, Restart, type PgSessionOptions } from './pg-session';
import { inodeValues, run, runAttrUpdate, runRaw, type Queryable } from './pg-statements';
import { parsePgUrl } from './pg-url';
import type { OpenMetaOptions } from './registry';
import { renameTouches, type Touch } from './rename-touches';
import { FORMAT_VERSION, VOLUME_MAGIC } from './schema';

const SECURITY_PREFIX = Buffer.from('security.');
/** The advisory lock key of cross-directory renames ("pogr"). */
const RENAME_LOCK = 0x706f6772;
/**
 * How long the hold of a file whose last handle here closed is kept before it is dropped
 * (with those of the other files closed meanwhile, in one transaction): opened again
 * meanwhile, it costs nothing.
 */
const LINGER_MS = 1000;
/** PostgreSQL's SQLSTATE for a foreign key violation: our session's row is gone. */
const FOREIGN_KEY_VIOLATION = '23503';

/** A caller waiting for the hold of an inode to be dropped: what that freed, or why it failed. */
interface Letting {
  done(freed: Buffer[]): void;
  failed(err: Error): void;
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
 * updates (nlink = nlink + $1), never as whole rows read before. The order of one
 * client's calls, the durability of commits and what a lost connection does (waits for the
 * server to come back, then EIO) are PgSession's.
 *
 * Every change also publishes what it changed (pg-change-feed.ts), in the round trip of
 * its COMMIT; `watchChanges` follows what the other clients publish.
 */
export class PgEngine implements MetaEngine {
  /** This mount's claim on the database (OpenMetaOptions.mountSession), released on close. */
  private mount: PgMountSession | undefined;
  /** Names this client in its change notices, so that it skips its own. */
  private readonly clientId = newClientId();
  /** The connection following other clients' changes, while someone watches them. */
  private feed: PgChangeFeed | undefined;
  private readonly watchers = new Set<(change: ExternalChange) => void>();
  /**
   * The regular files open here on a shared volume: handles, and the write of the hold's
   * record (its first open's). Counted at each call, so that the records' writes, in the
   * order of changes, follow the order of opens and closes.
   */
  private readonly openHere = new Map<number, { handles: number; recorded: Promise<unknown> }>();
  /** Inodes whose last handle here closed, their holds not dropped yet (LINGER_MS). */
  private lingering = new Map<number, Letting>();
  private lingerTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly session: PgSession,
    readonly url: string,
    private readonly connectionString: string,
    /** OpenMetaOptions.sharedPacks: content commits check the shared pack index. */
    private readonly sharedPacks: boolean,
  ) {}

  /**
   * Opens (or with `create`, creates) the metadata in the database `address` names (after
   * "postgres:"); `connection` tunes how a lost server is waited for (PgSession's defaults).
   */
  static async open(address: string, options: OpenMetaOptions, connection: Pick<PgSessionOptions, 'reconnectWaitMs'> = {}): Promise<PgEngine> {
    const target = parsePgUrl(address);
    const session = new PgSession(target.connectionString, { ...connection, readOnly: options.readOnly, warn: options.warn });
    const engine = new PgEngine(session, target.url, target.connectionString, options.sharedPacks === true);
    try {
      const client = await session.pool.connect();
      try {
        if (!options.readOnly) await pgMigrate(client);
        if (options.create) await engine.create(client, options.create);
      } finally {
        client.release();
      }
      await engine.checkSuperblock();
      if (options.create) await engine.barrier();
      if (options.mountSession) engine.mount = await PgMountSession.claim(session, options.mountSession, session.warn);
    } catch (err) {
      await session.close().catch(() => undefined);
      if (err instanceof MetadataError) throw err;
      throw new MetadataError(`cannot open metadata database ${target.url}: ${(err as Error).message}`);
    }
    return engine;
  }

  private async create(client: PoolClient, init: NonNullable<OpenMetaOptions['create']>): Promise<void> {
    await client.query('BEGIN');
    try {
      const existing = await run(client, 'superblock', []);
      if (existing.rows.length > 0) throw new MetadataError(`${this.url} already holds a pogfs volume`);
      await run(client, 'insertSuperblock', [VOLUME_MAGIC, FORMAT_VERSION, init.blockSize, init.hashAlgorithm, randomUUID(), (BigInt(Date.now()) * 1000000n).toString()]);
      for (const [key, value] of Object.entries(init.settings ?? {})) await run(client, 'setSetting', [key, value]);
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
    const r = await this.session.read((pool) => run(pool, 'superblock', []));
    const row = r.rows[0] as Superblock | undefined;
    if (!row) throw new MetadataError('the metadata database has no superblock: not a pogfs volume');
    return { ...row };
  }

  // ---- durability ----

  /**
   * Kept for the interface: every operation already commits on its own, asynchronously,
   * which groups the WAL flushes of many commits as a group commit would (see PgSession).
   */
  setGroupCommit(): void {
    return;
  }

  /** Nothing is held back: every operation's commit has been handed to the server when it returns. */
  async commitGroup(): Promise<void> {
    await this.session.settled();
  }

  async barrier(): Promise<void> {
    await this.session.barrier((c) => run(c, 'barrier', []));
  }

  // ---- names and attributes ----

  async lookup(parent: number, name: Buffer): Promise<InodeRow> {
    checkName(name);
    return this.session.read(async (pool) => {
      const r = (await runRaw(pool, 'lookupWithParent', [name, parent])).rows[0];
      if (!r) fail(E.ENOENT);
      if (!isDir(r[0] as number)) fail(E.ENOTDIR);
      if (r[1] === null) fail(E.ENOENT);
      return inodeFromRaw(r, 1);
    });
  }

  async getattr(ino: number): Promise<InodeRow> {
    return this.session.read((pool) => this.inode(pool, ino));
  }

  async setattr(ino: number, change: AttrChange): Promise<InodeRow> {
    // Only the fields given (UPDATE ... RETURNING).
    return this.change(async (c, changed) => {
      const row = (await this.update(c, ino, change)) ?? (await this.getInode(c, ino));
      if (!row) fail(E.ENOENT);
      changed.inode(ino);
      return row;
    });
  }

  async parentOf(ino: number): Promise<number | undefined> {
    if (ino === ROOT_INO) return undefined;
    return this.session.read((pool) => this.parentOfIn(pool, ino));
  }

  async statfs(): Promise<VolumeTotals> {
    return this.session.read(async (pool) => (await run(pool, 'totals', [])).rows[0] as VolumeTotals);
  }

  // ---- the namespace ----

  async mknod(parent: number, name: Buffer, spec: NodeSpec, t: Timespec): Promise<InodeRow> {
    if (spec.target !== undefined) {
      if (spec.target.length === 0) fail(E.ENOENT);
      if (spec.target.length > SYMLINK_MAX) fail(E.ENAMETOOLONG);
    }
    checkName(name);
    // A file created open holds its record from its create's own transaction.
    const holder = spec.open ? this.holder?.id : undefined;
    const row = await this.change(async (c, changed) => {
      const dir = (await this.lock(c, [parent])).get(parent);
      if (!dir) fail(E.ENOENT);
      if (!isDir(dir.mode)) fail(E.ENOTDIR);
      // In a set-group-ID directory new entries take the directory's group, and new
      // subdirectories inherit the bit (as ext4 does).
      let mode = spec.mode;
      const sgid = (dir.mode & S_ISGID) !== 0;
      if (sgid && isDir(mode)) mode |= S_ISGID;
      const fresh = newInode(
        { mode, uid: spec.uid, gid: sgid ? dir.gid : spec.gid, nlink: isDir(mode) ? 2 : 1, size: spec.target?.length, rdev: spec.rdev },
        t,
      );
      // The parent is locked, so the name check inside the statement cannot be overtaken.
      const made = await run(c, 'create', [...inodeValues(fresh), parent, name, spec.target ?? null, isDir(mode) ? 1 : 0, ...timeArgs(t), holder ?? null]);
      if (made.rows.length === 0) fail(E.EEXIST);
      changed.inode(parent);
      changed.entry(parent, name);
      return { ino: made.rows[0].ino as number, ...fresh };
    });
    if (holder !== undefined) this.openHere.set(row.ino, { handles: 1, recorded: Promise.resolve() });
    return row;
  }

  async link(ino: number, parent: number, name: Buffer, t: Timespec): Promise<InodeRow> {
    checkName(name);
    return this.change(async (c, changed) => {
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
      changed.inode(ino, parent);
      changed.entry(parent, name);
      return { ...node, nlink: node.nlink + 1, ctime_s: t.s, ctime_ns: t.ns };
    });
  }

  async unlink(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached> {
    checkName(name);
    return this.change(async (c, changed) => {
      const { rows, inos } = await this.lockNamed(c, [parent], [[parent, name]]);
      this.dirIn(rows, parent);
      const node = this.namedIn(rows, inos[0]);
      if (isDir(node.mode)) fail(E.EISDIR);
      await run(c, 'dropName', [parent, name, node.ino, ...timeArgs(t)]);
      changed.inode(parent, node.ino);
      changed.entry(parent, name);
      return this.detached(c, { ...node, nlink: node.nlink - 1, ctime_s: t.s, ctime_ns: t.ns }, inUse);
    });
  }

  async rmdir(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached> {
    checkName(name);
    return this.change(async (c, changed) => {
      const { rows, inos } = await this.lockNamed(c, [parent], [[parent, name]]);
      this.dirIn(rows, parent);
      const node = this.namedIn(rows, inos[0]);
      if (!isDir(node.mode)) fail(E.ENOTDIR);
      // Locked: no entry can be made in it until this commits.
      if ((await run(c, 'hasChildren', [node.ino])).rows.length > 0) fail(E.ENOTEMPTY);
      await run(c, 'removeEntry', [parent, name]);
      await run(c, 'orphan', [...timeArgs(t), node.ino]);
      await run(c, 'touch', [-1, ...timeArgs(t), parent]); // its ".." is gone
      changed.inode(parent, node.ino);
      changed.entry(parent, name);
      return this.detached(c, { ...node, nlink: 0, ctime_s: t.s, ctime_ns: t.ns }, inUse);
    });
  }

  async rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, t: Timespec, inUse?: InUse): Promise<RenameResult> {
    checkName(name);
    checkName(newName);
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || flags === (RENAME_NOREPLACE | RENAME_EXCHANGE)) fail(E.EINVAL);
    return this.change(async (c, changed) => {
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
      if (flags & RENAME_EXCHANGE) {
        if (!dst) fail(E.ENOENT);
        if (src.ino === dst.ino) return { moved: src, exchanged: dst };
        if (isDir(src.mode)) await this.checkNotAncestor(c, src.ino, newParent);
        if (isDir(dst.mode)) await this.checkNotAncestor(c, dst.ino, parent);
        await run(c, 'retargetEntry', [dst.ino, parent, name]);
        await run(c, 'retargetEntry', [src.ino, newParent, newName]);
        await this.apply(c, renameTouches(parent, newParent, src, dst, true), t);
        changed.inode(parent, newParent, src.ino, dst.ino);
        changed.entry(parent, name);
        changed.entry(newParent, newName);
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
        if (isDir(dst.mode)) await run(c, 'orphan', [...timeArgs(t), dst.ino]);
      } else await run(c, 'addEntry', [newParent, newName, src.ino]);
      await this.apply(c, renameTouches(parent, newParent, src, dst, false), t);
      changed.inode(parent, newParent, src.ino);
      if (dst) changed.inode(dst.ino);
      changed.entry(parent, name);
      changed.entry(newParent, newName);
      const moved = { ...src, ctime_s: t.s, ctime_ns: t.ns };
      if (!dst) return { moved };
      const replaced = await this.detached(c, { ...dst, nlink: isDir(dst.mode) ? 0 : dst.nlink - 1, ctime_s: t.s, ctime_ns: t.ns }, inUse);
      return { moved, replaced };
    });
  }

  async readdir(dir: number, after?: Buffer, limit?: number): Promise<DirPage> {
    return this.session.read(async (pool) => {
      const row = await this.inode(pool, dir);
      if (!isDir(row.mode)) fail(E.ENOTDIR);
      const max = limit ?? null;
      const r = after ? await run(pool, 'listAfter', [dir, after, max]) : await run(pool, 'listFirst', [dir, max]);
      const entries = r.rows as DirRow[];
      const last = entries.at(-1);
      return { entries, next: limit !== undefined && entries.length === limit && last ? last.name : undefined };
    });
  }

  async readlink(ino: number): Promise<Buffer> {
    return this.session.read(async (pool) => {
      const r = await run(pool, 'getSymlink', [ino]);
      if (r.rows.length > 0) return r.rows[0].target as Buffer;
      if (((await this.inode(pool, ino)).mode & S_IFMT) !== S_IFLNK) fail(E.EINVAL);
      return fail(E.EIO, `symlink ${ino} has no target`);
    });
  }

  // ---- extended attributes ----

  async getxattr(ino: number, name: Buffer): Promise<Buffer> {
    checkXattrName(name);
    return this.session.read(async (pool) => {
      const r = await run(pool, 'getXattr', [ino, name]);
      if (r.rows.length > 0) return r.rows[0].value as Buffer;
      await this.inode(pool, ino);
      return fail(E.ENODATA);
    });
  }

  async setxattr(ino: number, name: Buffer, value: Buffer, flags: number, t: Timespec): Promise<void> {
    checkXattrName(name);
    if (value.length > XATTR_SIZE_MAX) fail(E.E2BIG);
    await this.change(async (c, changed) => {
      if (!(await this.lock(c, [ino])).has(ino)) fail(E.ENOENT);
      const exists = (await run(c, 'getXattr', [ino, name])).rows.length > 0;
      if (flags & XATTR_CREATE && exists) fail(E.EEXIST);
      if (flags & XATTR_REPLACE && !exists) fail(E.ENODATA);
      await run(c, 'setXattr', [ino, name, value]);
      await run(c, 'change', [0, ...timeArgs(t), ino]);
      changed.inode(ino);
    });
  }

  async listxattr(ino: number): Promise<Buffer[]> {
    return this.session.read(async (pool) => {
      await this.inode(pool, ino);
      return (await run(pool, 'listXattrs', [ino])).rows.map((r) => r.name as Buffer);
    });
  }

  async removexattr(ino: number, name: Buffer, t: Timespec): Promise<void> {
    checkXattrName(name);
    await this.change(async (c, changed) => {
      if (!(await this.lock(c, [ino])).has(ino)) fail(E.ENOENT);
      if ((await run(c, 'removeXattr', [ino, name])).rowCount === 0) fail(E.ENODATA);
      await run(c, 'change', [0, ...timeArgs(t), ino]);
      changed.inode(ino);
    });
  }

  async anySecurityXattr(): Promise<boolean> {
    return this.session.read(async (pool) => (await run(pool, 'anySecurityXattr', [SECURITY_PREFIX])).rows.length > 0);
  }

  // ---- content ----

  async blocks(ino: number): Promise<BlockRow[]> {
    return this.session.read(async (pool) => (await run(pool, 'listBlocks', [ino])).rows as BlockRow[]);
  }

  async commitContent(commits: readonly ContentCommit[]): Promise<void> {
    if (commits.length === 0) return;
    await this.change(async (c, changed) => {
      // Locked, so a free of one of these inodes by another client waits for this commit.
      await this.lock(c, commits.map((x) => x.ino));
      changed.inode(...commits.map((x) => x.ino));
      if (this.sharedPacks) await this.holdPublished(c, commits);
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

  /**
   * A volume several machines share: every block the commit names must be in the shared
   * pack index, and stay there until the commit ends. Its entries are locked FOR KEY SHARE,
   * which gc's FOR UPDATE waits for (and then sees these rows); an entry gc deleted first
   * is missing here, and the commit refused before it wrote a row (BlocksNotPublished).
   */
  private async holdPublished(c: PoolClient, commits: readonly ContentCommit[]): Promise<void> {
    const wanted = new Map<string, Buffer>();
    for (const x of commits) for (const ref of x.rows.values()) if (ref) wanted.set(ref.hash.toString('latin1'), ref.hash);
    if (wanted.size === 0) return;
    const found = await run(c, 'keyShareEntries', [[...wanted.values()]]);
    for (const row of found.rows as { hash: Buffer }[]) wanted.delete(row.hash.toString('latin1'));
    if (wanted.size > 0) throw new BlocksNotPublished([...wanted.values()]);
  }

  // ---- freeing ----

  async free(ino: number): Promise<Buffer[]> {
    const holder = this.holder;
    return this.change(async (c, changed) => {
      // Our hold goes, and the inode is locked as an unlink locks it (see detached).
      const row = holder
        ? ((await run(c, 'letGo', [holder.id, [ino]])).rows[0] as { nlink: number } | undefined)
        : (await this.lock(c, [ino])).get(ino);
      // Another client may have given it a name again meanwhile, or holds it open: then it stays.
      if (!row || row.nlink > 0 || (await this.heldOpen(c, ino))) return [];
      changed.inode(ino);
      return this.deleteInode(c, ino);
    });
  }

  async unlinkedInodes(): Promise<number[]> {
    // Those another live mount (a volume shared by several machines) holds open stay.
    const expiryMs = this.mount?.expiryMs ?? SESSION_EXPIRY_MS;
    return this.session.read(async (pool) => (await run(pool, 'unlinkedInodes', [expiryMs])).rows.map((r) => r.ino as number));
  }

  async opened(ino: number): Promise<BlockRow[] | undefined> {
    const holder = this.holder;
    if (!holder) return undefined;
    let here = this.openHere.get(ino);
    let reading: Promise<BlockRow[]> | undefined;
    if (!here) {
      // Still held (closed here a moment ago): nothing to record.
      const lingering = this.lingering.get(ino);
      this.lingering.delete(ino);
      lingering?.done([]);
      // As a read (the block map read it replaces): after the changes called before it (a
      // drop of this inode's hold among them), beside other reads; one statement on its
      // own, idempotent, so run again on a failed connection as a read is.
      if (!lingering) reading = this.session.read((pool) => this.hold(pool, holder, ino));
      here = { handles: 0, recorded: reading ?? Promise.resolve() };
      this.openHere.set(ino, here);
    }
    here.handles += 1;
    try {
      await here.recorded;
      return await reading;
    } catch (err) {
      here.handles -= 1;
      if (here.handles === 0 && this.openHere.get(ino) === here) this.openHere.delete(ino);
      throw err;
    }
  }

  async closed(ino: number, keep: boolean): Promise<Buffer[]> {
    const here = this.openHere.get(ino);
    if (!here) return [];
    here.handles -= 1;
    if (here.handles > 0) return [];
    this.openHere.delete(ino);
    if (keep) return [];
    return new Promise((done, failed) => {
      this.lingering.set(ino, { done, failed });
      if (this.lingerTimer) return;
      this.lingerTimer = setTimeout(() => void this.flushClosed(), LINGER_MS);
      this.lingerTimer.unref();
    });
  }

  /**
   * Drops now, in one transaction, the holds of the files whose last handle here closed,
   * and frees those of them that lost their last name meanwhile (another mount's unlink)
   * and no other live session holds; their callers (closed) get what that freed.
   */
  async flushClosed(): Promise<void> {
    clearTimeout(this.lingerTimer);
    this.lingerTimer = undefined;
    const batch = this.lingering;
    const holder = this.holder;
    if (batch.size === 0 || !holder) return;
    this.lingering = new Map();
    try {
      const freed = await this.change(async (c, changed) => {
        const gone = new Map<number, Buffer[]>();
        const rows = (await run(c, 'letGo', [holder.id, [...batch.keys()]])).rows as { ino: number; nlink: number }[];
        for (const row of rows) {
          if (row.nlink > 0 || (await this.heldOpen(c, row.ino))) continue;
          changed.inode(row.ino);
          gone.set(row.ino, await this.deleteInode(c, row.ino));
        }
        return gone;
      });
      for (const [ino, letting] of batch) letting.done(freed.get(ino) ?? []);
    } catch (err) {
      for (const letting of batch.values()) letting.failed(err as Error);
    }
  }

  /**
   * Records that `holder` holds `ino` open (holdOpen) and returns its block map: ENOENT when
   * the inode is gone, EIO when our session is.
   */
  private async hold(pool: Queryable, holder: PgMountSession, ino: number): Promise<BlockRow[]> {
    let rows: BlockRow[];
    try {
      rows = (await run(pool, 'holdOpen', [holder.id, ino])).rows as BlockRow[];
    } catch (err) {
      if ((err as { code?: string }).code === FOREIGN_KEY_VIOLATION) fail(E.EIO, 'the mount session expired: another mount may hold the volume');
      throw err;
    }
    if (rows.length === 0) fail(E.ENOENT);
    return rows.filter((r) => r.idx !== null);
  }

  /** The mount session this engine holds (OpenMetaOptions.mountSession), if any. */
  get mountSession(): PgMountSession | undefined {
    return this.mount;
  }

  /** Follows the other clients' changes on a connection of its own (PgChangeFeed), opened for the first watcher and closed after the last. */
  watchChanges(onChange: (change: ExternalChange) => void): ChangeWatch {
    this.watchers.add(onChange);
    this.feed ??= new PgChangeFeed(this.connectionString, this.clientId, (change) => {
      for (const w of [...this.watchers]) {
        try {
          w(change);
        } catch {
          // A watcher's failure is its own: thrown here it would end the process (the pg
          // client's event), and the other watchers would miss the change.
        }
      }
    });
    const feed = this.feed;
    return {
      ready: feed.ready,
      stop: () => {
        this.watchers.delete(onChange);
        if (this.watchers.size > 0 || this.feed !== feed) return;
        this.feed = undefined;
        void feed.close();
      },
    };
  }

  async close(): Promise<void> {
    await this.flushClosed();
    this.watchers.clear();
    const feed = this.feed;
    this.feed = undefined;
    await feed?.close();
    await this.session.settled();
    try {
      await this.mount?.release();
    } finally {
      await this.session.close();
    }
  }

  // ---- internals ----

  /** A change transaction (PgSession.change) that publishes what `fn` says it changed, with its COMMIT. */
  private change<T>(fn: (c: PoolClient, changed: ChangeNotice) => Promise<T>): Promise<T> {
    let changed = new ChangeNotice();
    return this.session.change(
      (c) => {
        changed = new ChangeNotice(); // a transaction run again starts over
        return fn(c, changed);
      },
      () => changed.statement(this.clientId),
    );
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
   * rows and what each name names under the locks. The names are resolved in the locking
   * statement (so the inodes are locked in order with the directories), and again once
   * the directories are locked: if another client changed one in between, the
   * transaction starts again.
   */
  private async lockNamed(
    c: PoolClient,
    dirs: readonly number[],
    names: readonly [number, Buffer][],
  ): Promise<{ rows: Map<number, InodeRow>; inos: (number | undefined)[] }> {
    const parents = names.map(([p]) => p);
    const keys = names.map(([, n]) => n);
    const locked = await runRaw(c, 'lockNamed', [[...new Set(dirs)], parents, keys]);
    const rows = new Map(locked.rows.map((raw) => {
      const row = inodeFromRaw(raw);
      return [row.ino, row];
    }));
    const inos = (await run(c, 'lookupInos', [parents, keys])).rows.map((r) => (r.ino ?? undefined) as number | undefined);
    for (const ino of inos) {
      // Named by an inode not locked: renamed meanwhile (start again), or an entry whose
      // inode is missing (left for the caller: ENOENT).
      if (ino !== undefined && !rows.has(ino) && (await this.getInode(c, ino))) throw new Restart();
    }
    return { rows, inos };
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

  /**
   * The inode after it lost a name (`attr` as written); freed now when it has none left and
   * nobody uses it: not in use here (`inUse`), and held open by no live session.
   *
   * Both are asked inside the transaction that took the name, under its lock of the inode
   * row (FOR UPDATE), and so is every free: a session records an open (holdOpen) under a key
   * share lock of the same row, so its record either committed before that lock was taken
   * (and the statement after it, in READ COMMITTED, sees it) or waits for this commit and
   * finds the inode gone (its open answers ENOENT) or kept without a name. A session letting
   * go (letGo) locks the row too, so of it and an unlink one sees the other's result: no
   * window where one machine frees what another has just opened, nor where both keep it.
   */
  private async detached(c: PoolClient, attr: InodeRow, inUse: InUse | undefined): Promise<Detached> {
    if (attr.nlink > 0) return { attr };
    if (inUse?.(attr.ino)) {
      // Kept for this mount: recorded as held, so that no other mount frees it meanwhile,
      // until this mount frees it (free), also if its last handle had closed a moment ago.
      if (this.holder) await run(c, 'holdLocked', [this.holder.id, attr.ino]);
      this.lingering.get(attr.ino)?.done([]);
      this.lingering.delete(attr.ino);
      return { attr };
    }
    if (await this.heldOpen(c, attr.ino)) return { attr };
    return { attr, freed: await this.deleteInode(c, attr.ino) };
  }

  /** This mount's session, when the volume is shared (several sessions live at once): the one that records what is open here. */
  private get holder(): PgMountSession | undefined {
    return this.mount?.shared ? this.mount : undefined;
  }

  /** Whether a live session (ours too) holds `ino` open; always false where no session records its opens. */
  private async heldOpen(c: PoolClient, ino: number): Promise<boolean> {
    const holder = this.holder;
    if (!holder) return false;
    return (await run(c, 'heldOpen', [ino, holder.expiryMs])).rows.length > 0;
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

  /** Writes the fields `change` gives, and only those; the row after, or undefined when no such inode (or no field) is given. */
  private async update(on: Queryable, ino: number, change: AttrChange): Promise<InodeRow | undefined> {
    const r = (await runAttrUpdate(on, ino, change))?.rows[0];
    return r && inodeFromRaw(r);
  }
}
