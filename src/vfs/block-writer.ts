import type { BlockRead, BlockSource, BlockStore, BlockToStore } from '../store/block-store';

/** Up to this much, a drain commits on the calling thread (see drain). */
const SYNC_COMMIT_MAX_BYTES = 1024 * 1024;
/** Up to this much left queued at a commit is parked in the metadata (see park). */
const PARK_MAX_BYTES = 1024 * 1024;

/** A BlockSource that may also read ahead and hold writers back (the remote cache). */
export interface ContentSource extends BlockSource {
  prefetch?(hashes: readonly Buffer[]): void;
  /** Undefined when writers may go on; otherwise resolves when they may. */
  admit?(pendingBytes: () => number): Promise<void> | undefined;
}

/** A block handed over, with its compressed value being made off this thread if it needs one. */
export interface QueuedBlock extends BlockToStore {
  encoding?: Promise<Buffer>;
}

/**
 * Batches new block references into few LMDB transactions. Callers hand blocks over
 * and go on; `drain()` resolves when everything handed over so far is durable.
 * A block the store lacks and would compress is handed to the store's encoder at once
 * (BlockStore.encodeAhead, on libuv's thread pool), so compression overlaps with the
 * writes that follow and never holds up the JavaScript thread, which serves every FUSE
 * request.
 * Memory held by queued and in-flight blocks is bounded: `admit()` waits while it is
 * above the limit, which slows writers down instead of failing them.
 */

export class BlockWriter {
  /** Blocks handed over but not yet committed, readable meanwhile (key: hash as latin1). */
  private readonly unsettled = new Map<string, { data: Buffer; count: number }>();
  private queue: QueuedBlock[] = [];
  /** Queued blocks whose compression has not finished. */
  private encodingCount = 0;
  private queuedBytes = 0;
  private inFlightBytes = 0;
  private scheduled = false;
  private readonly pending = new Set<Promise<void>>();
  private failure: Error | undefined;
  private waiters: (() => void)[] = [];
  /** Resolves once every batch submitted so far is stored or failed. */
  private allSettled: Promise<void> = Promise.resolve();
  /** Parked blocks whose metadata commit is done (up to `seq`), waiting to be moved into the store. */
  private movable: { batch: QueuedBlock[]; seq: number }[] = [];
  private parkedBytes = 0;
  private moving: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly store: BlockStore,
    /** Where committed blocks are read: the store, or a cache of the remote in front of it. */
    private readonly source: ContentSource = store,
    private readonly batchBlocks = 64,
    private readonly maxBytes = 256 * 1024 * 1024,
  ) {}

  /** Starts fetching blocks a sequential reader will want (only a remote cache does anything). */
  prefetch(hashes: readonly Buffer[]): void {
    this.source.prefetch?.(hashes);
  }

  /** Takes a reference on `hash`, storing `data` if the store lacks it. */
  add(hash: Buffer, data: Buffer): void {
    const key = hash.toString('latin1');
    const u = this.unsettled.get(key);
    if (u) u.count += 1;
    else this.unsettled.set(key, { data, count: 1 });
    const item: QueuedBlock = { hash, data };
    const encoding = this.store.encodeAhead(hash, data);
    if (encoding) {
      this.encodingCount++;
      item.encoding = encoding.then(
        (value) => {
          item.value = value;
          this.encodingCount--;
          return value;
        },
        (err: unknown) => {
          this.encodingCount--;
          throw err;
        },
      );
      // A failure shows when the batch is submitted; this keeps it from being "unhandled" before.
      item.encoding.catch(() => undefined);
    }
    this.queue.push(item);
    this.queuedBytes += data.length;
    if (this.queue.length >= this.batchBlocks) this.submit();
    else if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.submit());
    }
  }

  /**
   * Takes one more reference on a block some file already references (a copy by
   * reference): no bytes are read or written. Queued behind every block handed over
   * before, so it is durable by the same `drain()`; and a release of the same block by
   * its other holder is only made after a commit that drains first, so the count never
   * passes through zero in between. A block still in the writer's hands (queued, in
   * flight, or parked in the metadata by a close and not yet moved) may not be in the
   * store when this reference reaches it: the reference then carries the bytes, which
   * the store keeps only if it still lacks them.
   */
  share(hash: Buffer): void {
    const held = this.unsettled.size > 0 ? this.unsettled.get(hash.toString('latin1')) : undefined;
    if (held) {
      this.add(hash, held.data);
      return;
    }
    // Not submitted by count: a reference carries no bytes, and a copy's references all
    // wait for the batches before them, so they had better go in one commit, not many.
    this.queue.push({ hash });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.submit());
    }
  }

  /**
   * Copies bytes of a block out of the writer's hands or, once committed, out of the
   * store (verified against its hash); bytes past the block's end read as zeros. A
   * promise when the store has to decompress a super-chunk first.
   */
  read(hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead | Promise<BlockRead> {
    const u = this.unsettled.size > 0 ? this.unsettled.get(hash.toString('latin1')) : undefined;
    if (!u) return this.source.read(hash, from, length, target, at);
    const end = Math.min(from + length, u.data.length);
    if (end > from) u.data.copy(target, at, from, end);
    if (end < from + length) target.fill(0, at + Math.max(0, end - from), at + length);
    return 'ok';
  }

  /** Adds the keys (hash as latin1) of blocks handed over but not yet committed. */
  collectBlockKeys(into: Set<string>): void {
    for (const key of this.unsettled.keys()) into.add(key);
  }

  /** Bytes handed over and not yet durable in the store (they will take room on disk). */
  bufferedBytes(): number {
    return this.queuedBytes + this.inFlightBytes + this.parkedBytes;
  }

  /**
   * At a commit: the blocks still queued, when they are few (a small file being closed),
   * are handed back to be parked in the metadata with the commit (MetaBlockParking),
   * which costs no sync of the block store; they stay readable here until `moveParked`.
   * More than that are submitted to the store as usual. Returns what the caller parks.
   */
  park(): QueuedBlock[] {
    if (this.queue.length === 0 || this.queuedBytes > PARK_MAX_BYTES) return [];
    const batch = this.queue;
    this.parkedBytes += this.queuedBytes;
    this.queue = [];
    this.queuedBytes = 0;
    return batch;
  }

  /** The parked blocks are in the metadata as sequence numbers up to `seq`: the store may take them. */
  parkedAt(batch: QueuedBlock[], seq: number): void {
    this.movable.push({ batch, seq });
  }

  /** Parking them failed: they go to the store the usual way. */
  unpark(batch: QueuedBlock[]): void {
    for (const b of batch) {
      this.parkedBytes -= b.data?.length ?? 0;
      this.queue.push(b);
      this.queuedBytes += b.data?.length ?? 0;
    }
    this.submit();
  }

  /** Bytes parked and not yet moved into the store. */
  get parkedPending(): number {
    return this.parkedBytes;
  }

  /**
   * Moves every parked block whose metadata commit is done into the store, in one durable
   * commit that also records the last sequence number taken (so a block is taken once,
   * whatever crashes). Resolves with that number (undefined: nothing to move). One move
   * at a time; a failed one is retried by the next.
   */
  moveParked(): Promise<number | undefined> {
    const run = this.moving.then(async () => {
      const groups = this.movable;
      if (groups.length === 0) return undefined;
      this.movable = [];
      const batch = groups.flatMap((g) => g.batch);
      const seq = Math.max(...groups.map((g) => g.seq));
      try {
        await Promise.all(batch.filter((b) => b.encoding && !b.value).map((b) => b.encoding));
        // Behind every batch submitted before: a parked reference may share one of their blocks.
        await this.allSettled;
        await this.store.acquire(batch, seq);
      } catch (err) {
        this.movable = [...groups, ...this.movable];
        throw err;
      }
      this.settle(batch);
      for (const b of batch) this.parkedBytes -= b.data?.length ?? 0;
      this.wakeWriters();
      return seq;
    });
    this.moving = run.catch(() => undefined);
    return run;
  }

  /** Resolves when buffered bytes are under the limit (and the cache has room for more dirty data). */
  admit(): Promise<void> | undefined {
    const room = this.source.admit?.(() => this.queuedBytes + this.inFlightBytes);
    // Parked bytes count too: if the store's moves fall behind, writers wait for them.
    if (this.bufferedBytes() < this.maxBytes) return room;
    const buffered = new Promise<void>((resolve) => this.waiters.push(resolve));
    return room ? Promise.all([buffered, room]).then(() => undefined) : buffered;
  }

  /** Resolves once every block added so far is durable in the store; rejects if a write failed. */
  async drain(): Promise<void> {
    // A few blocks and nothing in flight (a small file being closed): commit them right
    // here, without the round trip through LMDB's writer thread.
    if (this.pending.size === 0 && this.queue.length > 0 && this.queuedBytes <= SYNC_COMMIT_MAX_BYTES && this.encodingCount === 0) {
      const batch = this.queue;
      this.queue = [];
      this.queuedBytes = 0;
      this.scheduled = false;
      try {
        this.store.acquireSync(batch);
      } finally {
        this.settle(batch);
      }
      return;
    }
    this.submit();
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
    if (this.failure) {
      const err = this.failure;
      this.failure = undefined;
      throw err;
    }
  }

  /** The batch is committed (or failed): its blocks are the store's to serve now. */
  private settle(batch: readonly BlockToStore[]): void {
    for (const { hash, data } of batch) {
      if (!data) continue; // a shared reference: never in `unsettled`
      const key = hash.toString('latin1');
      const u = this.unsettled.get(key);
      if (u && --u.count === 0) this.unsettled.delete(key);
    }
  }

  private submit(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const batch = this.queue;
    const bytes = this.queuedBytes;
    this.queue = [];
    this.queuedBytes = 0;
    this.inFlightBytes += bytes;
    const waits: Promise<unknown>[] = batch.filter((b) => b.encoding && !b.value).map((b) => b.encoding as Promise<Buffer>);
    // A batch still compressing is stored after later batches that need no compression.
    // A shared reference must not overtake the block it shares: a batch holding one
    // waits until every batch before it is settled.
    if (batch.some((b) => !b.data)) waits.push(this.allSettled);
    const stored = waits.length > 0 ? Promise.all(waits).then(() => this.store.acquire(batch)) : this.store.acquire(batch);
    const settled = stored.then(
      () => undefined,
      () => undefined,
    );
    this.allSettled = Promise.all([this.allSettled, settled]).then(() => undefined);
    const p: Promise<void> = stored
      .catch((err: Error) => {
        this.failure = err;
      })
      .finally(() => {
        this.settle(batch);
        this.inFlightBytes -= bytes;
        this.pending.delete(p);
        this.wakeWriters();
      });
    this.pending.add(p);
  }

  /** Lets waiting writers go on once the bytes held are under the limit again. */
  private wakeWriters(): void {
    if (this.bufferedBytes() >= this.maxBytes) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
