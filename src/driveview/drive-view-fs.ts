/**
 * The Drive view as a FileSystem (plain calls; `src/fuse/fs-adapter.ts` serves them to
 * the kernel). Metadata comes from the mirror (SQLite); inodes are its rows. Read-only
 * unless given a WriteBack (`--rw`): then changes go through it (write-back.ts), and what
 * Drive cannot hold (hard links, special files, symlinks, xattrs) is refused with a log line.
 * Read-only, every call that would change something answers EROFS.
 */
import { constants as fsConstants } from 'node:fs';
import { E, fail } from '../posix/errors';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, type Attr, type AttrChanges, type Caller, type DirEntry, type Entry, type FileSystem, type Opened, type StatFs } from '../posix/file-system';
import type { DriveView } from './drive-view';
import type { EntryRow } from './mirror-db';
import type { WriteBack } from './write-back';

export interface DriveViewFsOptions {
  /** Owner shown for every item (Drive has no owners in POSIX terms). */
  uid: number;
  gid: number;
  /** Set for a writable view (`--rw`). */
  writeBack?: WriteBack;
  /** Where refusals of what Drive cannot hold are said. */
  log?: { warn(msg: string): void };
}

export class DriveViewFs implements FileSystem {
  private readonly wb: WriteBack | undefined;
  private readonly refusedXattrs = new Set<string>();

  constructor(
    private readonly view: DriveView,
    private readonly options: DriveViewFsOptions,
  ) {
    this.wb = options.writeBack;
  }
  private attr(e: EntryRow): Attr {
    const rw = this.wb !== undefined;
    const local = rw && e.item ? this.wb!.localAttrs(e.item) : undefined;
    const perm = local?.mode ?? (e.kind === 'dir' ? (rw ? 0o755 : 0o555) : e.kind === 'link' ? 0o777 : rw ? 0o644 : 0o444);
    const mode = (e.kind === 'dir' ? S_IFDIR : e.kind === 'link' ? S_IFLNK : S_IFREG) | (e.kind === 'link' ? 0o777 : perm);
    const staged = rw && e.item && e.kind === 'file' ? this.wb!.sizeOf(e.item) : undefined;
    const size = e.kind === 'file' ? (staged ?? e.size) : e.kind === 'link' ? this.view.readlink(e.ino).length : 4096;
    const mtime = (rw && e.item ? this.wb!.modifiedOf(e.item) : undefined) ?? e.modifiedMs;
    const ctime = Math.max(mtime, e.createdMs);
    return {
      ino: e.ino,
      mode,
      nlink: e.kind === 'dir' ? 2 : 1,
      uid: local?.uid ?? this.options.uid,
      gid: local?.gid ?? this.options.gid,
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

  async open(ino: number, flags: number, caller: Caller): Promise<Opened> {
    if (!this.wb) {
      if ((flags & 3) !== fsConstants.O_RDONLY || flags & fsConstants.O_TRUNC) fail(E.EROFS);
      return { fh: this.view.open(ino, caller.pid), noFlush: true };
    }
    // Only a staged (writable) handle has anything to flush.
    const staged = await this.wb.open(this.view.entry(ino), flags);
    return staged !== undefined ? { fh: staged } : { fh: this.view.open(ino, caller.pid), noFlush: true };
  }

  read(_ino: number, fh: number, size: number, offset: number, caller: Caller): Promise<Buffer> | Buffer {
    if (this.wb?.isStagedHandle(fh)) return this.wb.read(fh, size, offset);
    return this.view.read(fh, offset, size, caller.pid);
  }

  release(_ino: number, fh: number): void {
    if (this.wb?.isStagedHandle(fh)) this.wb.release(fh);
    else this.view.release(fh);
  }

  flush(_ino: number, fh: number): void {
    if (this.wb?.isStagedHandle(fh)) this.wb.flush(fh);
  }

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

  /** Writable: names and attributes changed here (and their journal entries) reach the disk. */
  fsyncdir(): void {
    if (this.wb) this.view.mirror.checkpoint();
  }

  /** Writable: the staged content, or (for a file not staged) what was changed of its name and attributes. */
  fsync(_ino: number, fh: number | undefined): void {
    if (!this.wb) return;
    if (fh !== undefined && this.wb.isStagedHandle(fh)) this.wb.fsync(fh);
    else this.view.mirror.checkpoint();
  }

  statfs(): StatFs {
    const s = this.view.status();
    // Writable: what the staging area still takes is free (programs check before copying in).
    const free = this.wb ? Math.max(0, Math.floor((this.wb.stagingLimit() - this.wb.stagedBytes()) / 4096)) : 0;
    return { bsize: 4096, frsize: 4096, blocks: Math.ceil(s.bytes / 4096) + free, bfree: free, bavail: free, files: s.items, ffree: 0, favail: 0, namemax: 255 };
  }

  getxattr(): Buffer {
    return fail(E.ENODATA);
  }

  listxattr(): Buffer {
    return Buffer.alloc(0);
  }

  access(ino: number, mask: number): void {
    this.view.entry(ino);
    if (mask & fsConstants.W_OK && !this.wb) fail(E.EROFS);
  }

  // ---- everything that writes: through the WriteBack, or EROFS ----
  private writable(): WriteBack {
    if (!this.wb) fail(E.EROFS);
    return this.wb;
  }

  /** What Drive cannot hold: refused, and said. */
  private refuse(errno: number, what: string): never {
    if (!this.wb) fail(E.EROFS);
    this.options.log?.warn(`refused ${what}: a Drive view cannot hold it`);
    return fail(errno);
  }

  async setattr(ino: number, changes: AttrChanges): Promise<Attr> {
    await this.writable().setattr(this.view.entry(ino), changes);
    return this.attr(this.view.entry(ino));
  }
  async create(parent: number, name: Buffer, mode: number, flags: number, caller: Caller): Promise<Entry & Opened> {
    const r = await this.writable().create(parent, name, mode, caller.uid, caller.gid, flags);
    return { attr: this.attr(this.view.entry(r.ino)), fh: r.fh };
  }
  async mknod(parent: number, name: Buffer, mode: number, _rdev: number, caller: Caller): Promise<Entry> {
    if ((mode & S_IFMT) !== S_IFREG) this.refuse(E.EPERM, `the special file ${name.toString('utf8')}`);
    const r = await this.writable().create(parent, name, mode, caller.uid, caller.gid, fsConstants.O_RDONLY);
    this.writable().release(r.fh);
    return { attr: this.attr(this.view.entry(r.ino)) };
  }
  mkdir(parent: number, name: Buffer, mode: number, caller: Caller): Entry {
    const ino = this.writable().mkdir(parent, name, mode, caller.uid, caller.gid);
    return { attr: this.attr(this.view.entry(ino)) };
  }
  unlink(parent: number, name: Buffer): void {
    this.writable().unlink(parent, name);
  }
  rmdir(parent: number, name: Buffer): void {
    this.writable().rmdir(parent, name);
  }
  symlink(_target: Buffer, _parent: number, name: Buffer): Entry {
    return this.refuse(E.EPERM, `the symbolic link ${name.toString('utf8')}`);
  }
  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): void {
    this.writable().rename(parent, name, newParent, newName, flags);
  }
  link(_ino: number, _newParent: number, newName: Buffer): Entry {
    return this.refuse(E.EPERM, `the hard link ${newName.toString('utf8')}`);
  }
  write(_ino: number, fh: number, data: Buffer, offset: number): number {
    return this.writable().write(fh, data, offset);
  }
  setxattr(_ino: number, name: Buffer): void {
    if (!this.wb) fail(E.EROFS);
    // cp -a sets ACLs on every file: each attribute name is said once, not once per file.
    const text = name.toString('utf8');
    if (this.refusedXattrs.size < 100 && !this.refusedXattrs.has(text)) {
      this.refusedXattrs.add(text);
      this.options.log?.warn(`refused the extended attribute ${text} (said once per name): a Drive view cannot hold it`);
    }
    fail(E.EOPNOTSUPP);
  }
  removexattr(): void {
    fail(this.wb ? E.ENODATA : E.EROFS);
  }
}
