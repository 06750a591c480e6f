import type { MetaDb } from '../meta/meta-db';
import type { SharedPackIndex } from '../meta/remote-index';
import type { Remote, RemoteCounters } from '../remote/remote';
import type { BlockRead, BlockSource, BlockStore } from '../store/block-store';
import type { CacheLedger } from './cache-ledger';
import type { SuperChunkPacker } from '../store/super-chunk-packer';
import { BlockFetcher, type FetcherStats } from './block-fetcher';
import { CacheEvictor } from './cache-evictor';
import { PackUploader, type UploaderStatus } from './pack-uploader';
import type { ProgressSink } from '../progress';

/**
 * The local block store as a bounded cache over the remote: reads that miss are fetched
 * from packs, new blocks go up in packs behind the writes, and clean blocks are evicted
 * when the store outgrows the cache size. Writers slow down (never fail) while dirty data
 * alone fills the cache (DESIGN invariant 4).
 */

export interface RemoteCacheOptions {
  cacheBytes: number;
  packBytes: number;
  /** Bytes read ahead of a sequential reader. */
  readaheadBytes: number;
  uploadIdleMs: number;
  log: { error(msg: string, err?: unknown): void; warn(msg: string): void; info(msg: string): void };
  /**
   * A volume several machines share through the remote (its metadata in PostgreSQL): the
   * pack index they all publish to and look up (pg-pack-index.ts); the local one caches it.
   */
  shared?: SharedPackIndex;
}

/**
 * What the cache needs of the local SQLite database: its pack index (RemoteIndex: packs,
 * block locations, pins) and durable transactions. A volume's meta.db, also when its
 * namespace lives in another engine (Volume.localPackIndex).
 */
export type LocalPackIndex = Pick<MetaDb, 'remote' | 'durableTransaction'>;

export interface CacheStatus {
  remote: string;
  cacheBytes: number;
  /** What the local store holds (stored bytes, headers included). */
  localBytes: number;
  upload: UploaderStatus;
  fetch: FetcherStats;
  evictedBytes: number;
  /** Block reads served locally (hits) and those that waited for a fetch (misses). */
  reads: { hits: number; misses: number };
  pinnedBytes: number;
  /** True while writers wait because dirty data fills the cache. */
  backpressure: boolean;
  /** Writes that had to wait for uploads so far. */
  throttledWrites: number;
  calls: RemoteCounters;
}

export interface PinResult {
  ino: number;
  /** Distinct blocks in the pinned tree, and their bytes. */
  blocks: number;
  bytes: number;
  /** Fetched now (the rest were local already), and not fetched (missing or corrupt on the remote). */
  fetched: number;
  failed: number;
}

export class RemoteCache implements BlockSource {
  readonly fetcher: BlockFetcher;
  readonly uploader: PackUploader;
  readonly evictor: CacheEvictor;
  private throttled = 0;
  /** Block reads answered from the local store (hits) or only after a fetch (misses). */
  private readonly reads = { hits: 0, misses: 0 };
  private waitingWriters = 0;
  private evictTimer: NodeJS.Timeout | undefined;
  /** Set by close: a pack finishing while the uploader closes must not start an eviction on a store about to close. */
  private closed = false;

  private readonly store: BlockStore;

  constructor(
    private readonly ledger: CacheLedger,
    private readonly meta: LocalPackIndex,
    readonly remote: Remote,
    packer: SuperChunkPacker,
    readonly options: RemoteCacheOptions,
  ) {
    const store = ledger.store;
    this.store = store;
    this.fetcher = new BlockFetcher(store, meta.remote, remote, {
      // A read-ahead window goes out as two ranges or more, so a second download keeps the
      // link busy while a reader drains the first (blocks are usable as their bytes arrive).
      maxRangeBytes: Math.max(1 << 20, Math.min(16 << 20, Math.floor(this.readaheadBytes / 2))),
      maxGapBytes: 1 << 20,
      concurrency: 4,
      log: options.log,
      onInstalled: (hashes) => {
        for (const h of hashes) this.evictor.touch(h);
      },
      shared: options.shared,
    });
    this.uploader = new PackUploader(ledger, meta, remote, packer, {
      // Writers wait once dirty data reaches the cache size: packs of at most half of it
      // let one pack fill while the one before goes up.
      packBytes: Math.min(options.packBytes, Math.floor(options.cacheBytes / 2)),
      idleMs: options.uploadIdleMs,
      parallel: 2,
      retryMs: 5000,
      log: options.log,
      shared: options.shared,
    });
    this.evictor = new CacheEvictor(ledger, meta.remote, { cacheBytes: options.cacheBytes, lowWater: 0.9, log: options.log });
    this.uploader.onUploaded = () => this.scheduleEviction();
    store.onStored = () => {
      this.uploader.notify();
      this.scheduleEviction();
    };
  }

  /**
   * Bytes a sequential reader gets fetched ahead: the setting, but at most a quarter of
   * the cache. A window near the cache's size would have its own front evicted (read
   * ahead, not read yet) to make room for its back, and fetched again.
   */
  get readaheadBytes(): number {
    return Math.min(this.options.readaheadBytes, Math.floor(this.options.cacheBytes / 4));
  }

  /** Reads through the cache: a block missing locally is fetched from its pack first. */
  read(hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead | Promise<BlockRead> {
    this.evictor.touch(hash);
    const r = this.store.read(hash, from, length, target, at);
    if (r === 'missing') return this.miss(hash, from, length, target, at);
    if (typeof r === 'string') {
      if (r === 'ok') this.reads.hits++;
      return r;
    }
    return r.then((res) => {
      if (res === 'missing') return this.miss(hash, from, length, target, at);
      if (res === 'ok') this.reads.hits++;
      return res;
    });
  }

  private miss(hash: Buffer, from: number, length: number, target: Buffer, at: number): Promise<BlockRead> {
    this.reads.misses++;
    return this.fetchAndRead(hash, from, length, target, at);
  }

  private async fetchAndRead(hash: Buffer, from: number, length: number, target: Buffer, at: number): Promise<BlockRead> {
    const fetched = await this.fetcher.fetchOne(hash);
    if (fetched !== 'ok') return fetched;
    this.scheduleEviction();
    return this.store.read(hash, from, length, target, at);
  }

  /** Starts fetching blocks a reader will want soon (read-ahead); never waits. */
  prefetch(hashes: readonly Buffer[]): void {
    const missing = hashes.filter((h) => !this.store.has(h));
    if (missing.length === 0) return;
    for (const p of this.fetcher.fetch(missing).values()) p.catch(() => undefined);
  }

  /**
   * Backpressure: resolves once dirty data is below the cache size again (undefined at
   * once when it is). Dirty blocks cannot be evicted, so this is where writers wait.
   * `pendingBytes` is what the writer holds that is not in the store yet: it becomes dirty
   * within moments, and without it a fast writer runs far past the cache size.
   */
  admit(pendingBytes: () => number): Promise<void> | undefined {
    if (this.ledger.dirtyStats().bytes + pendingBytes() < this.options.cacheBytes) return undefined;
    this.throttled++;
    return this.waitForRoom(pendingBytes);
  }

  private async waitForRoom(pendingBytes: () => number): Promise<void> {
    this.waitingWriters++;
    try {
      while (this.ledger.dirtyStats().bytes + pendingBytes() >= this.options.cacheBytes) {
        this.uploader.hurry();
        await Promise.race([this.uploader.uploaded(), new Promise((r) => setTimeout(r, 1000))]);
      }
    } finally {
      this.waitingWriters--;
    }
  }

  private scheduleEviction(): void {
    if (this.closed || this.evictTimer || this.store.stats().storedBytes <= this.options.cacheBytes) return;
    this.evictTimer = setTimeout(() => {
      this.evictTimer = undefined;
      this.evictor.maybeEvict().catch((err) => this.options.log.error('eviction failed', err));
    }, 50);
    this.evictTimer.unref();
  }

  /**
   * Keeps a tree's blocks local (for offline use): recorded durably, then every block of
   * it not held locally is fetched. Pinned blocks are never evicted.
   */
  async pin(ino: number, progress?: ProgressSink): Promise<PinResult> {
    this.meta.durableTransaction(() => this.meta.remote.addPin(ino));
    this.evictor.pinsChanged();
    const blocks = this.meta.remote.treeBlocks(ino);
    const result: PinResult = { ino, blocks: blocks.length, bytes: blocks.reduce((n, b) => n + b.len, 0), fetched: 0, failed: 0 };
    // Progress counts every block of the tree (local ones at once), and its bytes.
    let done = 0;
    let doneBytes = 0;
    progress?.start('pin: fetching blocks');
    for (let at = 0; at < blocks.length; at += 1024) {
      const slice = blocks.slice(at, at + 1024);
      const missing = slice.filter((b) => !this.store.has(b.hash));
      const len = new Map(missing.map((b) => [b.hash.toString('latin1'), b.len]));
      done += slice.length - missing.length;
      doneBytes += slice.reduce((n, b) => n + b.len, 0) - missing.reduce((n, b) => n + b.len, 0);
      progress?.update(done, blocks.length, doneBytes);
      const fetches = [...this.fetcher.fetch(missing.map((b) => b.hash))].map(([k, p]) =>
        p.then((r) => {
          done++;
          doneBytes += len.get(k) ?? 0;
          progress?.update(done, blocks.length, doneBytes);
          return r;
        }),
      );
      const outcomes = await Promise.all(fetches);
      for (const r of outcomes) {
        if (r === 'ok') result.fetched++;
        else result.failed++;
      }
    }
    if (this.store.stats().storedBytes > this.options.cacheBytes) {
      this.options.log.warn(`pinned data (${result.bytes} bytes) and dirty data leave the cache over its size`);
    }
    return result;
  }

  /** Lets a pinned tree's blocks be evicted again. */
  async unpin(ino: number): Promise<{ ino: number; unpinned: boolean }> {
    const unpinned = this.meta.durableTransaction(() => this.meta.remote.removePin(ino));
    this.evictor.pinsChanged();
    this.scheduleEviction();
    return { ino, unpinned };
  }

  /**
   * A volume several machines share, before a commit of rows: resolves once every block
   * stored so far (short ones waiting for a super-chunk too) is on the remote and in the
   * shared pack index, so another machine can read what the rows reference.
   */
  publishStored(): Promise<void> {
    return this.uploader.flush();
  }

  /**
   * A volume several machines share: blocks a commit names whose entries gc removed from
   * the shared index go up again (marked dirty; the next publishStored uploads them). Those
   * the local store does not hold cannot: rejects, naming them in the log.
   */
  async republish(hashes: readonly Buffer[]): Promise<void> {
    const absent = hashes.filter((h) => !this.store.has(h));
    if (absent.length > 0) {
      const message = `${absent.length} blocks a commit names are in no pack on the remote (a gc removed them) nor in the local store (first ${absent[0].toString('hex')}): the commit fails`;
      this.options.log.error(message);
      throw new Error(message);
    }
    const marked = await this.ledger.markDirtyAgain(hashes);
    this.options.log.info(`${hashes.length} blocks a commit names lost their pack to a gc: uploading them again (${marked} marked dirty)`);
  }

  /** Uploads everything dirty (metadata backup, unmount). */
  flush(): Promise<void> {
    return this.uploader.flush();
  }

  status(): CacheStatus {
    return {
      remote: this.remote.description,
      cacheBytes: this.options.cacheBytes,
      localBytes: this.store.stats().storedBytes,
      upload: this.uploader.status(),
      fetch: { ...this.fetcher.stats },
      evictedBytes: this.evictor.evictedBytes,
      reads: { ...this.reads },
      pinnedBytes: this.evictor.pinnedBytes(),
      backpressure: this.waitingWriters > 0,
      throttledWrites: this.throttled,
      calls: this.remote.counters(),
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.evictTimer) clearTimeout(this.evictTimer);
    this.evictTimer = undefined;
    this.store.onStored = undefined;
    await this.uploader.close();
    // An eviction started before close still reads and writes the store: the caller closes it next.
    await this.evictor.idle();
  }
}
