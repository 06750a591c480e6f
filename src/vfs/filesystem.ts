import { statfsSync } from 'node:fs';
import {
  Falloc,
  NAME_MAX,
  ROOT_INO,
  S_IFDIR,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  Whence,
  isDir,
  isReg,
  type Attr,
  type AttrChanges,
  type Caller,
  type CopyRange,
  type DirEntry,
  type Entry,
  type FileSystem,
  type Invalidation,
  type Opened,
  type StatFs,
  type Unlinked,
} from '../posix/file-system';
import type { AttrChange, Detached, ExternalChange, MetaEngine, NodeSpec, SnapshotInfo } from '../meta/engine';
import type { BlockRow, InodeRow } from '../meta/meta-db';
import { checkXattrName } from '../meta/name-rules';
import { PathNamer } from '../meta/path-namer';
import { SNAPSHOTS_DIR_NAME } from '../meta/tree-clone';
import { TreeOps } from './tree-ops';
import { BlockWriter, type ContentSource } from './block-writer';
import { Committer } from './committer';
import { Durability } from './durability';
import { E, FsError, fail } from '../posix/errors';
import { FileContent } from './file-content';
import { Reclaimer } from './reclaimer';
import { copyRange } from './range-copy';
import { SpaceGuard } from './space-guard';
import type { SuperChunkPacker } from '../store/super-chunk-packer';
import { storeSpace } from '../store/store-files';
import type { ChunkCacheStats } from '../store/chunk-cache';
import { now } from './time';
import type { Volume } from './volume';

export { NAME_MAX, ROOT_INO };

const O_ACCMODE = 3;
const O_RDONLY = 0;
const O_TRUNC = 0o1000;

export interface FsLog {
  error(msg: string, err?: unknown): void;
  info(msg: string): void;
}

export interface FsOptions {
  /**
   * Make data durable against a power cut when a file written through a handle is
   * closed; without it, close commits without waiting for the disk (DESIGN invariant 3).
   */
  syncOnClose: boolean;
  /** Everything reaches the disk within this long (ms): open files' content is committed and a sync point made. */
  commitIntervalMs: number;
  /** Group metadata changes into one SQLite commit for up to this long (ms; 0: commit each). */
  metadataCommitMs: number;
  /** Told when the first security.* xattr appears (the binding then stops answering those itself). */
  onSecurityXattr?: () => void;
  /** A volume several machines share: uploads and publishes the stored blocks before content rows are committed (RemoteCache.publishStored). */
  publishBlocks?: () => Promise<void>;
  /** With publishBlocks: uploads again blocks gc removed from the shared index that a commit names (RemoteCache.republish). */
  republishBlocks?: (hashes: readonly Buffer[]) => Promise<void>;
  /** The remote cache in front of the block store, when the volume has a remote. */
  cache?: ContentSource;
  /** Bytes to fetch ahead of a sequential reader (with a cache). */
  readaheadBytes?: number;
  /**
   * Makes the kernel forget attributes and pages (of a file loaded anew at open because
   * another client changed it while it was open here); resolves when it has.
   */
  forgetInKernel?: (inval: Invalidation) => Promise<void>;
}

/** A mounted volume's in-memory state, as `pogfs stats` shows it. */
export interface DaemonStatus {
  chunkCache: ChunkCacheStats;
  queuedShortBlocks: number;
  superChunks: number;
  openFiles: number;
}

/**
 * An inode the kernel knows of or that is open: its counts and (for open files) content.
 * Its attributes live in the metadata engine: each change is written there field by
 * field, so nothing is written back from a stale copy. `row` is only a read copy of the
 * engine's last answer, so a getattr, open or access of a known inode costs no query:
 * it is dropped whenever an operation here may have changed the inode, and when another
 * client of a shared engine did (externalChange).
 */
interface Node {
  ino: number;
  row?: InodeRow;
  /** References the kernel holds (entry replies minus forgets). */
  lookups: number;
  /** Open file handles. */
  opens: number;
  content?: FileContent;
  /**
   * Another client changed the file while it was open here: the handles open keep reading
   * `content`, the next open loads the file anew (for every handle from then on).
   */
  superseded?: boolean;
  /** Its last name went while in use here: freed once unused. */
  unlinked: boolean;
}

/** An open directory's listing, taken whole at opendir. */
interface DirListing {
  ino: number;
  entries: DirEntry[];
  /** Listed again after another client changed the directory: what a read from the start (rewinddir) gives. */
  relisted?: DirEntry[];
}

interface FileHandle {
  ino: number;
  /** Opened for writing: closing it makes the file's content durable. */
  writable: boolean;
  /** Counted open by the engine (MetaEngine.opened, or a create with `open`): its release is said to it (closed). */
  held: boolean;
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
  private readonly dirs = new Map<number, DirListing>();
  /**
   * Counts the external changes handed in (externalChange). An engine answer is kept as a
   * read copy only when no external change came while it was on its way: it may predate it.
   */
  private epoch = 0;
  private nextFh = 1;
  readonly writer: BlockWriter;
  readonly reclaimer: Reclaimer;
  readonly packer: SuperChunkPacker;
  private readonly committer: Committer;
  /** Sync points and the crash ordering of content commits. */
  readonly durability: Durability;
  /** Says when the disk is too full for new data or names (ENOSPC), and why a commit failed. */
  readonly space: SpaceGuard;
  private readonly writeback: NodeJS.Timeout;
  private securityXattrs: boolean;
  private readonly engine: MetaEngine;
  /** Names files by path in log lines (absent for a volume whose metadata engine has no synchronous scans). */
  private readonly namer: PathNamer | undefined;
  /** Clones and snapshots (absent for a volume whose metadata is not in SQLite: not there yet). */
  private readonly trees: TreeOps | undefined;
  /** What is read-only for everyone: the .snapshots directory and the inode ranges of the snapshots in it. */
  private frozen: { dir: number | undefined; ranges: { first: number; last: number }[] } = { dir: undefined, ranges: [] };
  /** Tells the engine which inodes are still in use here (an unlinked one then stays until forgotten). */
  private readonly inUse = (ino: number): boolean => {
    const node = this.nodes.get(ino);
    return node !== undefined && (node.lookups > 0 || node.opens > 0 || node.content !== undefined);
  };

  constructor(
    readonly volume: Volume,
    private readonly options: FsOptions,
    private readonly log: FsLog,
  ) {
    this.engine = volume.engine;
    this.namer = volume.metaUrl === undefined ? new PathNamer(volume.meta) : undefined;
    this.trees = volume.metaUrl === undefined ? new TreeOps(volume.meta.clone, () => volume.meta.barrier(), volume.store) : undefined;
    this.loadFrozen();
    this.writer = new BlockWriter(volume.store, options.cache ?? volume.store);
    volume.checkpointAtSyncPoints();
    this.durability = new Durability(
      this.writer,
      this.engine,
      volume.parking,
      () => volume.metaChangeCount(),
      (err) => log.error('moving parked blocks into the block store failed (they stay parked in the metadata; retried)', err),
      () => volume.checkpoint(),
    );
    this.reclaimer = new Reclaimer({ barrier: () => this.durability.beforeRelease() }, volume.store, 1000, (err) =>
      log.error('releasing blocks failed', err),
    );
    this.committer = new Committer(this.engine, this.writer, this.reclaimer, this.durability, options.publishBlocks, options.republishBlocks);
    this.space = new SpaceGuard({
      path: volume.path,
      storeFreeBytes: () => storeSpace(volume.store).freeBytes,
      bufferedBytes: () => this.writer.bufferedBytes(),
    });
    this.packer = volume.packer((err) => log.error('packing short blocks into super-chunks failed (they stay loose; nothing is lost)', err));
    // Read once, synchronously, before the mount answers its first request (the binding
    // answers security.* queries itself while there are none).
    this.securityXattrs = volume.anySecurityXattr();
    this.engine.setGroupCommit(options.metadataCommitMs);
    this.writeback = setInterval(() => {
      this.commitAll()
        .then(() => this.durability.periodic())
        .catch((err) => log.error('periodic writeback failed', err));
    }, options.commitIntervalMs);
    this.writeback.unref();
  }

  get hasSecurityXattrs(): boolean {
    return this.securityXattrs;
  }

  /**
   * Drops the parked blocks the block store has taken (at open, Volume.open moved what a
   * crash left), once the store has them on disk.
   */
  async settleParked(): Promise<void> {
    await this.volume.store.flushed();
    await this.volume.parking?.unpark(this.volume.store.parkedSeq());
  }

  /** Frees inodes left unlinked-but-open by a crash. */
  async recoverUnlinked(): Promise<number> {
    const dead = await this.engine.unlinkedInodes();
    for (const ino of dead) this.reclaimer.release(await this.engine.free(ino));
    if (dead.length > 0) await this.reclaimer.run();
    return dead.length;
  }

  /** Commits every open file's content, then drops released blocks: the unmount path. */
  async shutdown(): Promise<void> {
    clearInterval(this.writeback);
    this.durability.stop();
    await this.commitAll();
    await this.engine.flushClosed?.();
    await this.durability.move();
    await this.reclaimer.run();
    await this.packer.flush();
    await this.durability.syncPoint();
  }

  /**
   * Brings the volume to a state gc can reason about: open files committed, blocks in
   * flight stored, released references dropped.
   */
  async quiesceForGc(): Promise<void> {
    await this.commitAll();
    await this.writer.drain();
    await this.durability.move();
    await this.reclaimer.run();
    await this.packer.flush();
  }

  /** What the mounted volume holds in memory and in its queues (for `pogfs stats` on a mount). */
  status(): DaemonStatus {
    const c = this.volume.store.chunkStats();
    return { chunkCache: c.cache, queuedShortBlocks: c.queuedBlocks, superChunks: c.chunks, openFiles: this.files.size };
  }

  /** The inode at a path relative to the root (for pin/unpin); ENOENT and ENOTDIR as a lookup would say. */
  async inoOfPath(path: string): Promise<number> {
    let ino = ROOT_INO;
    for (const part of path.split('/').filter((p) => p !== '' && p !== '.')) {
      if (part === '..') fail(E.EINVAL);
      ino = (await this.engine.lookup(ino, Buffer.from(part))).ino;
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
    for (const node of this.nodes.values()) if (node.content && !node.content.idle) work.push(this.commit(node));
    await Promise.all(work);
  }

  // ---- other clients' changes ----

  /**
   * Another client of the volume's shared metadata committed `change` (the engine's
   * watchChanges): drops the read copies here it makes stale and returns what the kernel
   * must forget. Dropped: the attributes of the inodes named, the content of those not open
   * here (close-to-open: a file opened after the other client's close reads its new size
   * and block map; the handles already open keep reading what they read until the next
   * open loads it anew, and content with changes of its own is kept), and open
   * directory listings, which a read from the start (rewinddir) takes anew. The kernel is
   * told only of inodes it knows (and names in directories it knows).
   *
   * "Everything": every inode the kernel knows, and every name in each directory among
   * them as listed now. What cannot be named stays cached for up to the timeouts: negative
   * entries, and names another client removed or renamed while the notices were missed
   * (their inode's attributes are dropped, so a name whose inode was freed answers ENOENT).
   */
  async externalChange(change: ExternalChange): Promise<Invalidation> {
    this.epoch += 1;
    if (change.kind === 'everything') return this.everythingChanged();
    const inodes: number[] = [];
    for (const ino of change.inodes) {
      const node = this.nodes.get(ino);
      if (node) this.dropReadCopies(node);
      if (this.kernelKnows(ino)) inodes.push(ino);
    }
    await this.relist((ino) => change.inodes.includes(ino) || change.entries.some(([parent]) => parent === ino));
    return { inodes, entries: change.entries.filter(([parent]) => this.kernelKnows(parent)) };
  }

  private async everythingChanged(): Promise<Invalidation> {
    const known = [...this.nodes.values()];
    const modes = new Map(known.map((n) => [n.ino, n.row?.mode]));
    for (const node of known) this.dropReadCopies(node);
    const inodes = [ROOT_INO, ...known.filter((n) => n.ino !== ROOT_INO && this.kernelKnows(n.ino)).map((n) => n.ino)];
    const entries: Array<[number, Buffer]> = [];
    await Promise.all(
      inodes.map(async (ino) => {
        try {
          const mode = modes.get(ino) ?? (await this.engine.getattr(ino)).mode;
          if (!isDir(mode)) return;
          for (const e of (await this.engine.readdir(ino)).entries) entries.push([ino, e.name]);
        } catch (err) {
          // Gone meanwhile: nothing of it to name (its inode is invalidated all the same).
          if (!(err instanceof FsError)) throw err;
        }
      }),
    );
    await this.relist(() => true);
    return { inodes, entries };
  }

  /**
   * Forgets the attributes of `node` and its content: now when no handle has it open here,
   * at the next open when one has (and never content with changes of its own to commit).
   */
  private dropReadCopies(node: Node): void {
    node.row = undefined;
    if (!node.content?.idle) return;
    if (node.opens > 0) {
      node.superseded = true;
      return;
    }
    node.content = undefined;
    this.releaseIfUnused(node);
  }

  /** The root, and every inode the kernel holds a reference to. */
  private kernelKnows(ino: number): boolean {
    return ino === ROOT_INO || (this.nodes.get(ino)?.lookups ?? 0) > 0;
  }

  /** Lists again the open directories `which` picks, for their next read from the start. */
  private async relist(which: (ino: number) => boolean): Promise<void> {
    const open = [...this.dirs.values()].filter((d) => which(d.ino));
    await Promise.all(
      open.map(async (d) => {
        try {
          d.relisted = await this.listing(d.ino);
        } catch (err) {
          if (!(err instanceof FsError)) throw err;
        }
      }),
    );
  }

  // ---- lookups and attributes ----

  async lookup(parent: number, name: Buffer, _ctx?: Caller): Promise<Entry> {
    const since = this.epoch;
    return this.entry(await this.engine.lookup(parent, name), since);
  }

  forget(ino: number, nlookup: number): void {
    const node = this.nodes.get(ino);
    if (!node) return;
    node.lookups = Math.max(0, node.lookups - nlookup);
    this.releaseIfUnused(node);
  }

  getattr(ino: number, _fh?: number, _ctx?: Caller): Attr | Promise<Attr> {
    const node = this.nodes.get(ino);
    if (node?.row) return this.attr(node, node.row);
    const since = this.epoch;
    return this.engine.getattr(ino).then((row) => this.attr(this.nodes.get(ino), this.remember(row, since)));
  }

  async setattr(ino: number, ch: AttrChanges, _fh?: number, _ctx?: Caller): Promise<Attr> {
    this.checkWritable(ino);
    const since = this.epoch;
    const t = now();
    let change: AttrChange = {};
    if (ch.mode !== undefined) change.mode = ch.mode & 0o7777;
    if (ch.uid !== undefined) change.uid = ch.uid;
    if (ch.gid !== undefined) change.gid = ch.gid;
    if (ch.atime !== undefined) change.atime = ch.atime === 'now' ? t : ch.atime;
    if (ch.mtime !== undefined) change.mtime = ch.mtime === 'now' ? t : ch.mtime;
    change.ctime = ch.ctime ?? t;
    let node = this.nodes.get(ino);
    if (ch.size !== undefined) {
      const row = await this.row(ino);
      if (isDir(row.mode)) fail(E.EISDIR);
      if (!isReg(row.mode)) fail(E.EINVAL);
      if (ch.size < 0 || !Number.isSafeInteger(ch.size)) fail(E.EINVAL);
      node = await this.withContent(row, since);
      const content = node.content as FileContent;
      if (ch.size !== content.size) {
        await content.truncate(ch.size);
        if (ch.mtime === undefined) change.mtime = t;
      }
      // A truncate with no open handle is committed now: nothing else would commit it.
      if (node.opens === 0) await this.commit(node);
    }
    const c = node?.content;
    if (node && c && node.opens > 0 && !c.idle) {
      // Open with changes to commit: held back and committed with the content at close,
      // fsync or the commit interval, like the times of its writes (what tar and cp do
      // after writing, before closing: times, owner, mode).
      c.holdAttrs(change);
      return this.attr(node, await this.row(ino));
    }
    if (c) {
      // A commit under way writes what it took when it ends: this change goes after it.
      if (!c.idle) await c.committing;
      change = { ...c.takeHeldAttrs(), ...change };
    }
    const row = this.remember(await this.engine.setattr(ino, change), since);
    if (node && node.opens === 0) {
      this.dropContent(node);
      this.releaseIfUnused(node);
    }
    return this.attr(this.nodes.get(ino), row);
  }

  readlink(ino: number, _ctx?: Caller): Promise<Buffer> {
    return this.engine.readlink(ino);
  }

  async access(ino: number, mask: number, ctx: Caller): Promise<void> {
    const row = this.attr(this.nodes.get(ino), await this.row(ino));
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

  async statfs(_ino?: number): Promise<StatFs> {
    const backing = statfsSync(this.volume.path);
    const totals = await this.engine.statfs();
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

  async mknod(parent: number, name: Buffer, mode: number, rdev: number, ctx: Caller): Promise<Entry> {
    const since = this.epoch;
    return this.entry(await this.makeNode(parent, name, { mode, uid: ctx.uid, gid: ctx.gid, rdev }), since);
  }

  async mkdir(parent: number, name: Buffer, mode: number, ctx: Caller): Promise<Entry> {
    const since = this.epoch;
    return this.entry(await this.makeNode(parent, name, { mode: S_IFDIR | (mode & 0o7777), uid: ctx.uid, gid: ctx.gid }), since);
  }

  async symlink(target: Buffer, parent: number, name: Buffer, ctx: Caller): Promise<Entry> {
    const since = this.epoch;
    return this.entry(await this.makeNode(parent, name, { mode: S_IFLNK | 0o777, uid: ctx.uid, gid: ctx.gid, target }), since);
  }

  async create(parent: number, name: Buffer, mode: number, flags: number, ctx: Caller): Promise<Entry & Opened> {
    const since = this.epoch;
    const row = await this.makeNode(parent, name, { mode: S_IFREG | (mode & 0o7777), uid: ctx.uid, gid: ctx.gid, open: true });
    const node = this.nodeOf(row.ino);
    // A new file has no blocks to load.
    node.content ??= this.newContent(row, []);
    const entry = this.entry(row, since);
    return { ...entry, ...this.openNode(node, flags, this.engine.closed !== undefined) };
  }

  async link(ino: number, newParent: number, newName: Buffer, _ctx?: Caller): Promise<Entry> {
    this.checkWritable(ino);
    this.checkWritable(newParent);
    await this.admitName(newParent, newName);
    const since = this.epoch;
    const row = await this.engine.link(ino, newParent, newName, now());
    this.changed(newParent);
    const node = this.nodes.get(ino);
    if (node) node.unlinked = false;
    return this.entry(row, since);
  }

  async unlink(parent: number, name: Buffer, _ctx?: Caller): Promise<Unlinked> {
    this.checkNameWritable(parent, name);
    const since = this.epoch;
    const d = await this.engine.unlink(parent, name, now(), this.inUse);
    this.changed(parent);
    this.detached(d, since);
    // No name and no handle: nothing can reach the inode (a kernel lookup alone cannot).
    const node = this.nodes.get(d.attr.ino);
    return d.attr.nlink === 0 && !(node?.opens ?? 0) ? { gone: this.attr(node, d.attr) } : undefined;
  }

  async rmdir(parent: number, name: Buffer, _ctx?: Caller): Promise<void> {
    this.checkNameWritable(parent, name);
    const since = this.epoch;
    const d = await this.engine.rmdir(parent, name, now(), this.inUse);
    this.changed(parent);
    this.detached(d, since);
  }

  async rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, _ctx?: Caller): Promise<void> {
    this.checkNameWritable(parent, name);
    this.checkNameWritable(newParent, newName);
    const since = this.epoch;
    const r = await this.engine.rename(parent, name, newParent, newName, flags, now(), this.inUse);
    // Handed to the OS before the rename returns, like a close: a file saved by renaming
    // it over the old one stays saved if the daemon dies next (other metadata changes
    // are grouped for up to metadataCommitMs).
    await this.engine.commitGroup();
    this.changed(parent);
    this.changed(newParent);
    this.remember(r.moved, since);
    if (r.exchanged) this.remember(r.exchanged, since);
    if (r.replaced) this.detached(r.replaced, since);
  }

  // ---- files ----

  async open(ino: number, flags: number, _ctx?: Caller): Promise<Opened> {
    const since = this.epoch;
    const row = await this.row(ino);
    if (isDir(row.mode)) fail(E.EISDIR);
    if ((flags & O_ACCMODE) !== O_RDONLY || flags & O_TRUNC) this.checkWritable(ino);
    if (!isReg(row.mode)) return this.openNode(this.nodeOf(ino), flags, false);
    // Held open in the engine (several mounts) before its blocks are read: another mount's
    // unlink then leaves it without a name instead of freeing it.
    const blocks = this.engine.opened ? await this.engine.opened(ino) : undefined;
    try {
      // Close-to-open: a file another client changed while it was open here is loaded anew,
      // and the kernel forgets the size and pages it had of the old version.
      const was = this.nodes.get(ino);
      const renew = was?.superseded === true && was.content?.idle === true;
      const node = await this.withContent(row, since, renew, blocks);
      if (renew) await this.options.forgetInKernel?.({ entries: [], inodes: [ino] });
      return this.openNode(node, flags, this.engine.closed !== undefined);
    } catch (err) {
      this.letGo(ino, false);
      throw err;
    }
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
    node.content.touch(now());
    if (applying) return applying.then(() => this.writer.admit()).then(() => data.length);
    const wait = this.writer.admit();
    return wait ? wait.then(() => data.length) : data.length;
  }

  async flush(ino: number, fh: number): Promise<void> {
    const handle = this.files.get(fh);
    const node = this.nodes.get(ino);
    if (!handle || !node) return;
    // The kernel writes cached pages back through any writable handle, so the test is
    // "could this handle have written", not "did it". Committed, not synced: the file
    // survives a crash of the daemon from here (DESIGN invariant 3).
    if (!handle.writable || !node.content) return;
    if (!node.content.idle) await this.commit(node);
    if (this.options.syncOnClose) await this.durability.syncPoint();
  }

  async fsync(ino: number, _fh?: number, _datasync?: boolean): Promise<void> {
    const node = this.nodes.get(ino);
    // Also when a round has the file's changes in flight: a commit waits for it.
    if (node?.content && !node.content.idle) await this.commit(node);
    await this.durability.syncPoint();
  }

  release(ino: number, fh: number, _flags?: number): void {
    const held = this.files.get(fh)?.held === true;
    this.files.delete(fh);
    const node = this.nodes.get(ino);
    if (!node || node.opens > 1) {
      if (node) node.opens -= 1;
      if (held) this.letGo(ino, false);
      return;
    }
    node.opens -= 1;
    if (!node.content || node.content.idle || node.unlinked) {
      this.dropContent(node);
      // Unlinked here, the inode is freed (and its hold dropped) once unused here.
      if (held) this.letGo(ino, node.unlinked);
      this.releaseIfUnused(node);
      return;
    }
    // Nobody waits for this commit (a close that had to be durable was made so by its
    // flush), so the next files' commits can join its round. The content stays in
    // memory, readable, until it is committed; a failed commit is retried by writeback.
    this.commit(node, false).then(
      () => {
        // Held until committed: another mount's unlink meanwhile leaves it for this commit.
        if (held) this.letGo(ino, node.unlinked);
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
    if (mode & (Falloc.PUNCH_HOLE | Falloc.ZERO_RANGE) || content.size !== sizeBefore) content.touch(now());
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
    if (copied > 0) dst.content.touch(now());
    return copied;
  }

  // ---- directories ----

  async opendir(ino: number, _flags?: number, _ctx?: Caller): Promise<Opened> {
    // The listing is taken whole at opendir, so offsets stay valid while entries come and go.
    const list = await this.listing(ino);
    const fh = this.nextFh++;
    this.dirs.set(fh, { ino, entries: list });
    return { fh };
  }

  /** A directory's entries as readdir gives them: `.`, `..`, then the engine's in name order. */
  private async listing(ino: number): Promise<DirEntry[]> {
    const { entries } = await this.engine.readdir(ino);
    const parent = ino === ROOT_INO ? ROOT_INO : (await this.engine.parentOf(ino)) ?? ROOT_INO;
    const list: DirEntry[] = [
      { name: Buffer.from('.'), ino, mode: S_IFDIR, nextOffset: 1 },
      { name: Buffer.from('..'), ino: parent, mode: S_IFDIR, nextOffset: 2 },
    ];
    for (const row of entries) list.push({ name: row.name, ino: row.ino, mode: row.mode, nextOffset: list.length + 1 });
    return list;
  }

  readdir(_ino: number, fh: number, offset: number, limit: number): DirEntry[] {
    const listing = this.dirs.get(fh);
    if (!listing) fail(E.EBADF);
    // Another client changed the directory: a read from the start (rewinddir) takes the new listing.
    if (offset === 0 && listing.relisted) {
      listing.entries = listing.relisted;
      listing.relisted = undefined;
    }
    return listing.entries.slice(offset, offset + limit);
  }

  releasedir(_ino: number, fh: number): void {
    this.dirs.delete(fh);
  }

  async fsyncdir(_ino?: number, _fh?: number, _datasync?: boolean): Promise<void> {
    await this.durability.syncPoint();
  }

  // ---- extended attributes ----

  async setxattr(ino: number, name: Buffer, value: Buffer, flags: number, _ctx?: Caller): Promise<void> {
    checkXattrName(name);
    this.checkWritable(ino);
    // POSIX ACLs are not supported: storing them as plain attributes would make `cp -a`
    // believe its permissions were set (it tries the ACL first, chmod only on EOPNOTSUPP).
    if (name.subarray(0, 7).toString('latin1') === 'system.') fail(E.EOPNOTSUPP);
    this.space.admitMetadata();
    await this.engine.setxattr(ino, name, value, flags, now());
    this.changed(ino);
    if (!this.securityXattrs && name.subarray(0, 9).toString('latin1') === 'security.') {
      this.securityXattrs = true;
      this.options.onSecurityXattr?.();
    }
  }

  getxattr(ino: number, name: Buffer, _ctx?: Caller): Promise<Buffer> {
    return this.engine.getxattr(ino, name);
  }

  async listxattr(ino: number, _ctx?: Caller): Promise<Buffer> {
    const names = await this.engine.listxattr(ino);
    return Buffer.concat(names.flatMap((n) => [n, Buffer.from([0])]));
  }

  async removexattr(ino: number, name: Buffer, _ctx?: Caller): Promise<void> {
    this.checkWritable(ino);
    await this.engine.removexattr(ino, name, now());
    this.changed(ino);
  }

  // ---- clones and snapshots ----

  /** Finishes (or undoes) the clones and snapshot removals a crash left under way; before the mount serves. */
  finishTreeOps(): number {
    if (!this.trees) return 0;
    const n = this.trees.finishPending();
    this.loadFrozen();
    return n;
  }

  /**
   * `pogfs clone`: a copy of the file or tree at `srcPath` as `dstPath` (both relative
   * to the root), sharing every block (src/vfs/tree-ops.ts). What open files wrote is
   * committed first. Returns what the kernel must forget: the new name (it may hold a
   * negative entry for it) and the parent's attributes.
   */
  async clone(srcPath: string, dstPath: string): Promise<{ inodes: number; invalidate: Invalidation }> {
    const src = await this.inoOfPath(srcPath);
    const { parent, name } = await this.placeOfPath(dstPath);
    this.checkNameWritable(parent, name);
    await this.settleForCopy();
    this.space.admitMetadata();
    const r = this.treeOps().clone(src, this.frozen.dir === undefined ? [] : [this.frozen.dir], parent, name, now());
    this.changed(parent);
    return { inodes: r.inodes, invalidate: { entries: [[parent, name]], inodes: [parent] } };
  }

  /**
   * `pogfs snapshot create`: a read-only clone of the whole volume (or of `path`) at
   * /.snapshots/NAME; .snapshots is made with the first snapshot and never copied into one.
   */
  async createSnapshot(name: string, path = ''): Promise<{ inodes: number; invalidate: Invalidation }> {
    const nameBuf = snapshotName(name);
    const trees = this.treeOps();
    const src = await this.inoOfPath(path);
    if (this.frozenIno(src)) fail(E.EINVAL, 'a snapshot is made of the live tree, not of a snapshot (clone it out first)');
    await this.settleForCopy();
    this.space.admitMetadata();
    const t = now();
    const meta = this.volume.meta.clone;
    const existed = meta.snapshotsDir();
    if (existed === undefined && (await this.engine.lookup(ROOT_INO, SNAPSHOTS_DIR_NAME).then(() => true, () => false))) {
      fail(E.EEXIST, 'the root holds a .snapshots of its own (not the snapshots directory): rename it first');
    }
    const dir = existed ?? meta.snapshotsDir({ t });
    if (dir === undefined) fail(E.EIO, 'the .snapshots directory could not be made');
    const r = trees.clone(src, [dir], dir, nameBuf, t, { name: nameBuf, source: path.split('/').filter((p) => p !== '' && p !== '.').join('/') });
    this.loadFrozen();
    this.changed(dir);
    this.changed(ROOT_INO);
    const entries: Array<[number, Buffer]> = [[dir, nameBuf]];
    if (existed === undefined) entries.push([ROOT_INO, SNAPSHOTS_DIR_NAME]);
    return { inodes: r.inodes, invalidate: { entries, inodes: [dir, ROOT_INO] } };
  }

  /** `pogfs snapshot list`. */
  listSnapshots(): SnapshotInfo[] {
    return this.trees ? this.volume.meta.clone.snapshots() : [];
  }

  /**
   * `pogfs snapshot rm`: the name goes at once, the references and rows as soon as no
   * metadata backup in progress may name them. The range stays read-only until then.
   */
  async removeSnapshot(name: string): Promise<{ inodes: number; invalidate: Invalidation }> {
    const nameBuf = snapshotName(name);
    const dir = this.frozen.dir;
    if (dir === undefined) fail(E.ENOENT);
    const op = await this.treeOps().removeSnapshot(nameBuf, now(), () => this.reclaimer.whenUnheld());
    this.loadFrozen();
    this.changed(dir);
    return { inodes: op.last - op.first + 1, invalidate: { entries: [[dir, nameBuf]], inodes: [dir] } };
  }

  /**
   * Before a copy: what open files wrote is committed, and every block a committed row
   * names is in the block store (parked ones moved there), so the copy can take a
   * reference on each. (A file closed in the moment after this may park a block a copy
   * then cannot reference: that copy fails as a whole, and nothing is left of it.)
   */
  private async settleForCopy(): Promise<void> {
    await this.commitAll();
    await this.writer.drain();
    await this.durability.move();
  }

  private treeOps(): TreeOps {
    if (!this.trees) fail(E.EOPNOTSUPP, 'clones and snapshots need a volume whose metadata is in SQLite (not PostgreSQL yet)');
    return this.trees;
  }

  private loadFrozen(): void {
    if (!this.trees) return;
    const meta = this.volume.meta.clone;
    this.frozen = { dir: meta.snapshotsDir(), ranges: meta.snapshotRanges() };
  }

  /** Inside a snapshot, or the .snapshots directory itself: read-only for everyone, root too. */
  private frozenIno(ino: number): boolean {
    if (ino === this.frozen.dir) return true;
    for (const r of this.frozen.ranges) if (ino >= r.first && ino <= r.last) return true;
    return false;
  }

  /** EROFS for a change to a snapshot's inode (or .snapshots). */
  private checkWritable(ino: number): void {
    if (this.frozenIno(ino)) fail(E.EROFS);
  }

  /** EROFS for a change to a name in a snapshot, or to the name .snapshots itself. */
  private checkNameWritable(parent: number, name: Buffer): void {
    this.checkWritable(parent);
    if (parent === ROOT_INO && this.frozen.dir !== undefined && name.equals(SNAPSHOTS_DIR_NAME)) fail(E.EROFS);
  }

  /** The directory and name a new path would take; EEXIST for the root itself. */
  private async placeOfPath(path: string): Promise<{ parent: number; name: Buffer }> {
    const parts = path.split('/').filter((p) => p !== '' && p !== '.');
    const last = parts.pop();
    if (last === undefined) fail(E.EEXIST);
    if (last === '..') fail(E.EINVAL);
    return { parent: await this.inoOfPath(parts.join('/')), name: Buffer.from(last) };
  }

  // ---- internals ----

  /** The inode's attributes: the read copy of a known inode, else the engine's (kept when the inode is known). */
  private row(ino: number): InodeRow | Promise<InodeRow> {
    const row = this.nodes.get(ino)?.row;
    if (row) return row;
    const since = this.epoch;
    return this.engine.getattr(ino).then((r) => this.remember(r, since));
  }

  /**
   * Keeps the engine's latest answer as the read copy of a known inode, unless another
   * client's change came in since `since` (this.epoch when the answer was asked for).
   */
  private remember(row: InodeRow, since: number): InodeRow {
    const node = this.nodes.get(row.ino);
    if (node && since === this.epoch) node.row = row;
    return row;
  }

  /** An operation here may have changed the inode: its next read goes to the engine. */
  private changed(ino: number): void {
    const node = this.nodes.get(ino);
    if (node) node.row = undefined;
  }

  /** The node of `ino`, made when the inode is new to this client. */
  private nodeOf(ino: number): Node {
    let node = this.nodes.get(ino);
    if (!node) {
      node = { ino, lookups: 0, opens: 0, unlinked: false };
      this.nodes.set(ino, node);
    }
    return node;
  }

  private handleNode(ino: number, fh: number): Node {
    const handle = this.files.get(fh);
    const node = this.nodes.get(ino);
    if (!handle || handle.ino !== ino || !node) fail(E.EBADF);
    return node;
  }

  /**
   * The node of a regular file with its content loaded (kept if another open loaded it
   * first, unless `renew`: another client changed the file). `row` was asked for at
   * `since`: when another client's change came in since, the size and the block map could
   * be of two versions, so both are read again. `prefetched`: the block map read since
   * `since` (MetaEngine.opened), for the first round.
   */
  private async withContent(row: InodeRow, since: number, renew = false, prefetched?: readonly BlockRow[]): Promise<Node> {
    for (;;) {
      const had = this.nodes.get(row.ino)?.content;
      if (had && !renew) return this.nodeOf(row.ino);
      const blocks = prefetched ?? (await this.engine.blocks(row.ino));
      prefetched = undefined;
      // From here on synchronous: a concurrent open or a forget cannot interleave.
      if (since === this.epoch || (!renew && this.nodes.get(row.ino)?.content)) {
        const node = this.nodeOf(row.ino);
        // Renewed only while nothing was written to the old one (the handles open read on from the new).
        if (!node.content || (renew && node.content === had && had.idle)) {
          node.content = this.newContent(row, blocks);
          node.superseded = false;
        }
        return node;
      }
      since = this.epoch;
      row = this.remember(await this.engine.getattr(row.ino), since);
    }
  }

  private newContent(row: InodeRow, blocks: readonly BlockRow[]): FileContent {
    const v = this.volume;
    const readahead = this.options.cache ? Math.floor((this.options.readaheadBytes ?? 0) / v.blockSize) : 0;
    return new FileContent({ ino: row.ino, size: row.size, blocks, describe: (ino) => this.namer?.of(ino) ?? `inode #${ino}` }, v.blockSize, this.writer, this.log, readahead);
  }

  private dropContent(node: Node): void {
    if (node.content?.idle && node.opens === 0) node.content = undefined;
  }

  private openNode(node: Node, flags: number, held: boolean): Opened {
    node.opens += 1;
    const fh = this.nextFh++;
    const writable = (flags & O_ACCMODE) !== O_RDONLY;
    this.files.set(fh, { ino: node.ino, writable, held });
    // flush only ever commits what a writable handle may have written.
    return writable ? { fh } : { fh, noFlush: true };
  }

  /** Commits the node's content (safe from a daemon crash, not yet synced); `urgent` when a caller waits for that (fsync, close). */
  private commit(node: Node, urgent = true): Promise<void> {
    if (!node.content) return Promise.resolve();
    // A commit that failed for want of room says ENOSPC to fsync and close, as Linux does.
    return this.committer
      .commit(node.content, urgent)
      .catch((err: unknown) => {
        throw this.space.classify(err);
      })
      .finally(() => {
        node.row = undefined; // size, stored bytes and times were written
      });
  }

  /** After an inode lost a name: releases what the engine freed, or marks it for freeing once unused here. */
  private detached(d: Detached, since: number): void {
    if (d.freed) this.reclaimer.release(d.freed);
    const node = this.nodes.get(d.attr.ino);
    if (!node) return;
    node.row = since === this.epoch ? d.attr : undefined;
    if (d.attr.nlink === 0) node.unlinked = true;
    this.releaseIfUnused(node);
  }

  /**
   * A handle the engine counted open (`held`) is closed: the engine drops its hold at the
   * last one, and frees the inode if another mount took its last name meanwhile (unless
   * `keep`: unlinked here, it is freed once unused here, by free).
   */
  private letGo(ino: number, keep: boolean): void {
    this.engine.closed?.(ino, keep).then(
      (freed) => this.reclaimer.release(freed),
      (err) => this.log.error(`letting go of open inode ${ino} failed`, err),
    );
  }

  /** Forgets a node nobody uses; frees the inode when nothing names it either. */
  private releaseIfUnused(node: Node): void {
    if (node.lookups > 0 || node.opens > 0) return;
    if (!node.unlinked) {
      if (!node.content) this.nodes.delete(node.ino);
      return;
    }
    this.nodes.delete(node.ino);
    void this.free(node).catch((err) => this.log.error(`freeing inode ${node.ino} failed`, err));
  }

  private async free(node: Node): Promise<void> {
    const hashes = node.content ? await node.content.discard() : [];
    node.content = undefined;
    for (const h of await this.engine.free(node.ino)) hashes.push(h);
    this.reclaimer.release(hashes);
  }

  /** Room for a new name; Linux checks the name first, so an existing one is EEXIST even on a full disk. */
  private async admitName(parent: number, name: Buffer): Promise<void> {
    try {
      this.space.admitMetadata();
    } catch (err) {
      const exists = await this.engine.lookup(parent, name).then(
        () => true,
        () => false,
      );
      if (exists) fail(E.EEXIST);
      throw err;
    }
  }

  private async makeNode(parent: number, name: Buffer, spec: NodeSpec): Promise<InodeRow> {
    this.checkNameWritable(parent, name);
    await this.admitName(parent, name);
    const row = await this.engine.mknod(parent, name, spec, now());
    this.changed(parent);
    return row;
  }

  /** Counts the caller's new reference before the reply leaves (a forget can't outrun it); `since` as for remember. */
  private entry(row: InodeRow, since: number): Entry {
    const node = this.nodeOf(row.ino);
    node.lookups += 1;
    if (since === this.epoch) node.row = row;
    return { attr: this.attr(node, row) };
  }

  /** The attributes: the engine's row, with the size, stored bytes and attribute changes of content not yet committed. */
  private attr(node: Node | undefined, r: InodeRow): Attr {
    const c = node?.content;
    const held = c?.pendingAttrs();
    const mtime = held?.mtime;
    const ctime = held?.ctime;
    const atime = held?.atime;
    return {
      ino: r.ino,
      mode: held?.mode !== undefined ? (r.mode & S_IFMT) | held.mode : r.mode,
      nlink: r.nlink,
      uid: held?.uid ?? r.uid,
      gid: held?.gid ?? r.gid,
      rdev: r.rdev,
      size: c ? c.size : r.size,
      blocks: Math.ceil((c ? c.storedBytes() : r.stored_bytes) / 512),
      atimeSec: atime ? atime.s : r.atime_s,
      atimeNsec: atime ? atime.ns : r.atime_ns,
      mtimeSec: mtime ? mtime.s : r.mtime_s,
      mtimeNsec: mtime ? mtime.ns : r.mtime_ns,
      ctimeSec: ctime ? ctime.s : r.ctime_s,
      ctimeNsec: ctime ? ctime.ns : r.ctime_ns,
    };
  }
}

/** A snapshot's name: one path component. */
function snapshotName(name: string): Buffer {
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) fail(E.EINVAL, `${JSON.stringify(name)} is not a snapshot name (one path component)`);
  return Buffer.from(name);
}

export { FsError };
