/**
 * The contract between the kernel binding (native addon + FuseSession) and the
 * filesystem that serves it. Everything here is inode-based (libfuse 3 low-level API):
 * inode numbers are the filesystem's own, names are raw bytes, times are (sec, nsec).
 */
import type { Attr, Caller, CopyRange, DirEntry, MaybePromise, StatFs, Unlinked } from '../posix/file-system';

export type { Attr, CopyRange, DirEntry, MaybePromise, StatFs, Unlinked };
export { Falloc, Whence } from '../posix/file-system';

/** Reply to lookup/mknod/mkdir/symlink/link/create. Each such reply adds one to the kernel's lookup count. */
export interface Entry {
  attr: Attr;
  /** Seconds the kernel may cache the name → inode binding. */
  entryTimeout: number;
  /** Seconds the kernel may cache the attributes. */
  attrTimeout: number;
}

/**
 * One name of a readdirplus listing. With `entry`, its attributes go with it and it
 * counts as a lookup (the filesystem counted it, like a lookup reply; the kernel forgets
 * it later). Without (`.`, `..`, or a name that could not be looked up), it is a plain
 * entry, as readdir gives.
 */
export interface DirEntryPlus extends DirEntry {
  entry?: Entry;
}

/** The caller of a request. */
export type RequestContext = Caller;

/** Bits of SetAttr.valid (same values as FUSE_SET_ATTR_* in fuse_lowlevel.h). */
export const SetAttrValid = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  CTIME: 1 << 10,
} as const;

export interface SetAttr {
  /** Which fields below are meaningful: a mask of SetAttrValid bits. */
  valid: number;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

export interface OpenReply {
  /** A non-negative integer below 2^53 (the binding hands the kernel fh * 2 plus a flag bit). */
  fh: number;
  /** Keep the kernel page cache across opens (safe: this mount is the only writer). */
  keepCache?: boolean;
  directIo?: boolean;
  /** flush of this handle has nothing to do: the binding answers it without calling flush(). */
  noFlush?: boolean;
  /**
   * opendir: the kernel may keep the listing it reads (FOPEN_CACHE_DIR) and serve later
   * listings from it; it drops it when the directory changes through the mount. With
   * keepCache, a new open keeps what is cached.
   */
  cacheDir?: boolean;
}

/**
 * What a filesystem implements. A handler returns (or resolves to) its reply; it throws
 * (or rejects with) an error carrying a positive `errno` number to answer with that
 * errno. Any other exception becomes EIO and is logged: the mount stays up.
 */
export interface LowLevelOps {
  init?(): void;
  /** Called once the kernel has released the mount (after unmount), before the session ends. */
  destroy?(): void;
  lookup(parent: number, name: Buffer, ctx: RequestContext): MaybePromise<Entry>;
  /** The kernel dropped `nlookup` references to `ino` (forget and forget_multi both land here). No reply. */
  forget(ino: number, nlookup: number): void;
  getattr(ino: number, fh: number | undefined, ctx: RequestContext): MaybePromise<Attr>;
  setattr(ino: number, changes: SetAttr, fh: number | undefined, ctx: RequestContext): MaybePromise<Attr>;
  readlink(ino: number, ctx: RequestContext): MaybePromise<Buffer>;
  mknod(parent: number, name: Buffer, mode: number, rdev: number, ctx: RequestContext): MaybePromise<Entry>;
  mkdir(parent: number, name: Buffer, mode: number, ctx: RequestContext): MaybePromise<Entry>;
  /**
   * The inode, when the unlink left it unreachable (no name left, no handle open): the
   * binding then answers the kernel's write-back of its times (ENOENT) without a round trip.
   */
  unlink(parent: number, name: Buffer, ctx: RequestContext): MaybePromise<Unlinked | void>;
  rmdir(parent: number, name: Buffer, ctx: RequestContext): MaybePromise<void>;
  symlink(target: Buffer, parent: number, name: Buffer, ctx: RequestContext): MaybePromise<Entry>;
  /** flags: 0, RENAME_NOREPLACE (1) or RENAME_EXCHANGE (2). */
  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, ctx: RequestContext): MaybePromise<void>;
  link(ino: number, newParent: number, newName: Buffer, ctx: RequestContext): MaybePromise<Entry>;
  open(ino: number, flags: number, ctx: RequestContext): MaybePromise<OpenReply>;
  /** Returns at most `size` bytes; fewer only at end of file. */
  read(ino: number, fh: number, size: number, offset: number, ctx: RequestContext): MaybePromise<Buffer>;
  /** `data` is owned by the callee (already copied out of libfuse's buffer). Returns bytes written. */
  write(ino: number, fh: number, data: Buffer, offset: number, ctx: RequestContext): MaybePromise<number>;
  flush(ino: number, fh: number): MaybePromise<void>;
  release(ino: number, fh: number, flags: number): MaybePromise<void>;
  fsync(ino: number, fh: number, datasync: boolean): MaybePromise<void>;
  opendir(ino: number, flags: number, ctx: RequestContext): MaybePromise<OpenReply>;
  /** Entries starting after `offset` (0 = from the start); the binding packs as many as fit in `size`. */
  readdir(ino: number, fh: number, offset: number, size: number): MaybePromise<DirEntry[]>;
  /**
   * readdir with each entry's attributes. Optional: without it the kernel is never asked
   * (it sends readdir and a lookup per name). `size` is the reply buffer in bytes; the
   * binding packs whole entries while they fit and hands every counted entry that did not
   * fit back to forget().
   */
  readdirplus?(ino: number, fh: number, offset: number, size: number, ctx: RequestContext): MaybePromise<DirEntryPlus[]>;
  releasedir(ino: number, fh: number): MaybePromise<void>;
  fsyncdir(ino: number, fh: number, datasync: boolean): MaybePromise<void>;
  statfs(ino: number): MaybePromise<StatFs>;
  /** flags: 0, XATTR_CREATE (1) or XATTR_REPLACE (2). */
  setxattr(ino: number, name: Buffer, value: Buffer, flags: number, ctx: RequestContext): MaybePromise<void>;
  /** Returns the whole value; the binding answers size probes and ERANGE itself. ENODATA when absent. */
  getxattr(ino: number, name: Buffer, ctx: RequestContext): MaybePromise<Buffer>;
  /** Returns every name, each followed by a NUL byte; the binding answers size probes and ERANGE. */
  listxattr(ino: number, ctx: RequestContext): MaybePromise<Buffer>;
  removexattr(ino: number, name: Buffer, ctx: RequestContext): MaybePromise<void>;
  access(ino: number, mask: number, ctx: RequestContext): MaybePromise<void>;
  /** Creates and opens in one step. */
  create(parent: number, name: Buffer, mode: number, flags: number, ctx: RequestContext): MaybePromise<Entry & OpenReply>;
  /** fallocate(2) on an open file; `mode` is a mask of Falloc bits. Optional: absent answers ENOSYS. */
  fallocate?(ino: number, fh: number, mode: number, offset: number, length: number): MaybePromise<void>;
  /** SEEK_DATA / SEEK_HOLE (the kernel answers the other whence values itself); ENXIO past the data. Optional. */
  lseek?(ino: number, fh: number, offset: number, whence: number): MaybePromise<number>;
  /** Copies bytes between open files (the kernel has flushed dirty pages of both ranges); returns bytes copied. Optional. */
  copyFileRange?(range: CopyRange): MaybePromise<number>;
}

export interface MountOptions {
  /** Shown as the source in /proc/mounts; pogfs uses the volume path. As is: the session escapes it for libfuse. */
  fsname: string;
  subtype: string;
  allowOther: boolean;
  defaultPermissions: boolean;
  writebackCache: boolean;
  readOnly?: boolean;
  /** Largest write request the kernel may send, in bytes (default 1 MiB). */
  maxWrite?: number;
  /** Log every request to stderr (debugging only). */
  debug?: boolean;
  /**
   * Seconds the kernel may cache a failed lookup (ENOENT) as a negative dentry.
   * Default 0: ENOENT is not cached.
   */
  negativeTimeout?: number;
  /** Seconds the kernel may cache attributes returned by getattr/setattr (default 1). */
  attrTimeout?: number;
}
