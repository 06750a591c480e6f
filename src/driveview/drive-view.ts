/**
 * The Drive view as plain calls: the mirror (metadata from SQLite, never from Drive), the
 * sync (one scan, then the changes feed), the chunk reader (content). The FUSE adapter in
 * drive-view-fs.ts offers them as a FileSystem, which the FUSE adapter serves.
 *
 * State directory layout:
 *   mirror.db     the SQLite mirror (items, directory entries, page token, chunk index)
 *   chunks/       cached content chunks, named by content (md5.size.chunksize.index)
 *   staging/      with --rw: content written through the mount, until Drive holds it
 *   view.json     what this state is a mirror of (Drive account, root, shared drive)
 *   daemon.json   the running daemon (pid), while mounted
 *   pogfs.log     the daemon's log
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DriveClient } from '../remote/drive-client';
import { ChunkReader, DEFAULT_READER_SETTINGS, errnoError, type ReadHandle, type ReaderLog, type ReaderSettings } from './chunk-reader';
import { DiskChunkCache } from './chunk-cache';
import { MirrorDb, type EntryRow, type Invalidation } from './mirror-db';
import { MirrorSync, type PollResult, type ScanProgress, type SyncTarget } from './mirror-sync';
import { JournalDb } from './journal-db';
import { StagingArea } from './staging';
import { Uploader, type UploaderSettings } from './uploader';
import { WriteBack } from './write-back';

export const STATE_FILES = {
  mirror: 'mirror.db',
  chunks: 'chunks',
  staging: 'staging',
  view: 'view.json',
  daemon: 'daemon.json',
  log: 'pogfs.log',
} as const;

const ENOENT = 2;
const EBADF = 9;

export interface DriveViewOptions {
  stateDir: string;
  target: SyncTarget;
  cacheBytes: number;
  reader?: Partial<ReaderSettings>;
  log: ReaderLog & { info(msg: string): void };
}

export interface ViewStatus {
  items: number;
  folders: number;
  files: number;
  bytes: number;
  pageTokenTime: string | undefined;
  pageTokenAgeSeconds: number | undefined;
  lastPoll: Omit<PollResult, 'inval'> | undefined;
  cache: ReturnType<DiskChunkCache['stats']> & { hitRatio: number };
  downloads: ChunkReader['stats'];
  openFiles: number;
}

export class DriveView {
  readonly mirror: MirrorDb;
  readonly sync: MirrorSync;
  readonly cache: DiskChunkCache;
  readonly reader: ChunkReader;
  lastPoll: (PollResult & { inval?: Invalidation }) | undefined;
  private readonly handles = new Map<number, ReadHandle>();
  private nextFh = 1;
  private polling: Promise<PollResult & { inval: Invalidation }> | undefined;
  private readonly programs = new ProgramNames();
  private writeBack: WriteBack | undefined;

  constructor(
    readonly client: DriveClient,
    private readonly options: DriveViewOptions,
  ) {
    this.mirror = new MirrorDb(join(options.stateDir, STATE_FILES.mirror));
    this.sync = new MirrorSync(client, this.mirror, options.target);
    this.cache = new DiskChunkCache(join(options.stateDir, STATE_FILES.chunks), this.mirror, options.cacheBytes, Math.min(256 * 1024 * 1024, Math.max(0, options.cacheBytes / 4)) || 64 * 1024 * 1024, (m, e) => options.log.error(m, e));
    this.reader = new ChunkReader(client, this.cache, { ...DEFAULT_READER_SETTINGS, ...options.reader }, options.log);
  }

  /** Scans the Drive the first time, else catches up with one changes poll. */
  async start(progress?: ScanProgress): Promise<Invalidation> {
    if (!this.sync.bootstrapped) {
      const inval = await this.sync.bootstrap(progress);
      this.lastPoll = this.sync.lastReplay;
      return inval;
    }
    const r = await this.poll();
    // A failed catch-up is not fatal: the last known tree is served, status says why.
    return r.inval;
  }

  /** One poll of the changes feed at a time; a caller arriving during one waits for the next. */
  async poll(): Promise<PollResult & { inval: Invalidation }> {
    while (this.polling) await this.polling.catch(() => undefined);
    this.polling = this.sync.poll();
    try {
      const r = await this.polling;
      this.lastPoll = r;
      if (!r.ok) this.options.log.warn(`changes poll failed: ${r.error}; the last known tree is still served`);
      return r;
    } finally {
      this.polling = undefined;
    }
  }

  /**
   * The local changes of a writable view: the journal and staging area in the state
   * directory, and the feed's rule that keeps them (conflict copies, pogfs-recovered).
   * Called before the first poll whenever there are any (a `--rw` mount, or a mount
   * after one that left changes pending), so the catch-up poll can neither drop staged
   * work nor take Drive's new revision as the base a pending upload would overwrite.
   */
  keepLocalChanges(stagingLimitBytes: number): WriteBack {
    if (!this.writeBack) {
      const journal = new JournalDb(this.mirror.db);
      const area = new StagingArea(join(this.options.stateDir, STATE_FILES.staging), stagingLimitBytes);
      this.writeBack = new WriteBack(this, this.mirror, journal, area, this.options.log);
      this.sync.local = this.writeBack;
    }
    return this.writeBack;
  }

  /**
   * Makes the view writable (`--rw`): its local changes (keepLocalChanges) and the
   * uploader, which starts at once on whatever an earlier mount left pending.
   */
  enableWrites(settings: Omit<UploaderSettings, 'chunkSize'> & { stagingLimitBytes: number }): { writeBack: WriteBack; uploader: Uploader } {
    const writeBack = this.keepLocalChanges(settings.stagingLimitBytes);
    const uploader = new Uploader(this.client, this.mirror, writeBack.journal, writeBack, this.cache, { ...settings, chunkSize: this.reader.chunkSize }, this.options.log, (id, file) =>
      this.sync.applyItem(id, file),
    );
    uploader.kick();
    return { writeBack, uploader };
  }

  close(): void {
    for (const h of this.handles.values()) this.reader.release(h);
    this.handles.clear();
    this.cache.flush();
    this.mirror.close();
  }

  // ---- metadata (SQLite only) ----------------------------------------------------------

  lookup(dir: number, name: Buffer): EntryRow {
    const e = this.mirror.lookup(dir, name);
    if (!e) throw errnoError('no such entry', ENOENT);
    return e;
  }

  entry(ino: number): EntryRow {
    const e = this.mirror.entry(ino);
    if (!e) throw errnoError('no such inode', ENOENT);
    return e;
  }

  list(dir: number, after: number, limit: number): ReturnType<MirrorDb['list']> {
    return this.mirror.list(dir, after, limit);
  }

  /** A shortcut's target as a path relative to the link (dangling when the target is not in the view). */
  readlink(ino: number): Buffer {
    const e = this.entry(ino);
    const depth = (this.mirror.pathOf(e.dir) ?? []).length;
    const up = '../'.repeat(depth);
    const targetIno = e.target === undefined ? undefined : this.mirror.inoOfItem(e.target);
    const path = targetIno === undefined ? undefined : this.mirror.pathOf(targetIno);
    if (!path) return Buffer.from(`${up}.pogfs-shortcut-target-not-in-view/${e.target ?? 'unknown'}`);
    if (path.length === 0) return Buffer.from(depth === 0 ? '.' : up.slice(0, -1));
    return Buffer.concat([Buffer.from(up), ...path.flatMap((p, i) => (i === 0 ? [p] : [Buffer.from('/'), p]))]);
  }

  pathOf(ino: number): string {
    const parts = this.mirror.pathOf(ino);
    return parts ? `/${parts.map((p) => p.toString('utf8')).join('/')}` : `(inode ${ino}, no longer in the view)`;
  }

  // ---- content -------------------------------------------------------------------------

  open(ino: number, pid: number): number {
    const e = this.entry(ino);
    if (e.kind !== 'file' || !e.item) throw errnoError('not a file', 21 /* EISDIR */);
    const fh = this.nextFh++;
    this.handles.set(fh, this.reader.open({ id: e.item, size: e.size, md5: e.md5, version: String(e.modifiedMs), path: this.pathOf(ino) }, this.programs.of(pid)));
    return fh;
  }

  /** A read; what it downloads is counted for the program of `pid` (the reader, which need not be who opened the file). */
  read(fh: number, offset: number, size: number, pid = 0): Promise<Buffer> {
    const h = this.handles.get(fh);
    if (!h) return Promise.reject(errnoError('bad file handle', EBADF));
    if (pid) h.program = this.programs.of(pid);
    return this.reader.read(h, offset, size);
  }

  release(fh: number): void {
    const h = this.handles.get(fh);
    if (h) this.reader.release(h);
    this.handles.delete(fh);
  }

  status(): ViewStatus {
    const counts = this.mirror.itemCount();
    const tokenTime = this.mirror.getState('page_token_time');
    const c = this.cache.stats();
    const lp = this.lastPoll;
    return {
      ...counts,
      pageTokenTime: tokenTime,
      pageTokenAgeSeconds: tokenTime ? Math.max(0, (Date.now() - Date.parse(tokenTime)) / 1000) : undefined,
      lastPoll: lp ? { at: lp.at, ok: lp.ok, changes: lp.changes, calls: lp.calls, ...(lp.error ? { error: lp.error } : {}) } : undefined,
      cache: { ...c, hitRatio: c.hits + c.misses > 0 ? c.hits / (c.hits + c.misses) : 0 },
      downloads: this.reader.stats,
      openFiles: this.handles.size,
    };
  }
}


/** The program behind a pid (its comm), for download accounting; remembered briefly, since every read asks. */
class ProgramNames {
  private readonly names = new Map<number, { name: string; at: number }>();

  of(pid: number): string {
    if (!pid) return 'unknown';
    const now = Date.now();
    const known = this.names.get(pid);
    // A pid is reused only after its process is gone; a few seconds of memory are safe enough for accounting.
    if (known && now - known.at < 5000) return known.name;
    let name: string;
    try {
      name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim() || 'unknown';
    } catch {
      name = known?.name ?? 'unknown';
    }
    if (this.names.size >= 1024) this.names.clear();
    this.names.set(pid, { name, at: now });
    return name;
  }
}
