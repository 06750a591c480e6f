/**
 * The Drive view as a FileSystem (plain calls; `src/fuse/fs-adapter.ts` serves them to
 * the kernel). Read-only: every call that would change something answers EROFS.
 * Metadata comes from the mirror (SQLite); inodes are its rows.
 */
import { constants as fsConstants } from 'node:fs';
import { E, fail } from '../posix/errors';
import { S_IFDIR, S_IFLNK, S_IFREG, type Attr, type Caller, type DirEntry, type Entry, type FileSystem, type Opened, type StatFs } from '../posix/file-system';
import type { DriveView } from './drive-view';
import type { EntryRow } from './mirror-db';

export interface DriveViewFsOptions {
  /** Owner shown for every item (Drive has no owners in POSIX terms). */
  uid: number;
  gid: number;
}

export class DriveViewFs implements FileSystem {
  constructor(
    private readonly view: DriveView,
    private readonly options: DriveViewFsOptions,
  ) {}
  private attr(e: EntryRow): Attr {
    const mode = e.kind === 'dir' ? S_IFDIR | 0o555 : e.kind === 'link' ? S_IFLNK | 0o777 : S_IFREG | 0o444;
    const size = e.kind === 'file' ? e.size : e.kind === 'link' ? this.view.readlink(e.ino).length : 4096;
    const mtime = e.modifiedMs;
    const ctime = Math.max(e.modifiedMs, e.createdMs);
    return {
      ino: e.ino,
      mode,
      nlink: e.kind === 'dir' ? 2 : 1,
      uid: this.options.uid,
      gid: this.options.gid,
      rdev: 0,
      size,
      blocks: Math.ceil(size / 512),
      atimeSec: Math.floor(mtime / 1000),
      atimeNsec: (mtime % 1000) * 1e6,
      mtimeSec: Math.floor(mtime / 1000),
      mtimeNsec: (mtime % 1000) * 1e6,
      ctimeSec: Math.floor(ctime / 1000),
      ctimeNsec: (ctime % 1000) * 1e6,
    };
  }

  lookup(parent: number, name: Buffer): Entry {
    return { attr: this.attr(this.view.lookup(parent, name)) };
  }

  forget(): void {
    // Inodes are rows of the mirror: nothing to release.
  }

  getattr(ino: number): Attr {
    return this.attr(this.view.entry(ino));
  }

  readlink(ino: number): Buffer {
    const e = this.view.entry(ino);
    if (e.kind !== 'link') fail(E.EINVAL);
    return this.view.readlink(ino);
  }

  open(ino: number, flags: number, caller: Caller): Opened {
    if ((flags & 3) !== fsConstants.O_RDONLY || flags & fsConstants.O_TRUNC) fail(E.EROFS);
    return { fh: this.view.open(ino, caller.pid) };
  }

  read(_ino: number, fh: number, size: number, offset: number, caller: Caller): Promise<Buffer> {
    return this.view.read(fh, offset, size, caller.pid);
  }

  release(_ino: number, fh: number): void {
    this.view.release(fh);
  }

  flush(): void {}

  opendir(ino: number): Opened {
    if (this.view.entry(ino).kind !== 'dir') fail(E.ENOTDIR);
    return { fh: 0 };
  }

  readdir(ino: number, _fh: number, offset: number, limit: number): DirEntry[] {
    // The offset is the inode of the last entry returned (entries are listed in inode order).
    return this.view.list(ino, offset, limit).map((b) => ({
      name: b.name,
      ino: b.ino,
      mode: b.kind === 'dir' ? S_IFDIR : b.kind === 'link' ? S_IFLNK : S_IFREG,
      nextOffset: b.ino,
    }));
  }

  releasedir(): void {}

  fsyncdir(): void {}

  fsync(): void {}

  statfs(): StatFs {
    const s = this.view.status();
    return { bsize: 4096, frsize: 4096, blocks: Math.ceil(s.bytes / 4096), bfree: 0, bavail: 0, files: s.items, ffree: 0, favail: 0, namemax: 255 };
  }

  getxattr(): Buffer {
    return fail(E.ENODATA);
  }

  listxattr(): Buffer {
    return Buffer.alloc(0);
  }

  access(ino: number, mask: number): void {
    this.view.entry(ino);
    if (mask & fsConstants.W_OK) fail(E.EROFS);
  }

  // ---- everything that writes: read-only ----
  setattr(): Attr {
    return fail(E.EROFS);
  }
  mknod(): Entry {
    return fail(E.EROFS);
  }
  mkdir(): Entry {
    return fail(E.EROFS);
  }
  unlink(): void {
    fail(E.EROFS);
  }
  rmdir(): void {
    fail(E.EROFS);
  }
  symlink(): Entry {
    return fail(E.EROFS);
  }
  rename(): void {
    fail(E.EROFS);
  }
  link(): Entry {
    return fail(E.EROFS);
  }
  write(): number {
    return fail(E.EROFS);
  }
  create(): Entry & Opened {
    return fail(E.EROFS);
  }
  setxattr(): void {
    fail(E.EROFS);
  }
  removexattr(): void {
    fail(E.EROFS);
  }
}

