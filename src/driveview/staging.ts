/**
 * The writable view's staging area: the content of files written through the mount, one
 * plain file each under `<state>/staging/`, until Drive holds it. A write is a pwrite into
 * the staged file, so what a closed file holds is with the operating system when close
 * returns (it survives `kill -9` of the daemon); fsync syncs the file and the directory.
 * The area is bounded: growing past the bound answers ENOSPC, never a silent loss.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { E, fail } from '../posix/errors';

export class StagingArea {
  /** Bytes of every staged file, by file name. */
  private readonly sizes = new Map<string, number>();
  private total = 0;

  constructor(
    readonly dir: string,
    private readonly limitBytes: number,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  get bytes(): number {
    return this.total;
  }

  get limit(): number {
    return this.limitBytes;
  }

  /** A new, empty staged file; its name. */
  create(): string {
    const file = `s${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
    closeSync(openSync(this.path(file), 'wx', 0o600));
    this.note(file, 0);
    return file;
  }

  /** Learns the size of a staged file found after a restart; undefined when the file is gone. */
  adopt(file: string): number | undefined {
    try {
      const size = statSync(this.path(file)).size;
      this.note(file, size);
      return size;
    } catch {
      return undefined;
    }
  }

  /** Removes files no record names (left by a crash before their record was committed). */
  sweep(known: Set<string>): void {
    for (const file of readdirSync(this.dir)) if (!known.has(file)) this.remove(file);
  }

  open(file: string): number {
    return openSync(this.path(file), 'r+');
  }

  close(fd: number): void {
    closeSync(fd);
  }

  size(fd: number): number {
    return fstatSync(fd).size;
  }

  read(fd: number, length: number, offset: number): Buffer {
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return got === length ? buf : buf.subarray(0, got);
  }

  /** Writes at `offset`; ENOSPC when the area would grow past its bound. */
  write(file: string, fd: number, data: Buffer, offset: number): void {
    const before = this.sizes.get(file) ?? 0;
    const after = Math.max(before, offset + data.length);
    if (after > before && this.total + (after - before) > this.limitBytes) fail(E.ENOSPC, `staging area full (${this.limitBytes} bytes)`);
    for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, offset + done);
    this.note(file, after);
  }

  truncate(file: string, fd: number, size: number): void {
    const before = this.sizes.get(file) ?? 0;
    if (size > before && this.total + (size - before) > this.limitBytes) fail(E.ENOSPC, `staging area full (${this.limitBytes} bytes)`);
    ftruncateSync(fd, size);
    this.note(file, size);
  }

  /** Makes a staged file's content and its directory entry durable. */
  sync(fd: number): void {
    fsyncSync(fd);
    const dirFd = openSync(this.dir, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }

  remove(file: string): void {
    rmSync(this.path(file), { force: true });
    this.total -= this.sizes.get(file) ?? 0;
    this.sizes.delete(file);
  }

  private path(file: string): string {
    return join(this.dir, file);
  }

  private note(file: string, size: number): void {
    this.total += size - (this.sizes.get(file) ?? 0);
    this.sizes.set(file, size);
  }
}
