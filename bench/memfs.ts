/**
 * MemFs: a minimal in-memory LowLevelOps filesystem, the "ceiling of the FUSE path" in Node
 * for benchmarks (everything a real pogfs request costs on top of this is pogfs's own).
 *
 *   node dist/bench/memfs.js MOUNTPOINT [--allow-other] [--no-writeback] [--debug]
 *
 * mounts it (writeback cache on), prints "ready", and unmounts on SIGINT/SIGTERM.
 */
import * as os from 'node:os';
import { FuseSession, direntSize } from '../src/fuse/session';
import type {
  Attr,
  DirEntry,
  Entry,
  LowLevelOps,
  OpenReply,
  RequestContext,
  SetAttr,
  StatFs,
} from '../src/fuse/types';
import { SetAttrValid } from '../src/fuse/types';
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../src/posix/file-system';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE } from '../src/meta/engine';

const E = os.constants.errno;
/** File data lives in chunks of this size; a chunk grows up to it as it is written. */
const CHUNK = 1024 * 1024;

class FsError extends Error {
  constructor(readonly errno: number) {
    super(`errno ${errno}`);
  }
}
const fail = (errno: number): never => {
  throw new FsError(errno);
};

interface DirEnt {
  name: Buffer;
  ino: number;
  /** readdir offset of this entry; . and .. are 1 and 2. */
  cookie: number;
  live: boolean;
}

interface DirData {
  parent: number;
  byName: Map<string, DirEnt>;
  /** Sorted by cookie; removed entries stay as tombstones until compaction. */
  list: DirEnt[];
  dead: number;
  nextCookie: number;
}

/** The kernel's attributes (st_blocks is derived from the chunks) plus what memfs keeps. */
interface Inode extends Omit<Attr, 'blocks'> {
  /** Kernel lookup count. */
  lookups: number;
  opens: number;
  chunks?: (Buffer | undefined)[];
  dir?: DirData;
  target?: Buffer;
  xattrs?: Map<string, Buffer>;
}

export interface MemFsStats {
  writes: number;
  writeBytes: number;
  maxWrite: number;
  /** Write request sizes (bytes) -> count. */
  writeSizes: Map<number, number>;
  reads: number;
  maxRead: number;
}

export interface MemFsOptions {
  entryTimeout?: number;
  attrTimeout?: number;
}

const key = (name: Buffer): string => name.toString('latin1');

function now(): [number, number] {
  const ms = performance.timeOrigin + performance.now();
  const sec = Math.floor(ms / 1000);
  return [sec, Math.min(999_999_999, Math.round((ms - sec * 1000) * 1e6))];
}

export class MemFs implements LowLevelOps {
  readonly stats: MemFsStats = { writes: 0, writeBytes: 0, maxWrite: 0, writeSizes: new Map(), reads: 0, maxRead: 0 };
  private readonly inodes = new Map<number, Inode>();
  private nextIno = 2;
  private nextFh = 1;
  private readonly entryTimeout: number;
  private readonly attrTimeout: number;

  constructor(options: MemFsOptions = {}) {
    this.entryTimeout = options.entryTimeout ?? 10;
    this.attrTimeout = options.attrTimeout ?? 10;
    const root = this.newInode(S_IFDIR | 0o755, process.getuid?.() ?? 0, process.getgid?.() ?? 0);
    root.ino = 1;
    root.nlink = 2;
    root.lookups = 1; // the kernel never forgets the root
    root.dir = this.newDir(1);
    this.inodes.set(1, root);
  }

  /** The whole content of a regular file (for tests). */
  contentOf(ino: number): Buffer {
    const node = this.node(ino);
    return node.chunks ? this.readRange(node, 0, node.size) : Buffer.alloc(0);
  }

  // ------------------------------------------------------------------ helpers

  private newDir(parent: number): DirData {
    return { parent, byName: new Map(), list: [], dead: 0, nextCookie: 3 };
  }

  private newInode(mode: number, uid: number, gid: number): Inode {
    const [s, ns] = now();
    return {
      ino: 0, mode, nlink: 1, uid, gid, rdev: 0, size: 0,
      atimeSec: s, atimeNsec: ns, mtimeSec: s, mtimeNsec: ns, ctimeSec: s, ctimeNsec: ns,
      lookups: 0, opens: 0,
    };
  }

  private node(ino: number): Inode {
    return this.inodes.get(ino) ?? fail(E.ENOENT);
  }

  private dirOf(ino: number): DirData {
    return this.node(ino).dir ?? fail(E.ENOTDIR);
  }

  private attr(n: Inode): Attr {
    let stored = 0;
    if (n.chunks) {
      for (const c of n.chunks) if (c) stored += c.length;
    } else if (n.target) {
      stored = n.target.length;
    }
    return {
      ino: n.ino, mode: n.mode, nlink: n.nlink, uid: n.uid, gid: n.gid, rdev: n.rdev, size: n.size,
      blocks: Math.ceil(stored / 512),
      atimeSec: n.atimeSec, atimeNsec: n.atimeNsec, mtimeSec: n.mtimeSec, mtimeNsec: n.mtimeNsec,
      ctimeSec: n.ctimeSec, ctimeNsec: n.ctimeNsec,
    };
  }

  /** Builds an entry reply and counts the kernel's new reference. */
  private entry(n: Inode): Entry {
    n.lookups++;
    return { attr: this.attr(n), entryTimeout: this.entryTimeout, attrTimeout: this.attrTimeout };
  }

  private touch(n: Inode, mtime: boolean): void {
    const [s, ns] = now();
    n.ctimeSec = s;
    n.ctimeNsec = ns;
    if (mtime) {
      n.mtimeSec = s;
      n.mtimeNsec = ns;
    }
  }

  private maybeDrop(n: Inode): void {
    if (n.nlink === 0 && n.lookups <= 0 && n.opens <= 0 && n.ino !== 1) this.inodes.delete(n.ino);
  }

  private addEntry(dir: DirData, name: Buffer, ino: number): void {
    const ent: DirEnt = { name: Buffer.from(name), ino, cookie: dir.nextCookie++, live: true };
    dir.byName.set(key(name), ent);
    dir.list.push(ent);
  }

  private removeEntry(dir: DirData, name: Buffer): void {
    const ent = dir.byName.get(key(name));
    if (!ent) return;
    dir.byName.delete(key(name));
    ent.live = false;
    if (++dir.dead > 64 && dir.dead > dir.list.length / 2) {
      dir.list = dir.list.filter((e) => e.live);
      dir.dead = 0;
    }
  }

  private create0(parent: number, name: Buffer, mode: number, ctx: RequestContext): Inode {
    const dirNode = this.node(parent);
    const dir = dirNode.dir ?? fail(E.ENOTDIR);
    if (name.length > 255) fail(E.ENAMETOOLONG);
    if (dir.byName.has(key(name))) fail(E.EEXIST);
    const n = this.newInode(mode, ctx.uid, ctx.gid);
    n.ino = this.nextIno++;
    this.inodes.set(n.ino, n);
    this.addEntry(dir, name, n.ino);
    this.touch(dirNode, true);
    return n;
  }

  // ------------------------------------------------------------------ file data

  private readRange(n: Inode, off: number, len: number): Buffer {
    const chunks = n.chunks ?? [];
    const ci = Math.floor(off / CHUNK);
    const within = off - ci * CHUNK;
    const first = chunks[ci];
    // Common case: the range lies in one chunk that has the bytes: no copy (the binding
    // copies into the reply).
    if (first && within + len <= first.length) return first.subarray(within, within + len);
    const out = Buffer.alloc(len);
    let pos = 0;
    while (pos < len) {
      const abs = off + pos;
      const i = Math.floor(abs / CHUNK);
      const w = abs - i * CHUNK;
      const n2 = Math.min(CHUNK - w, len - pos);
      const c = chunks[i];
      if (c && w < c.length) c.copy(out, pos, w, Math.min(c.length, w + n2));
      pos += n2;
    }
    return out;
  }

  private writeRange(n: Inode, data: Buffer, off: number): void {
    const chunks = (n.chunks ??= []);
    let pos = 0;
    while (pos < data.length) {
      const abs = off + pos;
      const i = Math.floor(abs / CHUNK);
      const w = abs - i * CHUNK;
      const len = Math.min(CHUNK - w, data.length - pos);
      let c = chunks[i];
      if (w === 0 && len === CHUNK) {
        // A whole aligned chunk: keep the write's own buffer (it belongs to us).
        chunks[i] = data.subarray(pos, pos + len);
      } else {
        if (!c || c.length < w + len) {
          const grown = Buffer.alloc(Math.min(CHUNK, Math.max(w + len, (c?.length ?? 0) * 2, 4096)));
          if (c) c.copy(grown);
          chunks[i] = c = grown;
        }
        data.copy(c, w, pos, pos + len);
      }
      pos += len;
    }
    if (off + data.length > n.size) n.size = off + data.length;
  }

  private truncate(n: Inode, size: number): void {
    const chunks = (n.chunks ??= []);
    if (size < n.size) {
      const keep = Math.ceil(size / CHUNK);
      chunks.length = Math.min(chunks.length, keep);
      const last = keep - 1;
      const c = chunks[last];
      if (c && size - last * CHUNK < c.length) c.fill(0, size - last * CHUNK);
    }
    n.size = size;
  }

  // ------------------------------------------------------------------ LowLevelOps

  lookup(parent: number, name: Buffer): Entry {
    const ent = this.dirOf(parent).byName.get(key(name)) ?? fail(E.ENOENT);
    return this.entry(this.node(ent.ino));
  }

  forget(ino: number, nlookup: number): void {
    const n = this.inodes.get(ino);
    if (!n || ino === 1) return;
    n.lookups -= nlookup;
    this.maybeDrop(n);
  }

  getattr(ino: number): Attr {
    return this.attr(this.node(ino));
  }

  setattr(ino: number, c: SetAttr): Attr {
    const n = this.node(ino);
    const v = c.valid;
    if (v & SetAttrValid.MODE) n.mode = (n.mode & S_IFMT) | (c.mode & 0o7777);
    if (v & SetAttrValid.UID) n.uid = c.uid;
    if (v & SetAttrValid.GID) n.gid = c.gid;
    if (v & SetAttrValid.SIZE) {
      if (n.dir) fail(E.EISDIR);
      if ((n.mode & S_IFMT) !== S_IFREG) fail(E.EINVAL);
      this.truncate(n, c.size);
      this.touch(n, true);
    }
    const [s, ns] = now();
    if (v & SetAttrValid.ATIME_NOW) [n.atimeSec, n.atimeNsec] = [s, ns];
    else if (v & SetAttrValid.ATIME) [n.atimeSec, n.atimeNsec] = [c.atimeSec, c.atimeNsec];
    if (v & SetAttrValid.MTIME_NOW) [n.mtimeSec, n.mtimeNsec] = [s, ns];
    else if (v & SetAttrValid.MTIME) [n.mtimeSec, n.mtimeNsec] = [c.mtimeSec, c.mtimeNsec];
    if (v & SetAttrValid.CTIME) [n.ctimeSec, n.ctimeNsec] = [c.ctimeSec, c.ctimeNsec];
    else [n.ctimeSec, n.ctimeNsec] = [s, ns];
    return this.attr(n);
  }

  readlink(ino: number): Buffer {
    return this.node(ino).target ?? fail(E.EINVAL);
  }

  mknod(parent: number, name: Buffer, mode: number, rdev: number, ctx: RequestContext): Entry {
    const n = this.create0(parent, name, mode, ctx);
    n.rdev = rdev;
    if ((mode & S_IFMT) === S_IFREG) n.chunks = [];
    return this.entry(n);
  }

  mkdir(parent: number, name: Buffer, mode: number, ctx: RequestContext): Entry {
    const n = this.create0(parent, name, S_IFDIR | (mode & 0o7777), ctx);
    n.nlink = 2;
    n.dir = this.newDir(parent);
    this.node(parent).nlink++;
    return this.entry(n);
  }

  unlink(parent: number, name: Buffer): void {
    const dirNode = this.node(parent);
    const dir = dirNode.dir ?? fail(E.ENOTDIR);
    const ent = dir.byName.get(key(name)) ?? fail(E.ENOENT);
    const n = this.node(ent.ino);
    if (n.dir) fail(E.EISDIR);
    this.removeEntry(dir, name);
    n.nlink--;
    this.touch(n, false);
    this.touch(dirNode, true);
    this.maybeDrop(n);
  }

  rmdir(parent: number, name: Buffer): void {
    const dirNode = this.node(parent);
    const dir = dirNode.dir ?? fail(E.ENOTDIR);
    const ent = dir.byName.get(key(name)) ?? fail(E.ENOENT);
    const n = this.node(ent.ino);
    if (!n.dir) fail(E.ENOTDIR);
    if (n.dir!.byName.size > 0) fail(E.ENOTEMPTY);
    this.removeEntry(dir, name);
    n.nlink = 0;
    dirNode.nlink--;
    this.touch(dirNode, true);
    this.maybeDrop(n);
  }

  symlink(target: Buffer, parent: number, name: Buffer, ctx: RequestContext): Entry {
    const n = this.create0(parent, name, S_IFLNK | 0o777, ctx);
    n.target = Buffer.from(target);
    n.size = target.length;
    return this.entry(n);
  }

  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): void {
    const srcDirNode = this.node(parent);
    const dstDirNode = this.node(newParent);
    const src = srcDirNode.dir ?? fail(E.ENOTDIR);
    const dst = dstDirNode.dir ?? fail(E.ENOTDIR);
    const sEnt = src.byName.get(key(name)) ?? fail(E.ENOENT);
    const dEnt = dst.byName.get(key(newName));
    const sNode = this.node(sEnt.ino);
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) fail(E.EINVAL);
    if (flags & RENAME_EXCHANGE) {
      if (!dEnt) fail(E.ENOENT);
      const dNode = this.node(dEnt!.ino);
      [sEnt.ino, dEnt!.ino] = [dEnt!.ino, sEnt.ino];
      if (parent !== newParent) {
        if (sNode.dir) { sNode.dir.parent = newParent; srcDirNode.nlink--; dstDirNode.nlink++; }
        if (dNode.dir) { dNode.dir.parent = parent; dstDirNode.nlink--; srcDirNode.nlink++; }
      }
      this.touch(sNode, false);
      this.touch(dNode, false);
    } else {
      if (dEnt) {
        if (flags & RENAME_NOREPLACE) fail(E.EEXIST);
        if (dEnt.ino === sEnt.ino) return;
        const dNode = this.node(dEnt.ino);
        if (sNode.dir && !dNode.dir) fail(E.ENOTDIR);
        if (!sNode.dir && dNode.dir) fail(E.EISDIR);
        if (dNode.dir && dNode.dir.byName.size > 0) fail(E.ENOTEMPTY);
        this.removeEntry(dst, newName);
        if (dNode.dir) {
          dNode.nlink = 0;
          dstDirNode.nlink--;
        } else {
          dNode.nlink--;
        }
        this.touch(dNode, false);
        this.maybeDrop(dNode);
      }
      this.removeEntry(src, name);
      this.addEntry(dst, newName, sNode.ino);
      if (sNode.dir && parent !== newParent) {
        sNode.dir.parent = newParent;
        srcDirNode.nlink--;
        dstDirNode.nlink++;
      }
      this.touch(sNode, false);
    }
    this.touch(srcDirNode, true);
    this.touch(dstDirNode, true);
  }

  link(ino: number, newParent: number, newName: Buffer): Entry {
    const n = this.node(ino);
    if (n.dir) fail(E.EPERM);
    const dirNode = this.node(newParent);
    const dir = dirNode.dir ?? fail(E.ENOTDIR);
    if (dir.byName.has(key(newName))) fail(E.EEXIST);
    this.addEntry(dir, newName, ino);
    n.nlink++;
    this.touch(n, false);
    this.touch(dirNode, true);
    return this.entry(n);
  }

  open(ino: number): OpenReply {
    const n = this.node(ino);
    if (n.dir) fail(E.EISDIR);
    n.opens++;
    return { fh: this.nextFh++, keepCache: true };
  }

  read(ino: number, _fh: number, size: number, offset: number): Buffer {
    const n = this.node(ino);
    this.stats.reads++;
    if (size > this.stats.maxRead) this.stats.maxRead = size;
    const end = Math.min(n.size, offset + size);
    return end > offset ? this.readRange(n, offset, end - offset) : Buffer.alloc(0);
  }

  write(ino: number, _fh: number, data: Buffer, offset: number): number {
    const n = this.node(ino);
    const st = this.stats;
    st.writes++;
    st.writeBytes += data.length;
    if (data.length > st.maxWrite) st.maxWrite = data.length;
    st.writeSizes.set(data.length, (st.writeSizes.get(data.length) ?? 0) + 1);
    this.writeRange(n, data, offset);
    this.touch(n, true);
    return data.length;
  }

  flush(): void {}

  release(ino: number): void {
    const n = this.inodes.get(ino);
    if (!n) return;
    n.opens--;
    this.maybeDrop(n);
  }

  fsync(): void {}

  opendir(ino: number): OpenReply {
    this.dirOf(ino);
    return { fh: this.nextFh++ };
  }

  readdir(ino: number, _fh: number, offset: number, size: number): DirEntry[] {
    const dirNode = this.node(ino);
    const dir = dirNode.dir ?? fail(E.ENOTDIR);
    const out: DirEntry[] = [];
    let used = 0;
    const push = (name: Buffer, eino: number, mode: number, next: number): boolean => {
      used += direntSize(name.length);
      if (used > size && out.length > 0) return false;
      out.push({ name, ino: eino, mode, nextOffset: next });
      return true;
    };
    if (offset < 1 && !push(Buffer.from('.'), ino, S_IFDIR, 1)) return out;
    if (offset < 2 && !push(Buffer.from('..'), dir.parent, S_IFDIR, 2)) return out;
    // Binary search for the first entry after `offset`.
    const list = dir.list;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid].cookie <= offset) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < list.length; i++) {
      const e = list[i];
      if (!e.live) continue;
      const child = this.inodes.get(e.ino);
      if (!push(e.name, e.ino, child ? child.mode : 0, e.cookie)) break;
    }
    return out;
  }

  releasedir(): void {}

  fsyncdir(): void {}

  statfs(): StatFs {
    const files = this.inodes.size;
    return {
      bsize: 4096, frsize: 4096, blocks: 1 << 28, bfree: 1 << 27, bavail: 1 << 27,
      files: files + 1_000_000, ffree: 1_000_000, favail: 1_000_000, namemax: 255,
    };
  }

  setxattr(ino: number, name: Buffer, value: Buffer, flags: number): void {
    const n = this.node(ino);
    const xs = (n.xattrs ??= new Map());
    const k = key(name);
    if (flags & XATTR_CREATE && xs.has(k)) fail(E.EEXIST);
    if (flags & XATTR_REPLACE && !xs.has(k)) fail(E.ENODATA);
    xs.set(k, Buffer.from(value));
    this.touch(n, false);
  }

  getxattr(ino: number, name: Buffer): Buffer {
    return this.node(ino).xattrs?.get(key(name)) ?? fail(E.ENODATA);
  }

  listxattr(ino: number): Buffer {
    const xs = this.node(ino).xattrs;
    if (!xs) return Buffer.alloc(0);
    return Buffer.concat([...xs.keys()].map((k) => Buffer.from(`${k}\0`, 'latin1')));
  }

  removexattr(ino: number, name: Buffer): void {
    const n = this.node(ino);
    if (!n.xattrs?.delete(key(name))) fail(E.ENODATA);
    this.touch(n, false);
  }

  access(ino: number): void {
    this.node(ino);
  }

  create(parent: number, name: Buffer, mode: number, _flags: number, ctx: RequestContext): Entry & OpenReply {
    const n = this.create0(parent, name, S_IFREG | (mode & 0o7777), ctx);
    n.chunks = [];
    n.opens++;
    return { ...this.entry(n), fh: this.nextFh++, keepCache: true };
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const mountpoint = args.find((a) => !a.startsWith('--'));
  if (!mountpoint) {
    process.stderr.write('usage: node dist/bench/memfs.js MOUNTPOINT [--allow-other] [--no-writeback] [--debug]\n');
    process.exit(2);
  }
  const log = {
    error: (msg: string, err?: unknown): void => {
      process.stderr.write(`memfs: ${msg}${err instanceof Error && !msg.includes(err.message) ? `: ${err.stack}` : ''}\n`);
    },
  };
  const fs = new MemFs();
  const session = FuseSession.mount(
    mountpoint,
    fs,
    {
      fsname: 'memfs',
      subtype: 'memfs',
      allowOther: args.includes('--allow-other'),
      defaultPermissions: true,
      writebackCache: !args.includes('--no-writeback'),
      debug: args.includes('--debug'),
    },
    log,
  );
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    session.unmount().then(
      () => process.exit(0),
      (err: unknown) => {
        // Busy: detach instead, so that a benchmark harness never leaves a mount behind.
        log.error(`unmount failed (${String(err)}); detaching`);
        session.unmount({ lazy: true }).then(() => process.exit(0), () => process.exit(1));
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  void session.ended.then(() => {
    if (!stopping) process.exit(0); // unmounted from outside
  });
  process.stdout.write('ready\n');
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`memfs: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
