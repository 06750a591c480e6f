import { statfsSync } from 'node:fs';
import {
  Falloc,
  NAME_MAX,
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  ROOT_INO,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_ISGID,
  Whence,
  XATTR_CREATE,
  XATTR_REPLACE,
  isDir,
  isReg,
  type Attr,
  type AttrChanges,
  type Caller,
  type CopyRange,
  type DirEntry,
  type Entry,
  type FileSystem,
  type Opened,
  type StatFs,
} from '../posix/file-system';
import { newInode, type InodeRow } from '../meta/meta-db';
import { BlockWriter, type ContentSource } from './block-writer';
import { Committer } from './committer';
import { E, FsError, fail } from '../posix/errors';
import { FileContent } from './file-content';
import { Reclaimer } from './reclaimer';
import { copyRange } from './range-copy';
import { SpaceGuard } from './space-guard';
import type { SuperChunkPacker } from '../store/super-chunk-packer';
import type { ChunkCacheStats } from '../store/chunk-cache';
import { now, type Timespec } from './time';
import type { Volume } from './volume';

export { NAME_MAX, ROOT_INO };
const XATTR_NAME_MAX = 255;
const XATTR_SIZE_MAX = 65536;

const O_ACCMODE = 3;
const O_RDONLY = 0;

export interface FsLog {
  error(msg: string, err?: unknown): void;
  info(msg: string): void;
}

export interface FsOptions {
  /** Make data durable when a file written through a handle is closed (DESIGN invariant 3). */
  syncOnClose: boolean;
  /** Commit dirty file content this often even if nobody closes or fsyncs (ms). */
  writebackIntervalMs: number;
  /** Group metadata changes into one SQLite commit for up to this long (ms; 0: commit each). */
  metadataCommitMs: number;
  /** Told when the first security.* xattr appears (the binding then stops answering those itself). */
  onSecurityXattr?: () => void;
  /** The remote cache in front of the block store, when the volume has a remote. */
  cache?: ContentSource;
  /** Bytes to fetch ahead of a sequential reader (with a cache). */
  readaheadBytes?: number;
}

/** A mounted volume's in-memory state, as `pogfs stats` shows it. */
export interface DaemonStatus {
  chunkCache: ChunkCacheStats;
  queuedShortBlocks: number;
  superChunks: number;
  openFiles: number;
}

/** An inode the kernel knows of or that is open: its row, counts and (for open files) content. */
interface Node {
  row: InodeRow;
  /** References the kernel holds (entry replies minus forgets). */
  lookups: number;
  /** Open file handles. */
  opens: number;
  content?: FileContent;
}

interface FileHandle {
  ino: number;
  /** Opened for writing: closing it makes the file's content durable. */
  writable: boolean;
}

/**
 * POSIX semantics of a pogfs volume, as plain calls (the FUSE adapter in `src/fuse/`
 * drives them for a mount; tests call them directly). Permission checks are the
 * kernel's (`default_permissions`); everything else a Linux filesystem decides is
 * decided here.
 */
export class PogFs implements FileSystem {
  private readonly nodes = new Map<number, Node>();
  private readonly files = new Map<number, FileHandle>();
  private readonly dirs = new Map<number, DirEntry[]>();
  private nextFh = 1;
  readonly writer: BlockWriter;
  readonly reclaimer: Reclaimer;
  readonly packer: SuperChunkPacker;
  private readonly committer: Committer;
  /** Says when the disk is too full for new data or names (ENOSPC), and why a commit failed. */
  readonly space: SpaceGuard;
  private readonly writeback: NodeJS.Timeout;
  private securityXattrs: boolean;

  constructor(
    readonly volume: Volume,
    private readonly options: FsOptions,
    private readonly log: FsLog,
  ) {
    this.writer = new BlockWriter(volume.store, options.cache ?? volume.store);
    this.reclaimer = new Reclaimer(volume.meta, volume.store, 1000, (err) => log.error('releasing blocks failed', err));
    this.committer = new Committer(volume.meta, this.writer, this.reclaimer);
    this.space = new SpaceGuard({
      path: volume.path,
      storeFreeBytes: () => volume.store.space().freeBytes,
      bufferedBytes: () => this.writer.bufferedBytes(),
    });
    this.packer = volume.packer((err) => log.error('packing short blocks into super-chunks failed (they stay loose; nothing is lost)', err));
    this.securityXattrs = volume.meta.anySecurityXattr();
    volume.meta.groupCommitMs = options.metadataCommitMs;
    this.writeback = setInterval(() => {
      this.commitAll().catch((err) => log.error('periodic writeback failed', err));
    }, options.writebackIntervalMs);
    this.writeback.unref();
  }

  get hasSecurityXattrs(): boolean {
    return this.securityXattrs;
  }

  /** Frees inodes left unlinked-but-open by a crash. */
  async recoverUnlinked(): Promise<number> {
    const dead = this.volume.meta.unlinkedInodes();
    for (const ino of dead) {
      const hashes = this.volume.meta.transaction(() => this.volume.meta.deleteInode(ino));
      this.reclaimer.release(hashes);
    }
    if (dead.length > 0) await this.reclaimer.run();
    return dead.length;
  }

  /** Commits every open file's content, then drops released blocks: the unmount path. */
  async shutdown(): Promise<void> {
    clearInterval(this.writeback);
    await this.commitAll();
    await this.reclaimer.run();
    await this.packer.flush();
    this.volume.meta.barrier();
  }

  /**
   * Brings the volume to a state gc can reason about: open files committed, blocks in
   * flight stored, released references dropped.
   */
  async quiesceForGc(): Promise<void> {
    await this.commitAll();
    await this.writer.drain();
    await this.reclaimer.run();
    await this.packer.flush();
  }

  /** What the mounted volume holds in memory and in its queues (for `pogfs stats` on a mount). */
  status(): DaemonStatus {
    const c = this.volume.store.chunkStats();
    return { chunkCache: c.cache, queuedShortBlocks: c.queuedBlocks, superChunks: c.chunks, openFiles: this.files.size };
  }

  /** The inode at a path relative to the root (for pin/unpin); ENOENT and ENOTDIR as a lookup would say. */
  inoOfPath(path: string): number {
    let ino = ROOT_INO;
    for (const part of path.split('/').filter((p) => p !== '' && p !== '.')) {
      if (part === '..') fail(E.EINVAL);
      const dir = this.node(ino);
      if (!isDir(dir.row.mode)) fail(E.ENOTDIR);
      const next = this.volume.meta.lookup(ino, Buffer.from(part));
      if (next === undefined) fail(E.ENOENT);
      ino = next;
    }
    return ino;
  }

  /** Keys (hash as latin1) of blocks in use right now that may lack a committed block row. */
  liveBlockKeys(): Set<string> {
    const keys = new Set<string>();
    this.writer.collectBlockKeys(keys);
    for (const node of this.nodes.values()) node.content?.collectBlockKeys(keys);
    return keys;
  }

  async commitAll(): Promise<void> {
    const work: Promise<void>[] = [];
    for (const node of this.nodes.values()) if (node.content?.dirty) work.push(this.commit(node));
    await Promise.all(work);
  }

  // ---- lookups and attributes ----

  lookup(parent: number, name: Buffer, _ctx?: Caller): Entry {
    checkName(name);
    const dir = this.node(parent);
    if (!isDir(dir.row.mode)) fail(E.ENOTDIR);
    const ino = this.volume.meta.lookup(parent, name);
    if (ino === undefined) fail(E.ENOENT);
    return this.entry(this.node(ino));
  }

  forget(ino: number, nlookup: number): void {
    const node = this.nodes.get(ino);
    if (!node) return;
    node.lookups = Math.max(0, node.lookups - nlookup);
    this.releaseIfUnused(node);
  }

  getattr(ino: number, _fh?: number, _ctx?: Caller): Attr {
    return this.attr(this.node(ino));
  }

  async setattr(ino: number, ch: AttrChanges, _fh?: number, _ctx?: Caller): Promise<Attr> {
    const node = this.node(ino);
    const row = node.row;
    const t = now();
    if (ch.mode !== undefined) row.mode = (row.mode & S_IFMT) | (ch.mode & 0o7777);
    if (ch.uid !== undefined) row.uid = ch.uid;
    if (ch.gid !== undefined) row.gid = ch.gid;
    if (ch.atime !== undefined) setTime(row, 'atime', ch.atime === 'now' ? t : ch.atime);
    if (ch.mtime !== undefined) setTime(row, 'mtime', ch.mtime === 'now' ? t : ch.mtime);
    setTime(row, 'ctime', ch.ctime ?? t);
    if (ch.size !== undefined) {
      if (isDir(row.mode)) fail(E.EISDIR);
      if (!isReg(row.mode)) fail(E.EINVAL);
      if (ch.size < 0 || !Number.isSafeInteger(ch.size)) fail(E.EINVAL);
      const content = this.content(node);
      if (ch.size !== content.size) {
        await content.truncate(ch.size);
        if (ch.mtime === undefined) setTime(row, 'mtime', t);
      }
      // A truncate with no open handle is committed now: nothing else would commit it.
      if (node.opens === 0) await this.commit(node);
    }
    // Also after a commit: a truncate to the current size commits nothing, yet the
    // other changes of the same call (times, mode) must reach the row.
    this.persist(node);
    if (node.opens === 0) this.dropContent(node);
    return this.attr(node);
  }

  readlink(ino: number, _ctx?: Caller): Buffer {
    const target = this.volume.meta.symlinkTarget(ino);
    if (!target) fail(E.EINVAL);
    return target;
  }

  access(ino: number, mask: number, ctx: Caller): void {
    const row = this.node(ino).row;
    if (mask === 0) return;
    let bits: number;
    if (ctx.uid === 0) {
      // root may read and write anything, and execute what anyone may execute
      if (!(mask & 1) || isDir(row.mode) || row.mode & 0o111) return;
      fail(E.EACCES);
    } else if (ctx.uid === row.uid) bits = (row.mode >> 6) & 7;
    else if (ctx.gid === row.gid) bits = (row.mode >> 3) & 7;
    else bits = row.mode & 7;
    if ((bits & mask) !== mask) fail(E.EACCES);
  }

  statfs(_ino?: number): StatFs {
    const backing = statfsSync(this.volume.path);
    const totals = this.volume.meta.totals();
    // Free is what new data may really use: the disk's free space and the store's free
    // pages, less what is buffered and the reserve writes never get (as df shows ext4's).
    this.space.measure();
    const free = Math.floor(this.space.writableBytes() / backing.bsize);
    return {
      // f_bsize as f_frsize: counts are in f_frsize units, and programs that multiply by
      // f_bsize (Node's statfs among them) would otherwise see 32 times the room.
      bsize: backing.bsize,
      frsize: backing.bsize,
      blocks: backing.blocks,
      bfree: Math.min(backing.blocks, free),
      bavail: Math.min(backing.blocks, free),
      files: totals.inodes + backing.ffree,
      ffree: backing.ffree,
      favail: backing.ffree,
      namemax: NAME_MAX,
    };
  }

  // ---- namespace ----

  mknod(parent: number, name: Buffer, mode: number, rdev: number, ctx: Caller): Entry {
    return this.entry(this.makeNode(parent, name, mode, rdev, ctx));
  }

  mkdir(parent: number, name: Buffer, mode: number, ctx: Caller): Entry {
    return this.entry(this.makeNode(parent, name, S_IFDIR | (mode & 0o7777), 0, ctx));
  }

  symlink(target: Buffer, parent: number, name: Buffer, ctx: Caller): Entry {
    if (target.length === 0) fail(E.ENOENT);
    if (target.length > 4095) fail(E.ENAMETOOLONG);
    return this.entry(this.makeNode(parent, name, S_IFLNK | 0o777, 0, ctx, target));
  }

  create(parent: number, name: Buffer, mode: number, flags: number, ctx: Caller): Entry & Opened {
    const node = this.makeNode(parent, name, S_IFREG | (mode & 0o7777), 0, ctx);
    const entry = this.entry(node);
    return { ...entry, ...this.openNode(node, flags) };
  }

  link(ino: number, newParent: number, newName: Buffer, _ctx?: Caller): Entry {
    checkName(newName);
    const node = this.node(ino);
    if (isDir(node.row.mode)) fail(E.EPERM);
    const dir = this.dirNode(newParent);
    if (this.volume.meta.lookup(newParent, newName) !== undefined) fail(E.EEXIST);
    this.space.admitMetadata();
    const t = now();
    this.volume.meta.transaction(() => {
      this.volume.meta.addEntry(newParent, newName, ino);
      node.row.nlink += 1;
      setTime(node.row, 'ctime', t);
      touchDir(dir.row, t);
      this.persist(node);
      this.persist(dir);
    });
    return this.entry(node);
  }

  async unlink(parent: number, name: Buffer, _ctx?: Caller): Promise<void> {
    checkName(name);
    const dir = this.dirNode(parent);
    const ino = this.volume.meta.lookup(parent, name);
    if (ino === undefined) fail(E.ENOENT);
    const node = this.node(ino);
    if (isDir(node.row.mode)) fail(E.EISDIR);
    const t = now();
    this.volume.meta.transaction(() => {
      this.volume.meta.removeEntry(parent, name);
      node.row.nlink -= 1;
      setTime(node.row, 'ctime', t);
      touchDir(dir.row, t);
      this.persist(node);
      this.persist(dir);
    });
    this.releaseIfUnused(node);
  }

  rmdir(parent: number, name: Buffer, _ctx?: Caller): void {
    checkName(name);
    const dir = this.dirNode(parent);
    const ino = this.volume.meta.lookup(parent, name);
    if (ino === undefined) fail(E.ENOENT);
    const node = this.node(ino);
    if (!isDir(node.row.mode)) fail(E.ENOTDIR);
    if (this.volume.meta.hasChildren(ino)) fail(E.ENOTEMPTY);
    const t = now();
    this.volume.meta.transaction(() => {
      this.volume.meta.removeEntry(parent, name);
      node.row.nlink = 0;
      setTime(node.row, 'ctime', t);
      dir.row.nlink -= 1;
      touchDir(dir.row, t);
      this.persist(node);
      this.persist(dir);
    });
    this.releaseIfUnused(node);
  }

  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, _ctx?: Caller): void {
    checkName(name);
    checkName(newName);
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) || flags === (RENAME_NOREPLACE | RENAME_EXCHANGE)) fail(E.EINVAL);
    const meta = this.volume.meta;
    const from = this.dirNode(parent);
    const to = this.dirNode(newParent);
    const srcIno = meta.lookup(parent, name);
    if (srcIno === undefined) fail(E.ENOENT);
    const src = this.node(srcIno);
    const dstIno = meta.lookup(newParent, newName);
    const dst = dstIno === undefined ? undefined : this.node(dstIno);
    const t = now();

    if (flags & RENAME_EXCHANGE) {
      if (!dst) fail(E.ENOENT);
      if (srcIno === dstIno) return;
      if (isDir(src.row.mode)) this.checkNotAncestor(srcIno, newParent);
      if (isDir(dst.row.mode)) this.checkNotAncestor(dst.row.ino, parent);
      meta.transaction(() => {
        meta.retargetEntry(parent, name, dst.row.ino);
        meta.retargetEntry(newParent, newName, srcIno);
        if (parent !== newParent && isDir(src.row.mode) !== isDir(dst.row.mode)) {
          const delta = isDir(src.row.mode) ? 1 : -1;
          to.row.nlink += delta;
          from.row.nlink -= delta;
        }
        for (const n of [src, dst]) setTime(n.row, 'ctime', t);
        touchDir(from.row, t);
        touchDir(to.row, t);
        for (const n of new Set([src, dst, from, to])) this.persist(n);
      });
      return;
    }

    if (dst) {
      // Two names of one inode: POSIX says do nothing and succeed.
      if (dst.row.ino === srcIno) return;
      if (flags & RENAME_NOREPLACE) fail(E.EEXIST);
      if (isDir(src.row.mode)) {
        if (!isDir(dst.row.mode)) fail(E.ENOTDIR);
        if (meta.hasChildren(dst.row.ino)) fail(E.ENOTEMPTY);
      } else if (isDir(dst.row.mode)) fail(E.EISDIR);
    }
    if (isDir(src.row.mode)) this.checkNotAncestor(srcIno, newParent);

    meta.transaction(() => {
      meta.removeEntry(parent, name);
      if (dst) {
        meta.retargetEntry(newParent, newName, srcIno);
        if (isDir(dst.row.mode)) {
          dst.row.nlink = 0;
          to.row.nlink -= 1; // the replaced directory's ".." is gone
        } else dst.row.nlink -= 1;
        setTime(dst.row, 'ctime', t);
        this.persist(dst);
      } else meta.addEntry(newParent, newName, srcIno);
      if (isDir(src.row.mode) && parent !== newParent) {
        from.row.nlink -= 1;
        to.row.nlink += 1;
      }
      setTime(src.row, 'ctime', t);
      touchDir(from.row, t);
      touchDir(to.row, t);
      for (const n of new Set([src, from, to])) this.persist(n);
    });
    if (dst) this.releaseIfUnused(dst);
  }

  // ---- files ----

  open(ino: number, flags: number, _ctx?: Caller): Opened {
    const node = this.node(ino);
    if (isDir(node.row.mode)) fail(E.EISDIR);
    return this.openNode(node, flags);
  }

  read(ino: number, fh: number, size: number, offset: number): Buffer | Promise<Buffer> {
    const node = this.handleNode(ino, fh);
    if (!node.content) fail(E.EBADF);
    return node.content.read(offset, size);
  }

  write(ino: number, fh: number, data: Buffer, offset: number, _ctx?: Caller): number | Promise<number> {
    const node = this.handleNode(ino, fh);
    if (!node.content) fail(E.EBADF);
    if (!Number.isSafeInteger(offset + data.length)) fail(E.EFBIG);
    this.space.admitData(data.length);
    const applying = node.content.write(data, offset);
    const t = now();
    setTime(node.row, 'mtime', t);
    setTime(node.row, 'ctime', t);
    if (applying) return applying.then(() => this.writer.admit()).then(() => data.length);
    const wait = this.writer.admit();
    return wait ? wait.then(() => data.length) : data.length;
  }

  async flush(ino: number, fh: number): Promise<void> {
    const handle = this.files.get(fh);
    const node = this.nodes.get(ino);
    if (!handle || !node) return;
    // The kernel writes cached pages back through any writable handle, so the test is
    // "could this handle have written", not "did it".
    if (handle.writable && node.content?.dirty && this.options.syncOnClose) await this.commit(node);
  }

  async fsync(ino: number, _fh?: number, _datasync?: boolean): Promise<void> {
    const node = this.node(ino);
    if (node.content?.dirty) await this.commit(node);
    else this.volume.meta.barrier();
  }

  release(ino: number, fh: number, _flags?: number): void {
    this.files.delete(fh);
    const node = this.nodes.get(ino);
    if (!node) return;
    node.opens -= 1;
    if (node.opens > 0) return;
    if (!node.content?.dirty || node.row.nlink === 0) {
      this.dropContent(node);
      this.releaseIfUnused(node);
      return;
    }
    // Nobody waits for this commit (a close that had to be durable was made so by its
    // flush), so the next files' commits can join its round. The content stays in
    // memory, readable, until it is committed; a failed commit is retried by writeback.
    this.commit(node, false).then(
      () => {
        if (this.nodes.get(ino) !== node) return; // freed meanwhile (unlinked and forgotten)
        this.dropContent(node);
        this.releaseIfUnused(node);
      },
      (err) => this.log.error(`committing inode ${ino} after its last close failed; writeback retries it`, err),
    );
  }

  /**
   * fallocate(2): mode 0 and KEEP_SIZE reserve nothing (a deduplicating, compressing
   * store cannot promise room ahead, see the README) and only extend the size, as a
   * hole; PUNCH_HOLE (always with KEEP_SIZE) and ZERO_RANGE release the whole blocks of
   * the range and zero the partial ones. Other modes: EOPNOTSUPP.
   */
  async fallocate(ino: number, fh: number, mode: number, offset: number, length: number): Promise<void> {
    const node = this.handleNode(ino, fh);
    const content = node.content;
    if (!content) fail(E.ENODEV);
    if (!this.files.get(fh)?.writable) fail(E.EBADF);
    if (mode & ~(Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE | Falloc.ZERO_RANGE)) fail(E.EOPNOTSUPP);
    if (mode & Falloc.PUNCH_HOLE && (!(mode & Falloc.KEEP_SIZE) || mode & Falloc.ZERO_RANGE)) fail(E.EOPNOTSUPP);
    if (offset < 0 || length <= 0) fail(E.EINVAL);
    const end = offset + length;
    if (!Number.isSafeInteger(end)) fail(E.EFBIG);
    const sizeBefore = content.size;
    if (mode & (Falloc.PUNCH_HOLE | Falloc.ZERO_RANGE)) await content.punchHole(offset, length);
    if (!(mode & Falloc.KEEP_SIZE) && end > content.size) await content.truncate(end);
    if (mode & (Falloc.PUNCH_HOLE | Falloc.ZERO_RANGE) || content.size !== sizeBefore) {
      const t = now();
      setTime(node.row, 'mtime', t);
      setTime(node.row, 'ctime', t);
    }
  }

  /** SEEK_DATA / SEEK_HOLE from the block map; ENXIO at or past the end. */
  lseek(ino: number, fh: number, offset: number, whence: number): number {
    const node = this.handleNode(ino, fh);
    if (whence !== Whence.DATA && whence !== Whence.HOLE) fail(E.EINVAL);
    if (!node.content) fail(E.ENXIO);
    const at = node.content.seek(offset, whence === Whence.DATA);
    if (at === undefined) fail(E.ENXIO);
    return at;
  }

  /**
   * copy_file_range(2): whole blocks by reference, the rest as bytes (see copyRange).
   * The kernel has written back the dirty pages of both ranges first and drops the
   * destination's cached pages of the range after the reply.
   */
  async copyFileRange(r: CopyRange): Promise<number> {
    const src = this.handleNode(r.inoIn, r.fhIn);
    const dst = this.handleNode(r.inoOut, r.fhOut);
    if (!src.content || !dst.content) fail(E.EINVAL);
    if (!this.files.get(r.fhOut)?.writable) fail(E.EBADF);
    if (r.flags !== 0 || r.offIn < 0 || r.offOut < 0) fail(E.EINVAL);
    if (!Number.isSafeInteger(r.offOut + r.length)) fail(E.EFBIG);
    this.space.admitMetadata();
    const copied = await copyRange({
      src: src.content,
      srcOffset: r.offIn,
      dst: dst.content,
      dstOffset: r.offOut,
      length: r.length,
      blockSize: this.volume.blockSize,
      admitBytes: (bytes) => {
        this.space.admitData(bytes);
        return this.writer.admit();
      },
    });
    if (copied > 0) {
      const t = now();
      setTime(dst.row, 'mtime', t);
      setTime(dst.row, 'ctime', t);
    }
    return copied;
  }

  // ---- directories ----

  opendir(ino: number, _flags?: number, _ctx?: Caller): Opened {
    const node = this.node(ino);
    if (!isDir(node.row.mode)) fail(E.ENOTDIR);
    const parent = ino === ROOT_INO ? ROOT_INO : this.volume.meta.parentOf(ino) ?? ROOT_INO;
    const list: DirEntry[] = [
      { name: Buffer.from('.'), ino, mode: S_IFDIR, nextOffset: 1 },
      { name: Buffer.from('..'), ino: parent, mode: S_IFDIR, nextOffset: 2 },
    ];
    for (const row of this.volume.meta.listDir(ino)) {
      list.push({ name: row.name, ino: row.ino, mode: row.mode, nextOffset: list.length + 1 });
    }
    const fh = this.nextFh++;
    this.dirs.set(fh, list);
    return { fh };
  }

  readdir(_ino: number, fh: number, offset: number, limit: number): DirEntry[] {
    const list = this.dirs.get(fh);
    if (!list) fail(E.EBADF);
    return list.slice(offset, offset + limit);
  }

  releasedir(_ino: number, fh: number): void {
    this.dirs.delete(fh);
  }

  fsyncdir(_ino?: number, _fh?: number, _datasync?: boolean): void {
    this.volume.meta.barrier();
  }

  // ---- extended attributes ----

  setxattr(ino: number, name: Buffer, value: Buffer, flags: number, _ctx?: Caller): void {
    checkXattrName(name);
    // POSIX ACLs are not supported: storing them as plain attributes would make `cp -a`
    // believe its permissions were set (it tries the ACL first, chmod only on EOPNOTSUPP).
    if (name.subarray(0, 7).toString('latin1') === 'system.') fail(E.EOPNOTSUPP);
    if (value.length > XATTR_SIZE_MAX) fail(E.E2BIG);
    const node = this.node(ino);
    const meta = this.volume.meta;
    const exists = meta.getXattr(ino, name) !== undefined;
    if (flags & XATTR_CREATE && exists) fail(E.EEXIST);
    if (flags & XATTR_REPLACE && !exists) fail(E.ENODATA);
    this.space.admitMetadata();
    meta.transaction(() => {
      meta.setXattr(ino, name, value);
      setTime(node.row, 'ctime', now());
      this.persist(node);
    });
    if (!this.securityXattrs && name.subarray(0, 9).toString('latin1') === 'security.') {
      this.securityXattrs = true;
      this.options.onSecurityXattr?.();
    }
  }

  getxattr(ino: number, name: Buffer, _ctx?: Caller): Buffer {
    checkXattrName(name);
    this.node(ino);
    const value = this.volume.meta.getXattr(ino, name);
    if (value === undefined) fail(E.ENODATA);
    return value;
  }

  listxattr(ino: number, _ctx?: Caller): Buffer {
    this.node(ino);
    const names = this.volume.meta.listXattrs(ino);
    return Buffer.concat(names.flatMap((n) => [n, Buffer.from([0])]));
  }

  removexattr(ino: number, name: Buffer, _ctx?: Caller): void {
    checkXattrName(name);
    const node = this.node(ino);
    const meta = this.volume.meta;
    meta.transaction(() => {
      if (!meta.removeXattr(ino, name)) fail(E.ENODATA);
      setTime(node.row, 'ctime', now());
      this.persist(node);
    });
  }

  // ---- internals ----

  private node(ino: number): Node {
    let node = this.nodes.get(ino);
    if (node) return node;
    const row = this.volume.meta.getInode(ino);
    if (!row) fail(E.ENOENT);
    node = { row, lookups: 0, opens: 0 };
    this.nodes.set(ino, node);
    return node;
  }

  private dirNode(ino: number): Node {
    const node = this.node(ino);
    if (!isDir(node.row.mode)) fail(E.ENOTDIR);
    return node;
  }

  private handleNode(ino: number, fh: number): Node {
    const handle = this.files.get(fh);
    if (!handle || handle.ino !== ino) fail(E.EBADF);
    return this.node(ino);
  }

  private content(node: Node): FileContent {
    if (!node.content) {
      const v = this.volume;
      const readahead = this.options.cache ? Math.floor((this.options.readaheadBytes ?? 0) / v.blockSize) : 0;
      node.content = new FileContent(node.row, v.blockSize, v.meta, this.writer, this.log, readahead);
    }
    return node.content;
  }

  private dropContent(node: Node): void {
    if (node.content && !node.content.dirty && node.opens === 0) node.content = undefined;
  }

  private openNode(node: Node, flags: number): Opened {
    if (isReg(node.row.mode)) this.content(node);
    node.opens += 1;
    const fh = this.nextFh++;
    this.files.set(fh, { ino: node.row.ino, writable: (flags & O_ACCMODE) !== O_RDONLY });
    return { fh };
  }

  /** Makes the node's content durable; `urgent` when a caller waits for that (fsync, close). */
  private commit(node: Node, urgent = true): Promise<void> {
    if (!node.content) return Promise.resolve();
    // A commit that failed for want of room says ENOSPC to fsync and close, as Linux does.
    return this.committer.commit(node.content, () => this.volume.meta.updateInode(this.persistedRow(node)), urgent).catch((err: unknown) => {
      throw this.space.classify(err);
    });
  }

  /** Writes the inode row; a file with uncommitted content keeps its last committed size. */
  private persist(node: Node): void {
    this.volume.meta.updateInode(this.persistedRow(node));
  }

  private persistedRow(node: Node): InodeRow {
    const c = node.content;
    return c ? { ...node.row, size: c.committedSize } : node.row;
  }

  /** Forgets a node nobody uses; frees the inode when nothing names it either. */
  private releaseIfUnused(node: Node): void {
    if (node.lookups > 0 || node.opens > 0) return;
    if (node.row.nlink > 0) {
      if (!node.content) this.nodes.delete(node.row.ino);
      return;
    }
    this.nodes.delete(node.row.ino);
    void this.free(node).catch((err) => this.log.error(`freeing inode ${node.row.ino} failed`, err));
  }

  private async free(node: Node): Promise<void> {
    const hashes = node.content ? await node.content.discard() : [];
    node.content = undefined;
    const meta = this.volume.meta;
    meta.transaction(() => {
      for (const h of meta.deleteInode(node.row.ino)) hashes.push(h);
    });
    this.reclaimer.release(hashes);
  }

  private makeNode(parent: number, name: Buffer, mode: number, rdev: number, ctx: Caller, target?: Buffer): Node {
    checkName(name);
    const dir = this.dirNode(parent);
    const meta = this.volume.meta;
    if (meta.lookup(parent, name) !== undefined) fail(E.EEXIST);
    this.space.admitMetadata();
    const t = now();
    // In a set-group-ID directory new entries take the directory's group, and new
    // subdirectories inherit the bit (as ext4 does).
    const sgid = (dir.row.mode & S_ISGID) !== 0;
    if (sgid && isDir(mode)) mode |= S_ISGID;
    const fresh = newInode(
      { mode, uid: ctx.uid, gid: sgid ? dir.row.gid : ctx.gid, nlink: isDir(mode) ? 2 : 1, size: target?.length, rdev },
      t,
    );
    const ino = meta.transaction(() => {
      const id = meta.insertInode(fresh);
      meta.addEntry(parent, name, id);
      if (target) meta.setSymlinkTarget(id, target);
      if (isDir(mode)) dir.row.nlink += 1;
      touchDir(dir.row, t);
      this.persist(dir);
      return id;
    });
    const node: Node = { row: { ino, ...fresh }, lookups: 0, opens: 0 };
    this.nodes.set(ino, node);
    return node;
  }

  /** Counts the caller's new reference before the reply leaves (a forget can't outrun it). */
  private entry(node: Node): Entry {
    node.lookups += 1;
    return { attr: this.attr(node) };
  }

  private attr(node: Node): Attr {
    const r = node.row;
    const stored = node.content ? node.content.storedBytes() : r.stored_bytes;
    return {
      ino: r.ino,
      mode: r.mode,
      nlink: r.nlink,
      uid: r.uid,
      gid: r.gid,
      rdev: r.rdev,
      size: r.size,
      blocks: Math.ceil(stored / 512),
      atimeSec: r.atime_s,
      atimeNsec: r.atime_ns,
      mtimeSec: r.mtime_s,
      mtimeNsec: r.mtime_ns,
      ctimeSec: r.ctime_s,
      ctimeNsec: r.ctime_ns,
    };
  }

  /** EINVAL when moving directory `ino` under `target` would put it inside itself. */
  private checkNotAncestor(ino: number, target: number): void {
    let cur: number | undefined = target;
    for (let depth = 0; cur !== undefined && depth < 100000; depth++) {
      if (cur === ino) fail(E.EINVAL);
      if (cur === ROOT_INO) return;
      cur = this.volume.meta.parentOf(cur);
    }
  }
}

function checkName(name: Buffer): void {
  if (name.length > NAME_MAX) fail(E.ENAMETOOLONG);
  if (name.length === 0) fail(E.ENOENT);
}

function checkXattrName(name: Buffer): void {
  if (name.length === 0 || name.length > XATTR_NAME_MAX) fail(E.ERANGE);
}

function setTime(row: InodeRow, which: 'atime' | 'mtime' | 'ctime', t: Timespec): void {
  row[`${which}_s`] = t.s;
  row[`${which}_ns`] = t.ns;
}

function touchDir(row: InodeRow, t: Timespec): void {
  setTime(row, 'mtime', t);
  setTime(row, 'ctime', t);
}

export { FsError };
