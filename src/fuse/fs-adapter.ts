/**
 * The FUSE adapter: kernel requests → plain FileSystem calls (a volume's vfs or the Drive
 * view). The protocol lives here and nowhere below: entry and attribute timeouts, the
 * page-cache flags of an open reply, setattr's valid bits, how many directory entries a
 * readdir buffer can take, and telling the kernel to forget what changed underneath it.
 * Errors need no translation: a call throws an FsError with a Linux errno, which the
 * session replies with (anything else becomes EIO and a log line, DESIGN invariant 5).
 */
import { E, fail } from '../posix/errors';
import type { AttrChanges, Entry as FsEntry, FileSystem, Invalidation, MaybePromise, Unlinked } from '../posix/file-system';
import { direntPlusSize, direntSize, type FuseSession } from './session';
import { SetAttrValid, type Attr, type CopyRange, type DirEntry, type DirEntryPlus, type Entry, type LowLevelOps, type OpenReply, type RequestContext, type SetAttr, type StatFs } from './types';

export interface FsAdapterOptions {
  /** Seconds the kernel may cache a name → inode binding. */
  entryTimeout: number;
  /** Seconds the kernel may cache attributes. */
  attrTimeout: number;
  /** Keep a file's pages in the kernel's cache across opens (the filesystem invalidates them when content changes underneath). */
  keepCache: boolean;
  /** Keep a directory's listing cached across opens. */
  keepDirCache: boolean;
}

/** Notices in flight at once: a rescan may touch every name, and each is a job on libuv's threads. */
const INVALIDATION_BATCH = 64;

/** Applies `fn` to a value that may still be coming, without a promise when it is not. */
function then<T, R>(value: MaybePromise<T>, fn: (v: T) => R): MaybePromise<R> {
  return value instanceof Promise ? value.then(fn) : fn(value);
}

/** `.` and `..`: listed without attributes, never counted as lookups. */
function isDotOrDotDot(name: Buffer): boolean {
  return name[0] === 0x2e && (name.length === 1 || (name.length === 2 && name[1] === 0x2e));
}

/** setattr's valid bits → the fields to change. */
export function attrChanges(ch: SetAttr): AttrChanges {
  const v = ch.valid;
  const out: AttrChanges = {};
  if (v & SetAttrValid.MODE) out.mode = ch.mode;
  if (v & SetAttrValid.UID) out.uid = ch.uid;
  if (v & SetAttrValid.GID) out.gid = ch.gid;
  if (v & SetAttrValid.SIZE) out.size = ch.size;
  if (v & SetAttrValid.ATIME_NOW) out.atime = 'now';
  else if (v & SetAttrValid.ATIME) out.atime = { s: ch.atimeSec, ns: ch.atimeNsec };
  if (v & SetAttrValid.MTIME_NOW) out.mtime = 'now';
  else if (v & SetAttrValid.MTIME) out.mtime = { s: ch.mtimeSec, ns: ch.mtimeNsec };
  if (v & SetAttrValid.CTIME) out.ctime = { s: ch.ctimeSec, ns: ch.ctimeNsec };
  return out;
}

export class FsAdapter implements LowLevelOps {
  private session: FuseSession | undefined;

  constructor(
    readonly fs: FileSystem,
    private readonly options: FsAdapterOptions,
  ) {}

  /** The session serving this adapter, for invalidation notices. */
  attach(session: FuseSession): void {
    this.session = session;
  }

  /** Tells the kernel to forget names and inodes that changed underneath it; resolves when it has. */
  async invalidate(inval: Invalidation): Promise<void> {
    const s = this.session;
    if (!s) return;
    const seen = new Set<string>();
    const jobs: Array<() => Promise<number>> = [];
    for (const [dir, name] of inval.entries) {
      const k = `${dir}/${name.toString('hex')}`;
      if (seen.has(k) || name.length === 0 || name.includes(0)) continue;
      seen.add(k);
      jobs.push(() => s.notifyInvalEntry(dir, name));
    }
    for (const ino of new Set(inval.inodes)) jobs.push(() => s.notifyInvalInode(ino, 0, 0));
    for (let i = 0; i < jobs.length; i += INVALIDATION_BATCH) await Promise.all(jobs.slice(i, i + INVALIDATION_BATCH).map((j) => j()));
  }

  private readonly entry = (e: FsEntry): Entry => ({ attr: e.attr, entryTimeout: this.options.entryTimeout, attrTimeout: this.options.attrTimeout });

  lookup(parent: number, name: Buffer, ctx: RequestContext): MaybePromise<Entry> {
    return then(this.fs.lookup(parent, name, ctx), this.entry);
  }
  forget(ino: number, nlookup: number): void {
    this.fs.forget(ino, nlookup);
  }
  getattr(ino: number, fh: number | undefined, ctx: RequestContext): MaybePromise<Attr> {
    return this.fs.getattr(ino, fh, ctx);
  }
  setattr(ino: number, changes: SetAttr, fh: number | undefined, ctx: RequestContext): MaybePromise<Attr> {
    return this.fs.setattr(ino, attrChanges(changes), fh, ctx);
  }
  readlink(ino: number, ctx: RequestContext): MaybePromise<Buffer> {
    return this.fs.readlink(ino, ctx);
  }
  mknod(parent: number, name: Buffer, mode: number, rdev: number, ctx: RequestContext): MaybePromise<Entry> {
    return then(this.fs.mknod(parent, name, mode, rdev, ctx), this.entry);
  }
  mkdir(parent: number, name: Buffer, mode: number, ctx: RequestContext): MaybePromise<Entry> {
    return then(this.fs.mkdir(parent, name, mode, ctx), this.entry);
  }
  unlink(parent: number, name: Buffer, ctx: RequestContext): MaybePromise<Unlinked | void> {
    return this.fs.unlink(parent, name, ctx);
  }
  rmdir(parent: number, name: Buffer, ctx: RequestContext): MaybePromise<void> {
    return this.fs.rmdir(parent, name, ctx);
  }
  symlink(target: Buffer, parent: number, name: Buffer, ctx: RequestContext): MaybePromise<Entry> {
    return then(this.fs.symlink(target, parent, name, ctx), this.entry);
  }
  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, ctx: RequestContext): MaybePromise<void> {
    return this.fs.rename(parent, name, newParent, newName, flags, ctx);
  }
  link(ino: number, newParent: number, newName: Buffer, ctx: RequestContext): MaybePromise<Entry> {
    return then(this.fs.link(ino, newParent, newName, ctx), this.entry);
  }
  open(ino: number, flags: number, ctx: RequestContext): MaybePromise<OpenReply> {
    return then(this.fs.open(ino, flags, ctx), (o) => ({ fh: o.fh, keepCache: this.options.keepCache, noFlush: o.noFlush }));
  }
  read(ino: number, fh: number, size: number, offset: number, ctx: RequestContext): MaybePromise<Buffer> {
    return this.fs.read(ino, fh, size, offset, ctx);
  }
  write(ino: number, fh: number, data: Buffer, offset: number, ctx: RequestContext): MaybePromise<number> {
    return this.fs.write(ino, fh, data, offset, ctx);
  }
  flush(ino: number, fh: number): MaybePromise<void> {
    return this.fs.flush(ino, fh);
  }
  release(ino: number, fh: number, flags: number): MaybePromise<void> {
    return this.fs.release(ino, fh, flags);
  }
  fsync(ino: number, fh: number, datasync: boolean): MaybePromise<void> {
    return this.fs.fsync(ino, fh, datasync);
  }
  opendir(ino: number, flags: number, ctx: RequestContext): MaybePromise<OpenReply> {
    return then(this.fs.opendir(ino, flags, ctx), (o) => (this.options.keepDirCache ? { fh: o.fh, keepCache: true, cacheDir: true } : { fh: o.fh }));
  }
  readdir(ino: number, fh: number, offset: number, size: number): MaybePromise<DirEntry[]> {
    // As many as could fit if every name were one byte long; the binding packs what fits
    // and the kernel continues from the last one packed.
    return this.fs.readdir(ino, fh, offset, Math.floor(size / direntSize(1)) + 1);
  }
  /**
   * readdir, then a lookup of each name that fits the kernel's buffer (only those: each
   * lookup is a counted reference). A name that cannot be looked up any more goes without
   * attributes; the kernel looks it up itself if it cares.
   */
  readdirplus(ino: number, fh: number, offset: number, size: number, ctx: RequestContext): MaybePromise<DirEntryPlus[]> {
    const listed = this.fs.readdir(ino, fh, offset, Math.floor(size / direntPlusSize(1)) + 1);
    return listed instanceof Promise ? listed.then((list) => this.withAttributes(ino, list, size, ctx)) : this.withAttributes(ino, listed, size, ctx);
  }

  /** The entries of `list` that fit in `size` bytes, each (but . and ..) with its lookup. */
  private withAttributes(ino: number, list: DirEntry[], size: number, ctx: RequestContext): MaybePromise<DirEntryPlus[]> {
    const out: DirEntryPlus[] = [];
    let pending: Promise<void>[] | undefined;
    for (let i = 0, used = 0; i < list.length; i++) {
      const e = list[i];
      used += direntPlusSize(e.name.length);
      if (used > size) break;
      const plus: DirEntryPlus = { name: e.name, ino: e.ino, mode: e.mode, nextOffset: e.nextOffset };
      out.push(plus);
      if (isDotOrDotDot(e.name)) continue;
      let found: MaybePromise<FsEntry>;
      try {
        found = this.fs.lookup(ino, e.name, ctx);
      } catch {
        continue;
      }
      if (found instanceof Promise) {
        (pending ??= []).push(
          found.then(
            (f) => void (plus.entry = this.entry(f)),
            () => undefined,
          ),
        );
      } else {
        plus.entry = this.entry(found);
      }
    }
    return pending ? Promise.all(pending).then(() => out) : out;
  }
  releasedir(ino: number, fh: number): MaybePromise<void> {
    return this.fs.releasedir(ino, fh);
  }
  fsyncdir(ino: number, fh: number, datasync: boolean): MaybePromise<void> {
    return this.fs.fsyncdir(ino, fh, datasync);
  }
  statfs(ino: number): MaybePromise<StatFs> {
    return this.fs.statfs(ino);
  }
  setxattr(ino: number, name: Buffer, value: Buffer, flags: number, ctx: RequestContext): MaybePromise<void> {
    return this.fs.setxattr(ino, name, value, flags, ctx);
  }
  getxattr(ino: number, name: Buffer, ctx: RequestContext): MaybePromise<Buffer> {
    return this.fs.getxattr(ino, name, ctx);
  }
  listxattr(ino: number, ctx: RequestContext): MaybePromise<Buffer> {
    return this.fs.listxattr(ino, ctx);
  }
  removexattr(ino: number, name: Buffer, ctx: RequestContext): MaybePromise<void> {
    return this.fs.removexattr(ino, name, ctx);
  }
  access(ino: number, mask: number, ctx: RequestContext): MaybePromise<void> {
    return this.fs.access(ino, mask, ctx);
  }
  create(parent: number, name: Buffer, mode: number, flags: number, ctx: RequestContext): MaybePromise<Entry & OpenReply> {
    return then(this.fs.create(parent, name, mode, flags, ctx), (c) => ({ ...this.entry(c), fh: c.fh, keepCache: this.options.keepCache, noFlush: c.noFlush }));
  }
  fallocate(ino: number, fh: number, mode: number, offset: number, length: number): MaybePromise<void> {
    if (!this.fs.fallocate) fail(E.ENOSYS);
    return this.fs.fallocate(ino, fh, mode, offset, length);
  }
  lseek(ino: number, fh: number, offset: number, whence: number): MaybePromise<number> {
    if (!this.fs.lseek) fail(E.ENOSYS);
    return this.fs.lseek(ino, fh, offset, whence);
  }
  copyFileRange(range: CopyRange): MaybePromise<number> {
    if (!this.fs.copyFileRange) fail(E.ENOSYS);
    return this.fs.copyFileRange(range);
  }
}
