import type Database from 'better-sqlite3';
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
  type MetaBlockParking,
  type MetaEngine,
  type ParkedBlock,
  type NodeSpec,
  type RenameResult,
  type Timespec,
} from './engine';
import { E, fail } from '../posix/errors';
import { ROOT_INO, S_IFLNK, S_IFMT, S_ISGID, isDir } from '../posix/file-system';
import { INODE_COLUMNS, inodeFromRaw, newInode, type BlockRow, type DirRow, type InodeRow, type MetaDb, type Superblock, type VolumeTotals } from './meta-db';
import { SYMLINK_MAX, XATTR_SIZE_MAX, checkName, checkXattrName } from './name-rules';
import { attrUpdate } from './attr-update';
import { renameTouches, type Touch } from './rename-touches';



/**
 * The SQLite engine: every MetaEngine operation as one transaction of the volume's
 * database (BEGIN IMMEDIATE, so another connection's operation cannot slip between a
 * check and its write), joining the open group commit when there is one. Link counts and
 * times are written as field updates (nlink = nlink + ?), never as whole rows read
 * before: two connections changing one inode both keep their change.
 */
export class SqliteEngine implements MetaEngine, MetaBlockParking {
  readonly url: string;
  private readonly s;
  private readonly updates = new Map<string, Database.Statement>();

  constructor(
    private readonly db: Database.Database,
    private readonly meta: MetaDb,
  ) {
    this.url = `sqlite:${meta.path}`;
    this.s = {
      // A miss says ENOENT or ENOTDIR by the parent's mode: one statement for the (common)
      // negative lookup before every create, and for a hit.
      lookupWithParent: db.prepare(
        `SELECT p.mode, ${INODE_COLUMNS.split(', ').map((c) => `i.${c}`).join(', ')}
           FROM inodes p LEFT JOIN dentries d ON d.parent = p.ino AND d.name = ? LEFT JOIN inodes i ON i.ino = d.ino
          WHERE p.ino = ?`,
      ).raw(),
      lookupRow: db.prepare(`SELECT ${INODE_COLUMNS.split(', ').map((c) => `i.${c}`).join(', ')} FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.name = ?`).raw(),
      touch: db.prepare('UPDATE inodes SET nlink = nlink + ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      touchParent: db.prepare('UPDATE inodes SET nlink = nlink + ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ? RETURNING mode, gid'),
      change: db.prepare('UPDATE inodes SET nlink = nlink + ?, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      nlink: db.prepare('UPDATE inodes SET nlink = nlink + ? WHERE ino = ?'),
      orphan: db.prepare('UPDATE inodes SET nlink = 0, ctime_s = ?, ctime_ns = ? WHERE ino = ?'),
      listFirst: db.prepare(
        'SELECT d.name AS name, d.ino AS ino, i.mode AS mode FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? ORDER BY d.name LIMIT ?',
      ),
      listAfter: db.prepare(
        'SELECT d.name AS name, d.ino AS ino, i.mode AS mode FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?',
      ),
    };
  }

  async superblock(): Promise<Superblock> {
    return this.meta.superblock();
  }

  // ---- durability ----

  setGroupCommit(ms: number): void {
    this.meta.groupCommitMs = ms;
  }

  async commitGroup(): Promise<void> {
    this.meta.commitGroup();
  }

  async barrier(): Promise<void> {
    await this.meta.syncLog();
  }

  // ---- names and attributes ----

  async lookup(parent: number, name: Buffer): Promise<InodeRow> {
    checkName(name);
    const r = this.s.lookupWithParent.get(name, parent) as unknown[] | undefined;
    if (!r) fail(E.ENOENT);
    if (!isDir(r[0] as number)) fail(E.ENOTDIR);
    if (r[1] === null) fail(E.ENOENT);
    return inodeFromRaw(r, 1);
  }

  async getattr(ino: number): Promise<InodeRow> {
    return this.inode(ino);
  }

  async setattr(ino: number, change: AttrChange): Promise<InodeRow> {
    // One statement (UPDATE ... RETURNING), in the open group like every other change, so
    // a chmod or utimens per file of a tar or cp -a is not a commit of its own.
    const row = this.meta.writeTransaction(() => this.update(ino, change) ?? this.meta.getInode(ino));
    if (!row) fail(E.ENOENT);
    return row;
  }

  async parentOf(ino: number): Promise<number | undefined> {
    return ino === ROOT_INO ? undefined : this.meta.parentOf(ino);
  }

  async statfs(): Promise<VolumeTotals> {
    return this.meta.totals();
  }

  // ---- the namespace ----

  async mknod(parent: number, name: Buffer, spec: NodeSpec, t: Timespec): Promise<InodeRow> {
    if (spec.target !== undefined) {
      if (spec.target.length === 0) fail(E.ENOENT);
      if (spec.target.length > SYMLINK_MAX) fail(E.ENAMETOOLONG);
    }
    checkName(name);
    return this.meta.writeTransaction(() => {
      // The parent is updated first, which also reads it (a failure below undoes it).
      const dir = this.s.touchParent.get(isDir(spec.mode) ? 1 : 0, t.s, t.ns, t.s, t.ns, parent) as { mode: number; gid: number } | undefined;
      if (!dir) fail(E.ENOENT);
      if (!isDir(dir.mode)) fail(E.ENOTDIR);
      if (this.meta.lookup(parent, name) !== undefined) fail(E.EEXIST);
      // In a set-group-ID directory new entries take the directory's group, and new
      // subdirectories inherit the bit (as ext4 does).
      let mode = spec.mode;
      const sgid = (dir.mode & S_ISGID) !== 0;
      if (sgid && isDir(mode)) mode |= S_ISGID;
      const fresh = newInode(
        { mode, uid: spec.uid, gid: sgid ? dir.gid : spec.gid, nlink: isDir(mode) ? 2 : 1, size: spec.target?.length, rdev: spec.rdev },
        t,
      );
      const ino = this.meta.insertInode(fresh);
      this.meta.addEntry(parent, name, ino);
      if (spec.target) this.meta.setSymlinkTarget(ino, spec.target);
      return { ino, ...fresh };
    });
  }

  async link(ino: number, parent: number, name: Buffer, t: Timespec): Promise<InodeRow> {
    checkName(name);
    return this.meta.writeTransaction(() => {
      const node = this.inode(ino);
      if (isDir(node.mode)) fail(E.EPERM);
      this.dir(parent);
      if (this.meta.lookup(parent, name) !== undefined) fail(E.EEXIST);
      this.meta.addEntry(parent, name, ino);
      this.s.change.run(1, t.s, t.ns, ino);
      this.s.touch.run(0, t.s, t.ns, t.s, t.ns, parent);
      return { ...node, nlink: node.nlink + 1, ctime_s: t.s, ctime_ns: t.ns };
    });
  }

  async unlink(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached> {
    checkName(name);
    return this.meta.writeTransaction(() => {
      this.dir(parent);
      const node = this.named(parent, name);
      if (isDir(node.mode)) fail(E.EISDIR);
      this.meta.removeEntry(parent, name);
      this.s.change.run(-1, t.s, t.ns, node.ino);
      this.s.touch.run(0, t.s, t.ns, t.s, t.ns, parent);
      return this.detached({ ...node, nlink: node.nlink - 1, ctime_s: t.s, ctime_ns: t.ns }, inUse);
    });
  }

  async rmdir(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached> {
    checkName(name);
    return this.meta.writeTransaction(() => {
      this.dir(parent);
      const node = this.named(parent, name);
      if (!isDir(node.mode)) fail(E.ENOTDIR);
      if (this.meta.hasChildren(node.ino)) fail(E.ENOTEMPTY);
      this.meta.removeEntry(parent, name);
      this.s.orphan.run(t.s, t.ns, node.ino);
      this.s.touch.run(-1, t.s, t.ns, t.s, t.ns, parent); // its ".." is gone
      return this.detached({ ...node, nlink: 0, ctime_s: t.s, ctime_ns: t.ns }, inUse);
    });
  }

  async rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, t: Timespec, inUse?: InUse): Promise<RenameResult> {
    checkName(name);
    checkName(newName);
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || flags === (RENAME_NOREPLACE | RENAME_EXCHANGE)) fail(E.EINVAL);
    return this.meta.writeTransaction(() => {
      this.dir(parent);
      if (newParent !== parent) this.dir(newParent);
      const src = this.named(parent, name);
      const dstIno = this.meta.lookup(newParent, newName);
      const dst = dstIno === undefined ? undefined : this.inode(dstIno);
      if (flags & RENAME_EXCHANGE) {
        if (!dst) fail(E.ENOENT);
        if (src.ino === dst.ino) return { moved: src, exchanged: dst };
        if (isDir(src.mode)) this.checkNotAncestor(src.ino, newParent);
        if (isDir(dst.mode)) this.checkNotAncestor(dst.ino, parent);
        this.meta.retargetEntry(parent, name, dst.ino);
        this.meta.retargetEntry(newParent, newName, src.ino);
        this.apply(renameTouches(parent, newParent, src, dst, true), t);
        return { moved: { ...src, ctime_s: t.s, ctime_ns: t.ns }, exchanged: { ...dst, ctime_s: t.s, ctime_ns: t.ns } };
      }

      if (dst) {
        // Two names of one inode: POSIX says do nothing and succeed.
        if (dst.ino === src.ino) return { moved: src };
        if (flags & RENAME_NOREPLACE) fail(E.EEXIST);
        if (isDir(src.mode)) {
          if (!isDir(dst.mode)) fail(E.ENOTDIR);
          if (this.meta.hasChildren(dst.ino)) fail(E.ENOTEMPTY);
        } else if (isDir(dst.mode)) fail(E.EISDIR);
      }
      if (isDir(src.mode)) this.checkNotAncestor(src.ino, newParent);

      this.meta.removeEntry(parent, name);
      if (dst) {
        this.meta.retargetEntry(newParent, newName, src.ino);
        if (isDir(dst.mode)) this.s.orphan.run(t.s, t.ns, dst.ino);
      } else this.meta.addEntry(newParent, newName, src.ino);
      this.apply(renameTouches(parent, newParent, src, dst, false), t);
      const moved = { ...src, ctime_s: t.s, ctime_ns: t.ns };
      if (!dst) return { moved };
      return { moved, replaced: this.detached({ ...dst, nlink: isDir(dst.mode) ? 0 : dst.nlink - 1, ctime_s: t.s, ctime_ns: t.ns }, inUse) };
    });
  }

  async readdir(dir: number, after?: Buffer, limit?: number): Promise<DirPage> {
    this.dir(dir);
    const max = limit ?? -1; // SQLite: a negative LIMIT is no limit
    const entries = (after ? this.s.listAfter.all(dir, after, max) : this.s.listFirst.all(dir, max)) as DirRow[];
    const last = entries.at(-1);
    return { entries, next: limit !== undefined && entries.length === limit && last ? last.name : undefined };
  }

  async readlink(ino: number): Promise<Buffer> {
    const target = this.meta.symlinkTarget(ino);
    if (target) return target;
    if ((this.inode(ino).mode & S_IFMT) !== S_IFLNK) fail(E.EINVAL);
    return fail(E.EIO, `symlink ${ino} has no target`);
  }

  // ---- extended attributes ----

  async getxattr(ino: number, name: Buffer): Promise<Buffer> {
    checkXattrName(name);
    const value = this.meta.getXattr(ino, name);
    if (value !== undefined) return value;
    this.inode(ino);
    return fail(E.ENODATA);
  }

  async setxattr(ino: number, name: Buffer, value: Buffer, flags: number, t: Timespec): Promise<void> {
    checkXattrName(name);
    if (value.length > XATTR_SIZE_MAX) fail(E.E2BIG);
    this.meta.writeTransaction(() => {
      this.inode(ino);
      const exists = this.meta.getXattr(ino, name) !== undefined;
      if (flags & XATTR_CREATE && exists) fail(E.EEXIST);
      if (flags & XATTR_REPLACE && !exists) fail(E.ENODATA);
      this.meta.setXattr(ino, name, value);
      this.s.change.run(0, t.s, t.ns, ino);
    });
  }

  async listxattr(ino: number): Promise<Buffer[]> {
    this.inode(ino);
    return this.meta.listXattrs(ino);
  }

  async removexattr(ino: number, name: Buffer, t: Timespec): Promise<void> {
    checkXattrName(name);
    this.meta.writeTransaction(() => {
      this.inode(ino);
      if (!this.meta.removeXattr(ino, name)) fail(E.ENODATA);
      this.s.change.run(0, t.s, t.ns, ino);
    });
  }

  async anySecurityXattr(): Promise<boolean> {
    return this.meta.anySecurityXattr();
  }

  // ---- content ----

  async blocks(ino: number): Promise<BlockRow[]> {
    return this.meta.listBlocks(ino);
  }

  async commitContent(commits: readonly ContentCommit[]): Promise<void> {
    this.meta.writeTransaction(() => this.writeContent(commits));
  }

  async commitContentParking(commits: readonly ContentCommit[], blocks: readonly ParkedBlock[]): Promise<number> {
    return this.meta.writeTransaction(() => {
      const seq = this.meta.parked.park(blocks);
      this.writeContent(commits);
      return seq;
    });
  }

  async unpark(seq: number): Promise<void> {
    this.meta.transaction(() => this.meta.parked.drop(seq));
  }

  private writeContent(commits: readonly ContentCommit[]): void {
    for (const c of commits) {
      for (const [idx, ref] of c.rows) {
        if (ref) this.meta.setBlock(c.ino, idx, ref.hash, ref.len);
        else this.meta.deleteBlock(c.ino, idx);
      }
      this.update(c.ino, { ...c.attrs, size: c.size, storedBytes: c.storedBytes });
    }
  }

  // ---- freeing ----

  async free(ino: number): Promise<Buffer[]> {
    return this.meta.writeTransaction(() => {
      const row = this.meta.getInode(ino);
      // Another client may have given it a name again meanwhile: then it stays.
      if (!row || row.nlink > 0) return [];
      return this.meta.deleteInode(ino);
    });
  }

  async unlinkedInodes(): Promise<number[]> {
    return this.meta.unlinkedInodes();
  }

  async close(): Promise<void> {
    this.meta.close();
  }

  // ---- internals (run inside the callers' transactions) ----

  private inode(ino: number): InodeRow {
    const row = this.meta.getInode(ino);
    if (!row) fail(E.ENOENT);
    return row;
  }

  private dir(ino: number): InodeRow {
    const row = this.inode(ino);
    if (!isDir(row.mode)) fail(E.ENOTDIR);
    return row;
  }

  /** The inode `name` in `parent` names; ENOENT (also for an entry whose inode is missing). */
  private named(parent: number, name: Buffer): InodeRow {
    const r = this.s.lookupRow.get(parent, name) as unknown[] | undefined;
    if (!r) fail(E.ENOENT);
    return inodeFromRaw(r);
  }

  /** The inode after it lost a name (`attr` as written); freed now when it has none left and nobody uses it. */
  private detached(attr: InodeRow, inUse: InUse | undefined): Detached {
    if (attr.nlink > 0 || inUse?.(attr.ino)) return { attr };
    return { attr, freed: this.meta.deleteInode(attr.ino) };
  }

  /** EINVAL when moving directory `ino` under `target` would put it inside itself. */
  private checkNotAncestor(ino: number, target: number): void {
    let cur: number | undefined = target;
    for (let depth = 0; cur !== undefined && depth < 100000; depth++) {
      if (cur === ino) fail(E.EINVAL);
      if (cur === ROOT_INO) return;
      cur = this.meta.parentOf(cur);
    }
  }

  private apply(touches: Map<number, Touch>, t: Timespec): void {
    for (const [ino, x] of touches) {
      if (x.modified) this.s.touch.run(x.nlink, t.s, t.ns, t.s, t.ns, ino);
      else if (x.changed) this.s.change.run(x.nlink, t.s, t.ns, ino);
      else if (x.nlink !== 0) this.s.nlink.run(x.nlink, ino);
    }
  }

  /**
   * Writes the fields `change` gives, and only those (one cached statement per set of
   * fields); the row after, or undefined when no such inode (or no field) is given.
   */
  private update(ino: number, change: AttrChange): InodeRow | undefined {
    const u = attrUpdate(change);
    if (!u) return undefined;
    let stmt = this.updates.get(u.key);
    if (!stmt) {
      stmt = this.db.prepare(`UPDATE inodes SET ${u.sets(() => '?')} WHERE ino = ? RETURNING ${INODE_COLUMNS}`).raw();
      this.updates.set(u.key, stmt);
    }
    const r = stmt.get(...u.args, ino) as unknown[] | undefined;
    return r && inodeFromRaw(r);
  }
}
