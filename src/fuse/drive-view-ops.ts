/**
 * The FUSE adapter of the Drive view: kernel requests → DriveView calls. Read-only: every
 * request that would change something answers EROFS. Metadata comes from the mirror
 * (SQLite), so entries and attributes are cached by the kernel for a long time; after a
 * changes poll, `invalidate` makes it forget exactly what changed.
 */
import * as os from 'node:os';
import { constants as fsConstants } from 'node:fs';
import type { DriveView } from '../driveview/drive-view';
import type { EntryRow, Invalidation } from '../driveview/mirror-db';
import type { FuseSession } from './session';
import type { Attr, DirEntry, Entry, LowLevelOps, OpenReply, RequestContext, StatFs } from './types';
import { direntSize } from './session';

const E = os.constants.errno;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function fail(errno: number): never {
  throw Object.assign(new Error(`errno ${errno}`), { errno });
}

const INVALIDATION_BATCH = 64;

export interface DriveViewOpsOptions {
  /** Seconds the kernel keeps names and attributes (long: a poll invalidates what changed). */
  cacheTimeout: number;
  uid: number;
  gid: number;
}

export class DriveViewOps implements LowLevelOps {
  private session: FuseSession | undefined;

  constructor(
    private readonly view: DriveView,
    private readonly options: DriveViewOpsOptions,
  ) {}

  attach(session: FuseSession): void {
    this.session = session;
  }

  /** Tells the kernel to forget what a poll changed; resolves when it has. */
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
    // In batches: a rescan may touch every name, and each notice is a job on libuv's threads.
    for (let i = 0; i < jobs.length; i += INVALIDATION_BATCH) await Promise.all(jobs.slice(i, i + INVALIDATION_BATCH).map((j) => j()));
  }

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
    const e = this.view.lookup(parent, name);
    return { attr: this.attr(e), entryTimeout: this.options.cacheTimeout, attrTimeout: this.options.cacheTimeout };
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

  open(ino: number, flags: number, ctx: RequestContext): OpenReply {
    if ((flags & 3) !== fsConstants.O_RDONLY || flags & fsConstants.O_TRUNC) fail(E.EROFS);
    // The page cache is kept across opens: content changes are invalidated after each poll.
    return { fh: this.view.open(ino, ctx.pid), keepCache: true };
  }

  read(_ino: number, fh: number, size: number, offset: number, ctx: RequestContext): Promise<Buffer> {
    return this.view.read(fh, offset, size, ctx.pid);
  }

  release(_ino: number, fh: number): void {
    this.view.release(fh);
  }

  flush(): void {}

  opendir(ino: number): OpenReply {
    if (this.view.entry(ino).kind !== 'dir') fail(E.ENOTDIR);
    return { fh: 0 };
  }

  readdir(ino: number, _fh: number, offset: number, size: number): DirEntry[] {
    const out: DirEntry[] = [];
    let room = size;
    // The offset is the inode of the last entry returned (entries are listed in inode order).
    for (let after = offset; room > 0; ) {
      const batch = this.view.list(ino, after, 256);
      if (batch.length === 0) break;
      for (const b of batch) {
        const need = direntSize(b.name.length);
        if (need > room) return out;
        room -= need;
        out.push({ name: b.name, ino: b.ino, mode: b.kind === 'dir' ? S_IFDIR : b.kind === 'link' ? S_IFLNK : S_IFREG, nextOffset: b.ino });
        after = b.ino;
      }
    }
    return out;
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
  create(): Entry & OpenReply {
    return fail(E.EROFS);
  }
  setxattr(): void {
    fail(E.EROFS);
  }
  removexattr(): void {
    fail(E.EROFS);
  }
}

