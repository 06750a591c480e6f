/**
 * A filesystem as plain calls: what a volume (`vfs`) and the Drive view (`driveview`)
 * implement, and what the FUSE adapter (`fuse/fs-adapter.ts`) drives. Nothing here is
 * protocol: no valid bits, no cache timeouts, no reply packing. Everything is inode
 * based, names are raw bytes, times are (seconds, nanoseconds). A call answers an error
 * by throwing (or rejecting with) an FsError carrying the Linux errno.
 */

/** The lowest inode number, always the root directory. */
export const ROOT_INO = 1;
/** Longest name in a directory, in bytes. */
export const NAME_MAX = 255;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_ISGID = 0o2000;

export const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR;
export const isReg = (mode: number): boolean => (mode & S_IFMT) === S_IFREG;

export type MaybePromise<T> = T | Promise<T>;

/**
 * What an unlink says: the inode's attributes, when it lost its last name while no handle
 * has it open (nothing can reach it any more; its number is never used again).
 */
export type Unlinked = { gone: Attr } | undefined;

/** A point in time as whole seconds and nanoseconds, the form stored and sent to the kernel. */
export interface Timespec {
  s: number;
  ns: number;
}

/** Attributes of one inode (stat(2)). */
export interface Attr {
  ino: number;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: number;
  size: number;
  /** 512-byte units actually stored (holes excluded). */
  blocks: number;
  atimeSec: number;
  atimeNsec: number;
  mtimeSec: number;
  mtimeNsec: number;
  ctimeSec: number;
  ctimeNsec: number;
}

/**
 * A counted reference to an inode, as lookup, mknod, mkdir, symlink, link and create
 * return it: the filesystem keeps the inode alive (even unlinked) until the caller drops
 * every reference it was given with `forget`.
 */
export interface Entry {
  attr: Attr;
}

/** An open file or directory. */
export interface Opened {
  fh: number;
  /** flush of this handle does nothing (a handle that cannot write): it need not be called. */
  noFlush?: boolean;
}

/** Who makes a call. */
export interface Caller {
  uid: number;
  gid: number;
  pid: number;
  umask: number;
}

/**
 * What setattr changes: only the fields present. A time is explicit or 'now'. ctime is
 * set to now unless given (as utimensat and chown do on Linux).
 */
export interface AttrChanges {
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  atime?: Timespec | 'now';
  mtime?: Timespec | 'now';
  ctime?: Timespec;
}

export interface DirEntry {
  name: Buffer;
  ino: number;
  /** Only the S_IFMT bits are used. */
  mode: number;
  /** The offset to pass back to readdir to continue after this entry. */
  nextOffset: number;
}

export interface StatFs {
  bsize: number;
  frsize: number;
  blocks: number;
  bfree: number;
  bavail: number;
  files: number;
  ffree: number;
  favail: number;
  namemax: number;
}

/** A copy_file_range(2) call: `length` bytes from (inoIn, offIn) to (inoOut, offOut). */
export interface CopyRange {
  inoIn: number;
  fhIn: number;
  offIn: number;
  inoOut: number;
  fhOut: number;
  offOut: number;
  length: number;
  /** Always 0 today (the syscall rejects anything else). */
  flags: number;
}

/** What changed underneath the kernel's caches: names in directories, and inodes (attributes and content). */
export interface Invalidation {
  entries: Array<[number, Buffer]>;
  inodes: number[];
}

/** fallocate(2) mode bits (linux/falloc.h). */
export const Falloc = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
  COLLAPSE_RANGE: 0x08,
  ZERO_RANGE: 0x10,
  INSERT_RANGE: 0x20,
} as const;

/** lseek(2) whence values that reach a filesystem (SEEK_DATA, SEEK_HOLE). */
export const Whence = { DATA: 3, HOLE: 4 } as const;

/** rename(2) flags. */
export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
/** setxattr(2) flags. */
export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

/**
 * The calls. Permission checks are the caller's (the kernel's `default_permissions`),
 * except `access`.
 */
export interface FileSystem {
  lookup(parent: number, name: Buffer, caller: Caller): MaybePromise<Entry>;
  /** The caller dropped `count` of the references lookup & co. gave it. */
  forget(ino: number, count: number): void;
  getattr(ino: number, fh: number | undefined, caller: Caller): MaybePromise<Attr>;
  setattr(ino: number, changes: AttrChanges, fh: number | undefined, caller: Caller): MaybePromise<Attr>;
  readlink(ino: number, caller: Caller): MaybePromise<Buffer>;
  mknod(parent: number, name: Buffer, mode: number, rdev: number, caller: Caller): MaybePromise<Entry>;
  mkdir(parent: number, name: Buffer, mode: number, caller: Caller): MaybePromise<Entry>;
  /** Says which inode is gone, when the unlink left one unreachable (see Unlinked). */
  unlink(parent: number, name: Buffer, caller: Caller): MaybePromise<Unlinked | void>;
  rmdir(parent: number, name: Buffer, caller: Caller): MaybePromise<void>;
  symlink(target: Buffer, parent: number, name: Buffer, caller: Caller): MaybePromise<Entry>;
  /** flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE. */
  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, caller: Caller): MaybePromise<void>;
  link(ino: number, newParent: number, newName: Buffer, caller: Caller): MaybePromise<Entry>;
  open(ino: number, flags: number, caller: Caller): MaybePromise<Opened>;
  /** At most `size` bytes; fewer only at end of file. */
  read(ino: number, fh: number, size: number, offset: number, caller: Caller): MaybePromise<Buffer>;
  /** `data` belongs to the callee. Returns bytes written. */
  write(ino: number, fh: number, data: Buffer, offset: number, caller: Caller): MaybePromise<number>;
  /** A close(2) of one descriptor of the handle (there may be several, after dup). */
  flush(ino: number, fh: number): MaybePromise<void>;
  /** The handle's last descriptor is gone. */
  release(ino: number, fh: number, flags: number): MaybePromise<void>;
  fsync(ino: number, fh: number | undefined, datasync: boolean): MaybePromise<void>;
  opendir(ino: number, flags: number, caller: Caller): MaybePromise<Opened>;
  /** Up to `limit` entries after `offset` (0: from the start). */
  readdir(ino: number, fh: number, offset: number, limit: number): MaybePromise<DirEntry[]>;
  releasedir(ino: number, fh: number): MaybePromise<void>;
  fsyncdir(ino: number, fh: number, datasync: boolean): MaybePromise<void>;
  statfs(ino: number): MaybePromise<StatFs>;
  /** flags: 0, XATTR_CREATE or XATTR_REPLACE. */
  setxattr(ino: number, name: Buffer, value: Buffer, flags: number, caller: Caller): MaybePromise<void>;
  /** The whole value; ENODATA when absent. */
  getxattr(ino: number, name: Buffer, caller: Caller): MaybePromise<Buffer>;
  /** Every name, each followed by a NUL byte. */
  listxattr(ino: number, caller: Caller): MaybePromise<Buffer>;
  removexattr(ino: number, name: Buffer, caller: Caller): MaybePromise<void>;
  access(ino: number, mask: number, caller: Caller): MaybePromise<void>;
  /** Creates and opens in one step. */
  create(parent: number, name: Buffer, mode: number, flags: number, caller: Caller): MaybePromise<Entry & Opened>;
  /** `mode`: a mask of Falloc bits. Absent: ENOSYS. */
  fallocate?(ino: number, fh: number, mode: number, offset: number, length: number): MaybePromise<void>;
  /** SEEK_DATA / SEEK_HOLE; ENXIO past the data. Absent: the kernel's default. */
  lseek?(ino: number, fh: number, offset: number, whence: number): MaybePromise<number>;
  /** Returns bytes copied. Absent: the kernel copies through read and write. */
  copyFileRange?(range: CopyRange): MaybePromise<number>;
}
