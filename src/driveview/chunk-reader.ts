/**
 * Reads Drive files for the view: ranged `alt=media` downloads in chunks, read-ahead that
 * doubles while a reader stays sequential and is cancelled when it seeks, a bound on
 * downloads in flight, one download shared by every reader of a chunk, the content-keyed
 * chunk cache underneath, and an md5 check of every file read from start to end.
 *
 * A reader's first read fetches only the chunk it needs (a scanner reading a file's first
 * and last bytes costs two small ranged reads); read-ahead starts with the second
 * sequential read. Bytes downloaded are counted per file and per program (the caller's
 * pid, at open).
 */
import { createHash, type Hash } from 'node:crypto';
import type { DriveClient } from '../remote/drive-client';
import { RemoteError } from '../remote/remote';
import { contentKey, type DiskChunkCache } from './chunk-cache';

export interface ReaderSettings {
  /** Bytes per chunk: the unit of cache keys and of the first download of a reader. */
  chunkSize: number;
  /** Most bytes read ahead of a sequential reader. */
  maxReadaheadBytes: number;
  /** Most chunks in one ranged download. */
  maxSpanChunks: number;
  /** Downloads in flight at once (read-ahead waits beyond this; reads asked for do not). */
  maxDownloads: number;
  /** How long a file Drive refuses to serve (403 downloadQuotaExceeded...) answers EIO without asking again. */
  blockedRetryMs: number;
}

export const DEFAULT_READER_SETTINGS: ReaderSettings = {
  chunkSize: 1024 * 1024,
  maxReadaheadBytes: 64 * 1024 * 1024,
  maxSpanChunks: 8,
  maxDownloads: 6,
  blockedRetryMs: 10 * 60_000,
};

/** The file a handle reads: its Drive id, content identity and where it shows in the view. */
export interface ReadTarget {
  id: string;
  size: number;
  md5: string | undefined;
  /** A version tag for content with no md5 (keys memory-only chunks). */
  version: string;
  path: string;
}

export interface ReaderLog {
  warn(msg: string): void;
  error(msg: string, err?: unknown): void;
}

export interface DownloadStats {
  bytes: number;
  downloads: number;
  byProgram: Record<string, number>;
  byFile: Record<string, number>;
  md5Mismatches: number;
  refused: number;
}

interface Span {
  ctrl: AbortController;
  /** Readers waiting on one of its chunks: a span nobody waits for may be cancelled. */
  waiters: number;
  done: boolean;
  /** The span's bytes as they arrive (`filled` of them so far), so a read can be answered before its chunk is whole. */
  data: Buffer | undefined;
  filled: number;
  listeners: Set<() => void>;
}

interface InFlight {
  promise: Promise<Buffer>;
  span: Span;
  /** Where the chunk starts in its span's bytes. */
  from: number;
}

export interface ReadHandle {
  target: ReadTarget;
  program: string;
  /** Where a sequential reader reads next. */
  next: number;
  /** Chunks of read-ahead after the current read (0 until the reader proves sequential). */
  window: number;
  /** The last chunk the reader reached: read-ahead doubles each time a sequential reader enters a new one. */
  chunkAt: number;
  /** Chunks entered in sequence since the last seek (the kernel's own read-ahead enters one after any read). */
  seqChunks: number;
  readahead: Set<Span>;
  verify: { hash: Hash; upTo: number; pending: Map<number, Buffer>; pendingBytes: number } | undefined;
}

const MAX_PENDING_VERIFY = 64 * 1024 * 1024;
const MAX_TRACKED_FILES = 1000;

/** An error the FUSE side answers with this errno. */
export function errnoError(message: string, errno: number): Error & { errno: number } {
  return Object.assign(new Error(message), { errno });
}
const EIO = 5;

export class ChunkReader {
  private readonly inflight = new Map<string, InFlight>();
  private downloads = 0;
  private readonly blocked = new Map<string, number>();
  /**
   * Content (md5.size) whose bytes did not match its md5: every read of it fails with EIO
   * from then on (the kernel retries a failed read-ahead page by page, which must not
   * succeed either), until Drive gives the file another md5.
   */
  private readonly poisoned = new Set<string>();
  readonly stats: DownloadStats = { bytes: 0, downloads: 0, byProgram: {}, byFile: {}, md5Mismatches: 0, refused: 0 };

  constructor(
    private readonly client: DriveClient,
    private readonly cache: DiskChunkCache,
    private readonly settings: ReaderSettings,
    private readonly log: ReaderLog,
  ) {}

  open(target: ReadTarget, program: string): ReadHandle {
    return {
      target,
      program,
      next: 0,
      window: 0,
      chunkAt: 0,
      seqChunks: 0,
      readahead: new Set(),
      verify: target.md5 ? { hash: createHash('md5'), upTo: 0, pending: new Map(), pendingBytes: 0 } : undefined,
    };
  }

  release(h: ReadHandle): void {
    this.cancelReadahead(h);
  }

  /** Bytes per chunk: the unit of cache keys. */
  get chunkSize(): number {
    return this.settings.chunkSize;
  }

  async read(h: ReadHandle, offset: number, size: number): Promise<Buffer> {
    const t = h.target;
    if (offset >= t.size || size === 0) return Buffer.alloc(0);
    const until = this.blocked.get(t.id);
    if (until !== undefined) {
      if (Date.now() < until) throw errnoError(`Drive refuses to serve ${t.path}`, EIO);
      this.blocked.delete(t.id);
    }
    if (t.md5 && this.poisoned.has(`${t.md5}.${t.size}`)) throw errnoError(`${t.path} does not match its md5`, EIO);
    const end = Math.min(t.size, offset + size);
    const cs = this.settings.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((end - 1) / cs);
    // Sequential (within a chunk of where the last read ended): read-ahead doubles. A seek
    // resets it and cancels what was read ahead. The first read at 0 is neither.
    const sequential = h.next > 0 && Math.abs(offset - h.next) < cs;
    if (sequential) {
      // Read-ahead starts at the second chunk entered in sequence: one is what the kernel's
      // read-ahead asks after any read, a seeking player's included.
      if (last > h.chunkAt && ++h.seqChunks >= 2) h.window = Math.max(1, Math.min(h.window * 2, Math.ceil(this.settings.maxReadaheadBytes / cs)));
    } else if (offset !== 0 || h.next !== 0) {
      h.window = 0;
      h.seqChunks = 0;
      this.cancelReadahead(h);
    }
    h.next = end;
    h.chunkAt = last;

    const parts: Promise<Buffer>[] = [];
    // The last chunk is needed only up to the end of this read: a read answers as soon as its bytes are in.
    for (let i = first; i <= last; i++) parts.push(this.chunk(h, i, last, i === last ? end - i * cs : cs));
    if (h.window > 0) this.readAhead(h, last + 1, Math.min(this.chunkCount(t) - 1, last + h.window));
    let chunks: Buffer[];
    try {
      chunks = await Promise.all(parts);
    } catch (e) {
      throw this.readError(t, e);
    }
    const whole = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    const from = offset - first * cs;
    const out = whole.subarray(from, from + (end - offset));
    await this.verify(h, offset, out);
    return out;
  }

  private chunkCount(t: ReadTarget): number {
    return Math.ceil(t.size / this.settings.chunkSize);
  }

  private key(t: ReadTarget, index: number): string {
    return t.md5 ? contentKey(t.md5, t.size, this.settings.chunkSize, index) : `nomd5.${t.id}.${t.version}.${this.settings.chunkSize}.${index}`;
  }

  /**
   * The first `need` bytes (at least) of one chunk: from a download in flight (shared, and
   * answered as soon as those bytes have arrived), else the cache, else a new download of it
   * and of what follows up to `spanEnd`.
   */
  private async chunk(h: ReadHandle, index: number, spanEnd: number, need: number): Promise<Buffer> {
    const t = h.target;
    const key = this.key(t, index);
    const flying = this.inflight.get(key);
    if (flying) return this.await(flying, need);
    const cached = await this.cache.get(key);
    if (cached) return cached;
    // Checked again: a download may have started while the cache was read.
    const again = this.inflight.get(key);
    if (again) return this.await(again, need);
    this.startSpan(h, index, Math.min(spanEnd, index + this.settings.maxSpanChunks - 1));
    const started = this.inflight.get(key);
    if (!started) throw new Error('download did not start');
    return this.await(started, need);
  }

  private async await(f: InFlight, need: number): Promise<Buffer> {
    const span = f.span;
    const ready = () => (span.data && span.filled >= f.from + need ? Buffer.from(span.data.subarray(f.from, f.from + need)) : undefined);
    const now = ready();
    if (now) return now;
    span.waiters++;
    let listener: (() => void) | undefined;
    try {
      return await new Promise<Buffer>((resolve, reject) => {
        listener = () => {
          const b = ready();
          if (b) resolve(b);
        };
        span.listeners.add(listener);
        f.promise.then(resolve, reject);
      });
    } finally {
      if (listener) span.listeners.delete(listener);
      span.waiters--;
    }
  }

  /** Starts read-ahead of chunks [from, to] not cached or in flight, in spans, within the download bound. */
  private readAhead(h: ReadHandle, from: number, to: number): void {
    for (let i = from; i <= to; ) {
      if (this.downloads >= this.settings.maxDownloads) return;
      const key = this.key(h.target, i);
      if (this.inflight.has(key) || this.cache.has(key)) {
        i++;
        continue;
      }
      let end = i;
      while (end < to && end - i + 1 < this.settings.maxSpanChunks && !this.inflight.has(this.key(h.target, end + 1)) && !this.cache.has(this.key(h.target, end + 1))) end++;
      const span = this.startSpan(h, i, end);
      h.readahead.add(span);
      i = end + 1;
    }
  }

  private cancelReadahead(h: ReadHandle): void {
    for (const span of h.readahead) if (!span.done && span.waiters === 0) span.ctrl.abort();
    h.readahead.clear();
  }

  /** One ranged download of chunks [first, last]; each chunk resolves as soon as its bytes are in. */
  private startSpan(h: ReadHandle, first: number, last: number): Span {
    const t = h.target;
    const cs = this.settings.chunkSize;
    const span: Span = { ctrl: new AbortController(), waiters: 0, done: false, data: undefined, filled: 0, listeners: new Set() };
    const start = first * cs;
    const end = Math.min(t.size, (last + 1) * cs);
    const resolvers: Array<{ key: string; resolve: (b: Buffer) => void; reject: (e: unknown) => void; from: number; to: number; done: boolean }> = [];
    for (let i = first; i <= last; i++) {
      const key = this.key(t, i);
      let resolve!: (b: Buffer) => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<Buffer>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      // A read-ahead chunk nobody reads fails unobserved when cancelled: that is fine.
      promise.catch(() => undefined);
      this.inflight.set(key, { promise, span, from: i * cs - start });
      resolvers.push({ key, resolve, reject, from: i * cs - start, to: Math.min(t.size, (i + 1) * cs) - start, done: false });
    }
    const settle = (r: (typeof resolvers)[number], data: Buffer) => {
      if (r.done) return;
      r.done = true;
      const chunk = Buffer.from(data.subarray(r.from, r.to));
      this.inflight.delete(r.key);
      r.resolve(chunk);
      if (t.md5) {
        this.cache.put(r.key, chunk).catch((e: unknown) => this.log.error('chunk cache: store failed', e));
      } else this.cache.remember(r.key, chunk);
    };
    this.downloads++;
    this.stats.downloads++;
    let received = 0;
    const program = h.program;
    this.client
      .download(t.id, start, end - start, (data, filled) => {
        received = filled;
        span.data = data;
        span.filled = filled;
        for (const r of resolvers) if (!r.done && r.to <= filled) settle(r, data);
        for (const l of [...span.listeners]) l();
      }, span.ctrl.signal)
      .then(
        (data) => {
          received = data.length;
          for (const r of resolvers) settle(r, data);
        },
        (e: unknown) => {
          for (const r of resolvers) {
            if (r.done) continue;
            r.done = true;
            this.inflight.delete(r.key);
            r.reject(e);
          }
        },
      )
      .finally(() => {
        span.done = true;
        // Every chunk is settled: the span's buffer and its place among the read-ahead go.
        span.data = undefined;
        span.listeners.clear();
        h.readahead.delete(span);
        this.downloads--;
        this.count(t, program, received);
      });
    return span;
  }

  private count(t: ReadTarget, program: string, bytes: number): void {
    if (bytes <= 0) return;
    this.stats.bytes += bytes;
    this.stats.byProgram[program] = (this.stats.byProgram[program] ?? 0) + bytes;
    if (!(t.path in this.stats.byFile) && Object.keys(this.stats.byFile).length >= MAX_TRACKED_FILES) return;
    this.stats.byFile[t.path] = (this.stats.byFile[t.path] ?? 0) + bytes;
  }

  private readError(t: ReadTarget, e: unknown): Error {
    if (e instanceof RemoteError && /downloadQuotaExceeded|cannotDownloadFile|fileNotDownloadable|HTTP 403/.test(e.message)) {
      if (!this.blocked.has(t.id)) {
        this.stats.refused++;
        this.log.warn(`Drive refuses to serve ${t.path} (${e.message}); reads of it fail with EIO for ${Math.round(this.settings.blockedRetryMs / 60000)} min`);
      }
      this.blocked.set(t.id, Date.now() + this.settings.blockedRetryMs);
      return errnoError(e.message, EIO);
    }
    if (typeof (e as { errno?: unknown }).errno === 'number') return e as Error;
    this.log.error(`download of ${t.path} failed`, e);
    return errnoError((e as Error).message, EIO);
  }

  /** Feeds bytes served in order into the file's md5; at the end, a mismatch is EIO and drops the cached chunks. */
  private async verify(h: ReadHandle, offset: number, data: Buffer): Promise<void> {
    const v = h.verify;
    if (!v) return;
    const feed = (at: number, buf: Buffer) => {
      if (at + buf.length <= v.upTo) return;
      const piece = at < v.upTo ? buf.subarray(v.upTo - at) : buf;
      v.hash.update(piece);
      v.upTo += piece.length;
    };
    if (offset <= v.upTo) feed(offset, data);
    else if (v.pendingBytes + data.length <= MAX_PENDING_VERIFY) {
      v.pending.set(offset, Buffer.from(data));
      v.pendingBytes += data.length;
    } else {
      // Too far out of order to check as it goes: no check for this handle.
      h.verify = undefined;
      return;
    }
    for (let progressed = true; progressed; ) {
      progressed = false;
      for (const [at, buf] of v.pending) {
        if (at <= v.upTo) {
          v.pending.delete(at);
          v.pendingBytes -= buf.length;
          feed(at, buf);
          progressed = true;
        }
      }
    }
    const t = h.target;
    if (v.upTo < t.size) return;
    h.verify = undefined;
    const digest = v.hash.digest('hex');
    if (digest === t.md5) return;
    this.stats.md5Mismatches++;
    this.poisoned.add(`${t.md5}.${t.size}`);
    this.log.warn(`md5 mismatch for ${t.path}: Drive says ${t.md5}, the bytes read give ${digest}; its cached chunks are dropped`);
    await this.cache.dropContent(t.md5!, t.size);
    throw errnoError(`md5 mismatch for ${t.path}`, EIO);
  }
}
