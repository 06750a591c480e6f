/**
 * FuseSession: mounts a LowLevelOps filesystem through our own libfuse 3 binding
 * (build/Release/pogfs_fuse.node, source in src/fuse/native/pogfs_fuse.c).
 *
 * Contract for the filesystem (see also types.ts):
 * - Inode 1 is the root (FUSE_ROOT_ID).
 * - Every successful lookup/mknod/mkdir/symlink/link/create adds one to the kernel's
 *   lookup count of the returned inode. Count it BEFORE returning (or resolving): the
 *   matching forget(ino, n) may arrive as soon as the reply is sent, and the two
 *   always arrive in that order, never the other way round.
 * - Requests are dispatched on the JS thread and may complete asynchronously and out of
 *   order. Never make a synchronous fs call on the mount from the thread that serves it
 *   (fs.statSync(mnt) in the same thread deadlocks): use fs.promises, a worker, or a
 *   child process. Same for child_process.spawn/exec with `cwd` inside the mount: Node
 *   blocks until the child has chdir'ed and exec'ed, and the chdir needs this thread.
 * - open() never has to handle O_TRUNC (the kernel sends setattr size=0 instead), and
 *   write() never has to clear suid/sgid (the kernel sends an explicit setattr).
 * - setattr: with SetAttrValid.ATIME_NOW / MTIME_NOW set, the times are not given: use
 *   the current time. The kernel sets ATIME (resp. MTIME) along with the _NOW bit.
 * - A handler answers with an errno by throwing/rejecting with `{ errno: N }` (N > 0).
 *   Anything else answers EIO and is logged through FuseLog.error.
 * - getxattr("security.*") is answered ENODATA in C without calling getxattr while
 *   setSecurityXattrsPresent(false) (the default). Call setSecurityXattrsPresent(true)
 *   at mount when the FS already stores any security.* attribute. A setxattr of a
 *   security.* name turns the flag on by itself.
 * - flush of a handle whose open (or create) reply said `noFlush` is answered in C:
 *   flush() is never called for it.
 * - readdirplus is optional (without it the kernel is not offered it). Every entry it
 *   returns with `entry` is counted like a lookup reply; the session gives forget() back
 *   the ones that did not fit in the kernel's buffer.
 * - forget() is called once per inode, but a burst of the kernel's forgets reaches JS in
 *   one call.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { escapeMountOption, findMount, fuseUnmountAsync, readMountTable } from './mount-table';
import type {
  Attr,
  CopyRange,
  DirEntry,
  DirEntryPlus,
  Entry,
  LowLevelOps,
  MaybePromise,
  MountOptions,
  OpenReply,
  RequestContext,
  SetAttr,
  StatFs,
  Unlinked,
} from './types';

export interface FuseLog {
  error(msg: string, err?: unknown): void;
  debug?(msg: string): void;
}

/**
 * Told about every answered request: the one place ops are timed (metrics). Called on
 * the JS thread right after the reply; it must be cheap and must not throw.
 */
export interface FuseOpObserver {
  /**
   * `op` by name (`read`, `lookup` ...); `seconds` from dispatch to reply; `errno` 0 on
   * success; `bytes` read or written (0 for other ops and for errors).
   */
  opDone(op: string, seconds: number, errno: number, bytes: number): void;
}

/** Handler indices; must match the OP_* enum in pogfs_fuse.c. */
const enum Op {
  INIT = 0, LOOKUP, FORGET, GETATTR, SETATTR, READLINK, MKNOD, MKDIR, UNLINK, RMDIR,
  SYMLINK, RENAME, LINK, OPEN, READ, WRITE, FLUSH, RELEASE, FSYNC, OPENDIR, READDIR,
  RELEASEDIR, FSYNCDIR, STATFS, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, ACCESS,
  CREATE, FALLOCATE, LSEEK, COPY_FILE_RANGE, READDIRPLUS, END, ERROR, COUNT,
}

const OP_NAMES = [
  'init', 'lookup', 'forget', 'getattr', 'setattr', 'readlink', 'mknod', 'mkdir', 'unlink',
  'rmdir', 'symlink', 'rename', 'link', 'open', 'read', 'write', 'flush', 'release', 'fsync',
  'opendir', 'readdir', 'releasedir', 'fsyncdir', 'statfs', 'setxattr', 'getxattr',
  'listxattr', 'removexattr', 'access', 'create', 'fallocate', 'lseek', 'copy_file_range',
  'readdirplus',
];

/** Scratch (Float64Array) slots; must match S_* in pogfs_fuse.c. */
const enum S {
  INO = 0, MODE, NLINK, UID, GID, RDEV, SIZE, BLOCKS, ATIME, ATIME_NS, MTIME, MTIME_NS,
  CTIME, CTIME_NS, ENTRY_TIMEOUT, ATTR_TIMEOUT, FH, OPEN_FLAGS,
}
/** Slots per entry in a readdirplus reply's attribute array (S.INO .. S.ATTR_TIMEOUT); DIRPLUS_STRIDE in pogfs_fuse.c. */
const DIRPLUS_STRIDE = S.ATTR_TIMEOUT + 1;
const OPEN_KEEP_CACHE = 1;
const OPEN_DIRECT_IO = 2;
const OPEN_NO_FLUSH = 4;
const OPEN_CACHE_DIR = 8;

declare const nativeHandleBrand: unique symbol;
type NativeHandle = { readonly [nativeHandleBrand]: true };
type Handler = (...args: never[]) => void;

interface NativeBinding {
  mount(
    mountpoint: string,
    argv: string[],
    maxWrite: number,
    writeback: boolean,
    negativeTimeout: number,
    handlers: Handler[],
  ): [NativeHandle, Float64Array];
  /** Resolves with an errno, 0 on success. Runs umount2 off the JS thread. */
  umount(mountpoint: string, lazy: boolean): Promise<number>;
  setSecurityXattrsPresent(h: NativeHandle, present: boolean): void;
  versions(): FuseVersions;
  /** One datagram to a Unix socket (`@NAME`: abstract); 0 or an errno. Non-blocking. */
  sdNotify(socketPath: string, message: string): number;
  /** Synchronous lazy unmount, for process exit only. */
  detach(h: NativeHandle): void;
  // Each reply returns false when the request was already answered or the session ended.
  replyErr(h: NativeHandle, id: number, errno: number): boolean;
  replyUnlinked(h: NativeHandle, id: number): boolean;
  replyEntry(h: NativeHandle, id: number): boolean;
  replyAttr(h: NativeHandle, id: number): boolean;
  replyOpen(h: NativeHandle, id: number): boolean;
  /** Bytes a write stored or a copy_file_range copied. */
  replyWrite(h: NativeHandle, id: number, count: number): boolean;
  replyLseek(h: NativeHandle, id: number, offset: number): boolean;
  replyBuf(h: NativeHandle, id: number, data: Uint8Array): boolean;
  replyStatfs(h: NativeHandle, id: number): boolean;
  /**
   * Packs whole entries while they fit; returns how many it packed (false: already
   * answered). A readdirplus reply gives `attrs`: DIRPLUS_STRIDE slots per entry, S.INO 0
   * for an entry without attributes.
   */
  replyDir(h: NativeHandle, id: number, entries: readonly DirEntry[], attrs?: Float64Array): number | false;
  /** Resolve with an errno (0 done, ENOENT nothing cached, ENOTCONN session gone); run off the JS thread. */
  notifyInvalEntry(h: NativeHandle, parent: number, name: Buffer): Promise<number>;
  notifyInvalInode(h: NativeHandle, ino: number, off: number, len: number): Promise<number>;
}

let nativeBinding: NativeBinding | undefined;

/** Loads the addon from <package root>/build/Release, from src/ (ts-node) or dist/src/. */
function loadNative(): NativeBinding {
  if (nativeBinding) return nativeBinding;
  let dir = __dirname;
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) break;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`pogfs: no package.json above ${__dirname}; cannot locate the FUSE addon`);
    dir = up;
  }
  const file = path.join(dir, 'build', 'Release', 'pogfs_fuse.node');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    nativeBinding = require(file) as NativeBinding;
  } catch (err) {
    throw new Error(`pogfs: cannot load the FUSE addon ${file} (run \`npx node-gyp rebuild\`): ${String(err)}`);
  }
  return nativeBinding;
}

/** libfuse as loaded at run time, and the FUSE API level the binding was built against. */
export interface FuseVersions {
  /** fuse_pkgversion(), e.g. "3.14.0". */
  libfuse: string;
  /** FUSE_USE_VERSION as major.minor, e.g. "3.12". */
  api: string;
}

/** Loads the addon (throws what loading it threw) and asks it for libfuse's version. */
export function fuseVersions(): FuseVersions {
  const native = loadNative();
  return native.versions();
}

/** The addon's datagram sender, for the service manager's notifications (src/cli/service-notify.ts). */
export function sendDatagram(socketPath: string, message: string): number {
  return loadNative().sdNotify(socketPath, message);
}

const EIO = os.constants.errno.EIO;
const ERRNO_NAMES = new Map<number, string>(
  Object.entries(os.constants.errno).map(([name, num]) => [num, name] as [number, string]),
);

const LIBFUSE_ERRORS: [string, number][] = [
  ['Permission denied', os.constants.errno.EACCES],
  ['Operation not permitted', os.constants.errno.EPERM],
  ['No such device', os.constants.errno.ENODEV],
  ['device not found', os.constants.errno.ENODEV],
  ['Device or resource busy', os.constants.errno.EBUSY],
  ['No such file or directory', os.constants.errno.ENOENT],
  ['Not a directory', os.constants.errno.ENOTDIR],
];

function errnoOf(e: unknown): number | undefined {
  if (typeof e !== 'object' || e === null) return undefined;
  const n = (e as { errno?: unknown }).errno;
  return typeof n === 'number' && Number.isInteger(n) && n > 0 && n < 4096 ? n : undefined;
}

function isThenable<T>(v: MaybePromise<T>): v is Promise<T> {
  return (
    v instanceof Promise ||
    (typeof v === 'object' && v !== null && typeof (v as { then?: unknown }).then === 'function')
  );
}

function codedError(message: string, errno: number): Error & { errno: number; code: string } {
  const code = ERRNO_NAMES.get(errno) ?? `E${errno}`;
  return Object.assign(new Error(message), { errno, code });
}

/** Bytes of one readdir entry in the kernel buffer; lets readdir stop early for `size`. */
export function direntSize(nameLength: number): number {
  return (24 + nameLength + 7) & ~7;
}

/** Bytes of one readdirplus entry in the kernel buffer (a fuse_entry_out before the dirent). */
export function direntPlusSize(nameLength: number): number {
  return (152 + nameLength + 7) & ~7;
}

/**
 * Resolves the mount point without ever stat'ing an existing mount point: if it is a
 * FUSE mount served by this very thread, a synchronous stat would never return.
 */
function resolveMountpoint(mountpoint: string): string {
  const abs = path.resolve(mountpoint);
  const fail = (what: string, e: unknown): never => {
    const errno = typeof (e as { errno?: unknown }).errno === 'number' ? Math.abs((e as { errno: number }).errno) : EIO;
    throw codedError(`pogfs: cannot mount on ${abs}: ${what}`, errno);
  };
  let candidate: string;
  try {
    candidate = abs === '/' ? abs : path.join(fs.realpathSync(path.dirname(abs)), path.basename(abs));
  } catch (e) {
    return fail(`parent directory: ${(e as Error).message}`, e);
  }
  const mounts = readMountTable();
  const busy = (p: string): never => {
    throw codedError(`pogfs: cannot mount on ${p}: it is already a mount point`, os.constants.errno.EBUSY);
  };
  if (findMount(candidate, mounts)) busy(candidate);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(candidate);
    if (st.isSymbolicLink()) {
      candidate = fs.realpathSync(candidate);
      if (findMount(candidate, mounts)) busy(candidate);
      st = fs.statSync(candidate);
    }
  } catch (e) {
    return fail((e as Error).message, e);
  }
  if (!st.isDirectory()) {
    throw codedError(`pogfs: cannot mount on ${candidate}: not a directory`, os.constants.errno.ENOTDIR);
  }
  return candidate;
}

/**
 * Sessions still mounted. If the process exits anyway (process.exit, uncaught
 * exception), detach their mounts so none is left behind as "Transport endpoint is not
 * connected". One listener for all sessions.
 */
const liveSessions = new Set<FuseSession>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const s of liveSessions) s.detachOnExit();
  });
}

export class FuseSession {
  readonly mountpoint: string;
  /** Resolves when the session loop has ended for any reason and the session is destroyed. */
  readonly ended: Promise<void>;

  private readonly native: NativeBinding;
  private readonly ops: LowLevelOps;
  private readonly log: FuseLog;
  private readonly attrTimeout: number;
  private handle!: NativeHandle;
  private scratch!: Float64Array;
  private isEnded = false;
  private unmounting: Promise<void> | undefined;
  private resolveEnded!: () => void;
  private readonly observer: FuseOpObserver | undefined;
  /** performance.now() when the request being dispatched arrived (set only with an observer). */
  private opStart = 0;
  /** Reused for the attributes of readdirplus replies (grown when a listing needs more). */
  private dirPlusAttrs = new Float64Array(64 * DIRPLUS_STRIDE);

  /**
   * Mounts synchronously. Throws an Error with `errno`/`code` for the common failures
   * (ENOENT: missing mount point, ENOTDIR, EBUSY: already a mount point, ENODEV: no
   * /dev/fuse) and with libfuse's own message for the rest.
   */
  static mount(mountpoint: string, ops: LowLevelOps, options: MountOptions, log: FuseLog, observer?: FuseOpObserver): FuseSession {
    const mp = resolveMountpoint(mountpoint);
    // Existence only: without root, the setuid fusermount3 opens the device for us.
    let dev: fs.Stats | undefined;
    try {
      dev = fs.statSync('/dev/fuse');
    } catch {
      dev = undefined;
    }
    if (!dev?.isCharacterDevice()) {
      throw codedError('pogfs: /dev/fuse is missing; is the fuse kernel module loaded?', os.constants.errno.ENODEV);
    }
    const opts = [`fsname=${escapeMountOption(options.fsname)}`, `subtype=${escapeMountOption(options.subtype)}`];
    if (options.allowOther) opts.push('allow_other');
    if (options.defaultPermissions) opts.push('default_permissions');
    if (options.readOnly) opts.push('ro');
    const argv = ['pogfs', '-o', opts.join(',')];
    if (options.debug) argv.push('-d');
    return new FuseSession(mp, argv, ops, options, log, observer);
  }

  private constructor(mp: string, argv: string[], ops: LowLevelOps, options: MountOptions, log: FuseLog, observer: FuseOpObserver | undefined) {
    this.mountpoint = mp;
    this.ops = ops;
    this.log = log;
    this.observer = observer;
    this.native = loadNative();
    this.attrTimeout = options.attrTimeout ?? 1;
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
    // Requests can only be dispatched once this constructor has returned (they run on
    // this thread), so handle/scratch are set before any handler uses them.
    try {
      [this.handle, this.scratch] = this.native.mount(
        mp,
        argv,
        options.maxWrite ?? 1024 * 1024,
        options.writebackCache,
        options.negativeTimeout ?? 0,
        this.buildHandlers(),
      );
    } catch (e) {
      // libfuse reports through text only; recover the errno when it names a common one.
      const msg = e instanceof Error ? e.message : String(e);
      const errno = LIBFUSE_ERRORS.find(([text]) => msg.includes(text))?.[1];
      throw errno === undefined ? e : codedError(`pogfs: cannot mount on ${mp}: ${msg}`, errno);
    }
    liveSessions.add(this);
    installExitHook();
    this.tuneReadahead();
    log.debug?.(`pogfs: mounted ${mp} (${argv.slice(1).join(' ')})`);
  }

  /** Unmounts and resolves once the loop has ended and the session is destroyed. */
  unmount(options?: { lazy?: boolean }): Promise<void> {
    if (this.isEnded) return Promise.resolve();
    this.unmounting ??= this.doUnmount(options?.lazy ?? false).finally(() => (this.unmounting = undefined));
    return this.unmounting;
  }

  /**
   * Makes the kernel forget the name `name` in directory `parent` (a cached lookup, positive
   * or negative). Resolves with 0, or the errno: ENOENT when nothing was cached is normal.
   * Runs on a worker thread, so it is safe while requests are pending.
   */
  notifyInvalEntry(parent: number, name: Buffer): Promise<number> {
    if (this.isEnded) return Promise.resolve(os.constants.errno.ENOTCONN);
    return this.native.notifyInvalEntry(this.handle, parent, name);
  }

  /** Makes the kernel drop an inode's cached attributes and pages (`len` 0: all of them from `off`). */
  notifyInvalInode(ino: number, off = 0, len = 0): Promise<number> {
    if (this.isEnded) return Promise.resolve(os.constants.errno.ENOTCONN);
    return this.native.notifyInvalInode(this.handle, ino, off, len);
  }

  setSecurityXattrsPresent(present: boolean): void {
    if (!this.isEnded) this.native.setSecurityXattrsPresent(this.handle, present);
  }

  /** @internal Called from the process 'exit' hook only. */
  detachOnExit(): void {
    if (!this.isEnded) this.native.detach(this.handle);
  }

  private async doUnmount(lazy: boolean): Promise<void> {
    let err: Error | undefined;
    if (process.geteuid?.() === 0) {
      const errno = await this.native.umount(this.mountpoint, lazy);
      if (errno !== 0) err = codedError(`pogfs: umount ${this.mountpoint} failed`, errno);
    } else {
      const failed = await fuseUnmountAsync(this.mountpoint, lazy);
      if (failed !== undefined) err = Object.assign(new Error(`pogfs: fusermount3 -u failed: ${failed}`), { code: 'EFUSERMOUNT' });
    }
    if (err && !this.isEnded) {
      // Already unmounted by someone else: the loop is about to end on its own.
      if (findMount(this.mountpoint)) throw err;
      const timer = new Promise<'timeout'>((r) => setTimeout(r, 2000, 'timeout').unref());
      if ((await Promise.race([this.ended, timer])) === 'timeout') throw err;
    }
    await this.ended;
  }

  /**
   * The kernel caps readahead at the bdi's read_ahead_kb (128 KiB by default), whatever
   * max_readahead says in INIT. Raise it to match (root only, best effort).
   */
  private tuneReadahead(): void {
    if (process.geteuid?.() !== 0) return;
    try {
      const dev = findMount(this.mountpoint)?.device;
      if (dev) fs.writeFileSync(`/sys/class/bdi/${dev}/read_ahead_kb`, '1024');
    } catch (e) {
      this.log.debug?.(`pogfs: could not raise read_ahead_kb: ${String(e)}`);
    }
  }

  // ------------------------------------------------------------------ dispatch

  private onEnd(rc: number): void {
    this.isEnded = true;
    liveSessions.delete(this);
    if (rc !== 0) this.log.error(`pogfs: FUSE session loop for ${this.mountpoint} ended with error ${-rc}`);
    try {
      this.ops.destroy?.();
    } catch (e) {
      this.log.error('pogfs: destroy() threw', e);
    }
    this.log.debug?.(`pogfs: session for ${this.mountpoint} ended`);
    this.resolveEnded();
  }

  private fail(id: number, op: Op, e: unknown, t0 = this.opStart): void {
    let errno = errnoOf(e);
    if (errno === undefined) {
      errno = EIO;
      const detail = e instanceof Error ? (e.stack ?? e.message) : String(e);
      this.log.error(`pogfs: ${OP_NAMES[op]} failed with an unexpected error (replying EIO): ${detail}`, e);
    }
    try {
      this.native.replyErr(this.handle, id, errno);
    } catch (err) {
      this.log.error(`pogfs: replying to ${OP_NAMES[op]} failed`, err);
    }
    this.observer?.opDone(OP_NAMES[op], (performance.now() - t0) / 1000, errno, 0);
  }

  /** Replies now for plain values, later for promises. No Promise is created on the sync path. */
  private settle<T>(id: number, op: Op, r: MaybePromise<T>, reply: (id: number, v: T) => void): void {
    if (isThenable(r)) {
      const t0 = this.opStart;
      r.then(
        (v) => this.complete(id, op, v, reply, t0),
        (e: unknown) => this.fail(id, op, e, t0),
      );
    } else {
      this.complete(id, op, r, reply);
    }
  }

  private complete<T>(id: number, op: Op, v: T, reply: (id: number, v: T) => void, t0 = this.opStart): void {
    try {
      reply(id, v);
    } catch (e) {
      // A malformed reply value: the binding has already answered EIO if it got that far.
      this.fail(id, op, e, t0);
      return;
    }
    if (this.observer) {
      const bytes = op === Op.READ ? (v as Buffer).length : op === Op.WRITE ? (v as number) : 0;
      this.observer.opDone(OP_NAMES[op], (performance.now() - t0) / 1000, 0, bytes);
    }
  }

  /** Drops references the kernel no longer holds; never throws (there is no reply to fail). */
  private forget(ino: number, nlookup: number): void {
    try {
      this.ops.forget(ino, nlookup);
    } catch (e) {
      this.log.error('pogfs: forget() threw', e);
    }
  }

  private putAttr(a: Attr): void {
    const s = this.scratch;
    s[S.INO] = a.ino;
    s[S.MODE] = a.mode;
    s[S.NLINK] = a.nlink;
    s[S.UID] = a.uid;
    s[S.GID] = a.gid;
    s[S.RDEV] = a.rdev;
    s[S.SIZE] = a.size;
    s[S.BLOCKS] = a.blocks;
    s[S.ATIME] = a.atimeSec;
    s[S.ATIME_NS] = a.atimeNsec;
    s[S.MTIME] = a.mtimeSec;
    s[S.MTIME_NS] = a.mtimeNsec;
    s[S.CTIME] = a.ctimeSec;
    s[S.CTIME_NS] = a.ctimeNsec;
  }

  private putOpen(o: OpenReply): void {
    this.scratch[S.FH] = o.fh;
    this.scratch[S.OPEN_FLAGS] = (o.keepCache ? OPEN_KEEP_CACHE : 0) | (o.directIo ? OPEN_DIRECT_IO : 0) | (o.noFlush ? OPEN_NO_FLUSH : 0) | (o.cacheDir ? OPEN_CACHE_DIR : 0);
  }

  private readonly rEntry = (id: number, e: Entry): void => {
    this.putAttr(e.attr);
    this.scratch[S.ENTRY_TIMEOUT] = e.entryTimeout;
    this.scratch[S.ATTR_TIMEOUT] = e.attrTimeout;
    this.native.replyEntry(this.handle, id);
  };
  private readonly rCreate = (id: number, e: Entry & OpenReply): void => {
    this.putAttr(e.attr);
    this.scratch[S.ENTRY_TIMEOUT] = e.entryTimeout;
    this.scratch[S.ATTR_TIMEOUT] = e.attrTimeout;
    this.putOpen(e);
    this.native.replyEntry(this.handle, id);
  };
  private readonly rAttr = (id: number, a: Attr): void => {
    this.putAttr(a);
    this.scratch[S.ATTR_TIMEOUT] = this.attrTimeout;
    this.native.replyAttr(this.handle, id);
  };
  private readonly rOpen = (id: number, o: OpenReply): void => {
    this.putOpen(o);
    this.native.replyOpen(this.handle, id);
  };
  private readonly rVoid = (id: number): void => {
    this.native.replyErr(this.handle, id, 0);
  };
  private readonly rUnlinked = (id: number, u: Unlinked | void): void => {
    if (!u) {
      this.native.replyErr(this.handle, id, 0);
      return;
    }
    this.putAttr(u.gone);
    this.scratch[S.ATTR_TIMEOUT] = this.attrTimeout;
    this.native.replyUnlinked(this.handle, id);
  };
  private readonly rBuf = (id: number, b: Buffer): void => {
    this.native.replyBuf(this.handle, id, b);
  };
  private readonly rWrite = (id: number, n: number): void => {
    this.native.replyWrite(this.handle, id, n);
  };
  private readonly rLseek = (id: number, offset: number): void => {
    this.native.replyLseek(this.handle, id, offset);
  };
  private readonly rDir = (id: number, list: DirEntry[]): void => {
    this.native.replyDir(this.handle, id, list);
  };
  private readonly rDirPlus = (id: number, list: DirEntryPlus[]): void => {
    if (this.dirPlusAttrs.length < list.length * DIRPLUS_STRIDE) this.dirPlusAttrs = new Float64Array(list.length * 2 * DIRPLUS_STRIDE);
    const d = this.dirPlusAttrs;
    for (let i = 0, o = 0; i < list.length; i++, o += DIRPLUS_STRIDE) {
      const e = list[i].entry;
      if (!e) {
        d[o + S.INO] = 0;
        continue;
      }
      const a = e.attr;
      d[o + S.INO] = a.ino;
      d[o + S.MODE] = a.mode;
      d[o + S.NLINK] = a.nlink;
      d[o + S.UID] = a.uid;
      d[o + S.GID] = a.gid;
      d[o + S.RDEV] = a.rdev;
      d[o + S.SIZE] = a.size;
      d[o + S.BLOCKS] = a.blocks;
      d[o + S.ATIME] = a.atimeSec;
      d[o + S.ATIME_NS] = a.atimeNsec;
      d[o + S.MTIME] = a.mtimeSec;
      d[o + S.MTIME_NS] = a.mtimeNsec;
      d[o + S.CTIME] = a.ctimeSec;
      d[o + S.CTIME_NS] = a.ctimeNsec;
      d[o + S.ENTRY_TIMEOUT] = e.entryTimeout;
      d[o + S.ATTR_TIMEOUT] = e.attrTimeout;
    }
    let packed = 0;
    try {
      packed = this.native.replyDir(this.handle, id, list, d) || 0;
    } finally {
      // Counted references the kernel never got (they did not fit, or the request was
      // already answered) are the filesystem's to drop again.
      for (let i = packed; i < list.length; i++) {
        const e = list[i].entry;
        if (e) this.forget(e.attr.ino, 1);
      }
    }
  };
  private readonly rStatfs = (id: number, st: StatFs): void => {
    const s = this.scratch;
    s[0] = st.bsize;
    s[1] = st.frsize;
    s[2] = st.blocks;
    s[3] = st.bfree;
    s[4] = st.bavail;
    s[5] = st.files;
    s[6] = st.ffree;
    s[7] = st.favail;
    s[8] = st.namemax;
    this.native.replyStatfs(this.handle, id);
  };

  private buildHandlers(): Handler[] {
    const ops = this.ops;
    const h: Handler[] = new Array<Handler>(Op.COUNT);
    const ctx = (uid: number, gid: number, pid: number, umask: number): RequestContext => ({ uid, gid, pid, umask });

    h[Op.INIT] = (): void => {
      try {
        ops.init?.();
      } catch (e) {
        this.log.error('pogfs: init() threw', e);
      }
    };
    // Forgets come in batches: (ino, nlookup) pairs, one call for all the kernel sent at once.
    h[Op.FORGET] = (pairs: Float64Array): void => {
      for (let i = 0; i + 1 < pairs.length; i += 2) this.forget(pairs[i], pairs[i + 1]);
    };
    h[Op.END] = (rc: number): void => this.onEnd(rc);
    h[Op.ERROR] = (e: unknown): void => this.log.error('pogfs: uncaught error while dispatching a FUSE request', e);

    h[Op.LOOKUP] = (id: number, parent: number, name: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.LOOKUP, ops.lookup(parent, name, ctx(u, g, p, m)), this.rEntry); }
      catch (e) { this.fail(id, Op.LOOKUP, e); }
    };
    h[Op.GETATTR] = (id: number, ino: number, fh: number | undefined, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.GETATTR, ops.getattr(ino, fh, ctx(u, g, p, m)), this.rAttr); }
      catch (e) { this.fail(id, Op.GETATTR, e); }
    };
    h[Op.SETATTR] = (
      id: number, ino: number, fh: number | undefined, valid: number, mode: number, uid: number, gid: number,
      size: number, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number,
      ctimeSec: number, ctimeNsec: number, u: number, g: number, p: number, m: number,
    ): void => {
      const changes: SetAttr = { valid, mode, uid, gid, size, atimeSec, atimeNsec, mtimeSec, mtimeNsec, ctimeSec, ctimeNsec };
      try { this.settle(id, Op.SETATTR, ops.setattr(ino, changes, fh, ctx(u, g, p, m)), this.rAttr); }
      catch (e) { this.fail(id, Op.SETATTR, e); }
    };
    h[Op.READLINK] = (id: number, ino: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.READLINK, ops.readlink(ino, ctx(u, g, p, m)), this.rBuf); }
      catch (e) { this.fail(id, Op.READLINK, e); }
    };
    h[Op.MKNOD] = (id: number, parent: number, name: Buffer, mode: number, rdev: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.MKNOD, ops.mknod(parent, name, mode, rdev, ctx(u, g, p, m)), this.rEntry); }
      catch (e) { this.fail(id, Op.MKNOD, e); }
    };
    h[Op.MKDIR] = (id: number, parent: number, name: Buffer, mode: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.MKDIR, ops.mkdir(parent, name, mode, ctx(u, g, p, m)), this.rEntry); }
      catch (e) { this.fail(id, Op.MKDIR, e); }
    };
    h[Op.UNLINK] = (id: number, parent: number, name: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.UNLINK, ops.unlink(parent, name, ctx(u, g, p, m)), this.rUnlinked); }
      catch (e) { this.fail(id, Op.UNLINK, e); }
    };
    h[Op.RMDIR] = (id: number, parent: number, name: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.RMDIR, ops.rmdir(parent, name, ctx(u, g, p, m)), this.rVoid); }
      catch (e) { this.fail(id, Op.RMDIR, e); }
    };
    h[Op.SYMLINK] = (id: number, target: Buffer, parent: number, name: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.SYMLINK, ops.symlink(target, parent, name, ctx(u, g, p, m)), this.rEntry); }
      catch (e) { this.fail(id, Op.SYMLINK, e); }
    };
    h[Op.RENAME] = (
      id: number, parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number,
      u: number, g: number, p: number, m: number,
    ): void => {
      try { this.settle(id, Op.RENAME, ops.rename(parent, name, newParent, newName, flags, ctx(u, g, p, m)), this.rVoid); }
      catch (e) { this.fail(id, Op.RENAME, e); }
    };
    h[Op.LINK] = (id: number, ino: number, newParent: number, newName: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.LINK, ops.link(ino, newParent, newName, ctx(u, g, p, m)), this.rEntry); }
      catch (e) { this.fail(id, Op.LINK, e); }
    };
    h[Op.OPEN] = (id: number, ino: number, flags: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.OPEN, ops.open(ino, flags, ctx(u, g, p, m)), this.rOpen); }
      catch (e) { this.fail(id, Op.OPEN, e); }
    };
    h[Op.READ] = (id: number, ino: number, fh: number, size: number, offset: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.READ, ops.read(ino, fh, size, offset, ctx(u, g, p, m)), this.rBuf); }
      catch (e) { this.fail(id, Op.READ, e); }
    };
    h[Op.WRITE] = (id: number, ino: number, fh: number, data: Buffer, offset: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.WRITE, ops.write(ino, fh, data, offset, ctx(u, g, p, m)), this.rWrite); }
      catch (e) { this.fail(id, Op.WRITE, e); }
    };
    h[Op.FLUSH] = (id: number, ino: number, fh: number): void => {
      try { this.settle(id, Op.FLUSH, ops.flush(ino, fh), this.rVoid); }
      catch (e) { this.fail(id, Op.FLUSH, e); }
    };
    h[Op.RELEASE] = (id: number, ino: number, fh: number, flags: number): void => {
      try { this.settle(id, Op.RELEASE, ops.release(ino, fh, flags), this.rVoid); }
      catch (e) { this.fail(id, Op.RELEASE, e); }
    };
    h[Op.FSYNC] = (id: number, ino: number, fh: number, datasync: boolean): void => {
      try { this.settle(id, Op.FSYNC, ops.fsync(ino, fh, datasync), this.rVoid); }
      catch (e) { this.fail(id, Op.FSYNC, e); }
    };
    h[Op.OPENDIR] = (id: number, ino: number, flags: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.OPENDIR, ops.opendir(ino, flags, ctx(u, g, p, m)), this.rOpen); }
      catch (e) { this.fail(id, Op.OPENDIR, e); }
    };
    h[Op.READDIR] = (id: number, ino: number, fh: number, offset: number, size: number): void => {
      try { this.settle(id, Op.READDIR, ops.readdir(ino, fh, offset, size), this.rDir); }
      catch (e) { this.fail(id, Op.READDIR, e); }
    };
    if (ops.readdirplus) {
      const readdirplus = ops.readdirplus.bind(ops);
      h[Op.READDIRPLUS] = (id: number, ino: number, fh: number, offset: number, size: number, u: number, g: number, p: number, m: number): void => {
        try { this.settle(id, Op.READDIRPLUS, readdirplus(ino, fh, offset, size, ctx(u, g, p, m)), this.rDirPlus); }
        catch (e) { this.fail(id, Op.READDIRPLUS, e); }
      };
    }
    h[Op.RELEASEDIR] = (id: number, ino: number, fh: number): void => {
      try { this.settle(id, Op.RELEASEDIR, ops.releasedir(ino, fh), this.rVoid); }
      catch (e) { this.fail(id, Op.RELEASEDIR, e); }
    };
    h[Op.FSYNCDIR] = (id: number, ino: number, fh: number, datasync: boolean): void => {
      try { this.settle(id, Op.FSYNCDIR, ops.fsyncdir(ino, fh, datasync), this.rVoid); }
      catch (e) { this.fail(id, Op.FSYNCDIR, e); }
    };
    h[Op.STATFS] = (id: number, ino: number): void => {
      try { this.settle(id, Op.STATFS, ops.statfs(ino), this.rStatfs); }
      catch (e) { this.fail(id, Op.STATFS, e); }
    };
    h[Op.SETXATTR] = (id: number, ino: number, name: Buffer, value: Buffer, flags: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.SETXATTR, ops.setxattr(ino, name, value, flags, ctx(u, g, p, m)), this.rVoid); }
      catch (e) { this.fail(id, Op.SETXATTR, e); }
    };
    h[Op.GETXATTR] = (id: number, ino: number, name: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.GETXATTR, ops.getxattr(ino, name, ctx(u, g, p, m)), this.rBuf); }
      catch (e) { this.fail(id, Op.GETXATTR, e); }
    };
    h[Op.LISTXATTR] = (id: number, ino: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.LISTXATTR, ops.listxattr(ino, ctx(u, g, p, m)), this.rBuf); }
      catch (e) { this.fail(id, Op.LISTXATTR, e); }
    };
    h[Op.REMOVEXATTR] = (id: number, ino: number, name: Buffer, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.REMOVEXATTR, ops.removexattr(ino, name, ctx(u, g, p, m)), this.rVoid); }
      catch (e) { this.fail(id, Op.REMOVEXATTR, e); }
    };
    h[Op.ACCESS] = (id: number, ino: number, mask: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.ACCESS, ops.access(ino, mask, ctx(u, g, p, m)), this.rVoid); }
      catch (e) { this.fail(id, Op.ACCESS, e); }
    };
    h[Op.CREATE] = (id: number, parent: number, name: Buffer, mode: number, flags: number, u: number, g: number, p: number, m: number): void => {
      try { this.settle(id, Op.CREATE, ops.create(parent, name, mode, flags, ctx(u, g, p, m)), this.rCreate); }
      catch (e) { this.fail(id, Op.CREATE, e); }
    };
    // Optional operations: a filesystem without them answers ENOSYS, and the kernel then
    // stops asking (fallocate fails with EOPNOTSUPP, lseek and copy_file_range fall back
    // to its generic code).
    const ENOSYS = os.constants.errno.ENOSYS;
    h[Op.FALLOCATE] = (id: number, ino: number, fh: number, mode: number, offset: number, length: number): void => {
      if (!ops.fallocate) return this.fail(id, Op.FALLOCATE, { errno: ENOSYS });
      try {
        this.settle(id, Op.FALLOCATE, ops.fallocate(ino, fh, mode, offset, length), this.rVoid);
      } catch (e) { this.fail(id, Op.FALLOCATE, e); }
    };
    h[Op.LSEEK] = (id: number, ino: number, fh: number, offset: number, whence: number): void => {
      if (!ops.lseek) return this.fail(id, Op.LSEEK, { errno: ENOSYS });
      try {
        this.settle(id, Op.LSEEK, ops.lseek(ino, fh, offset, whence), this.rLseek);
      } catch (e) { this.fail(id, Op.LSEEK, e); }
    };
    h[Op.COPY_FILE_RANGE] = (
      id: number, inoIn: number, fhIn: number, offIn: number, inoOut: number, fhOut: number, offOut: number,
      length: number, flags: number,
    ): void => {
      if (!ops.copyFileRange) return this.fail(id, Op.COPY_FILE_RANGE, { errno: ENOSYS });
      try {
        const range: CopyRange = { inoIn, fhIn, offIn, inoOut, fhOut, offOut, length, flags };
        this.settle(id, Op.COPY_FILE_RANGE, ops.copyFileRange(range), this.rWrite);
      } catch (e) { this.fail(id, Op.COPY_FILE_RANGE, e); }
    };
    if (this.observer) {
      // Every request handler notes when its request arrived; settle() carries it to the reply.
      for (let op = Op.LOOKUP; op <= Op.READDIRPLUS; op++) {
        if (op === Op.FORGET || !h[op]) continue;
        const handler = h[op] as (...args: unknown[]) => void;
        h[op] = ((...args: unknown[]): void => {
          this.opStart = performance.now();
          handler(...args);
        }) as Handler;
      }
    }
    return h;
  }
}
