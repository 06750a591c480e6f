import type { RemoteIndex } from '../meta/remote-index';
import type { CacheLedger, Evictable } from './cache-ledger';

/**
 * Keeps the local store under the cache size by giving up the least recently used clean
 * objects (loose blocks and whole super-chunks) that are on the remote. Dirty blocks are
 * never evicted (DESIGN invariant 4), nor blocks of pinned trees.
 *
 * Recency is kept in memory for what was read or written since the mount (a Map in use
 * order). Objects not touched since then are older than all of those and go first, found
 * by a walk over the store that resumes where it stopped.
 */

export interface EvictorOptions {
  cacheBytes: number;
  /** Evict down to this share of the cache size, so eviction runs in batches, not per block. */
  lowWater: number;
  log: { error(msg: string, err?: unknown): void };
}

/** Objects evicted per LMDB transaction. */
const BATCH = 256;
/** Pinned blocks are recomputed at most this often (ms) unless pins change. */
const PIN_REFRESH_MS = 30_000;

function objectKey(o: Evictable): string {
  return 'hash' in o ? `b${o.hash.toString('latin1')}` : `c${o.chunk}`;
}

export class CacheEvictor {
  /** Touched objects, least recently used first. */
  private readonly recent = new Map<string, Evictable>();
  private cursor: Buffer | undefined;
  private pinned: Set<string> | undefined;
  private pinnedAt = 0;
  private running: Promise<void> | undefined;
  evictedBytes = 0;
  evictedObjects = 0;

  constructor(
    private readonly ledger: CacheLedger,
    private readonly index: RemoteIndex,
    private options: EvictorOptions,
  ) {}

  private get store() {
    return this.ledger.store;
  }

  get cacheBytes(): number {
    return this.options.cacheBytes;
  }

  /** Records a use of the block's holder (its super-chunk, or the block). */
  touch(hash: Buffer): void {
    const holder = this.ledger.holderOf(hash);
    if (!holder) return;
    const k = objectKey(holder);
    this.recent.delete(k);
    this.recent.set(k, holder);
  }

  /** The pin set changed: recompute before the next eviction. */
  pinsChanged(): void {
    this.pinned = undefined;
  }

  /** Bytes of pinned blocks (decoded). */
  pinnedBytes(): number {
    return this.index.pinnedBlocks().reduce((n, b) => n + b.len, 0);
  }

  /** Evicts if the store is over its size; concurrent calls share one run. */
  maybeEvict(): Promise<void> {
    if (this.store.stats().storedBytes <= this.options.cacheBytes) return Promise.resolve();
    this.running ??= this.evict().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Resolves once no eviction is running (the store may then be closed). */
  async idle(): Promise<void> {
    // A failed eviction was logged where it ran; closing must go on.
    await this.running?.catch(() => undefined);
  }

  private pinnedSet(): Set<string> {
    if (!this.pinned || Date.now() - this.pinnedAt > PIN_REFRESH_MS) {
      this.pinned = new Set(this.index.pins().length > 0 ? this.index.pinnedBlocks().map((b) => b.hash.toString('latin1')) : []);
      this.pinnedAt = Date.now();
    }
    return this.pinned;
  }

  private async evict(): Promise<void> {
    const target = this.options.cacheBytes * this.options.lowWater;
    const pinned = this.pinnedSet();
    const over = () => this.store.stats().storedBytes > target;
    // First what nobody touched since the mount, walking the store from where the last run stopped.
    let atEnd = false;
    while (over() && !atEnd) {
      const hashes = [...this.store.scanHashesFrom(this.cursor, BATCH * 4)];
      atEnd = hashes.length < BATCH * 4;
      this.cursor = atEnd ? undefined : nextKey(hashes[hashes.length - 1]);
      const batch: Evictable[] = [];
      const seen = new Set<string>();
      for (const hash of hashes) {
        if (this.ledger.isDirty(hash) || pinned.has(hash.toString('latin1'))) continue;
        const holder = this.ledger.holderOf(hash);
        if (!holder) continue;
        const k = objectKey(holder);
        if (this.recent.has(k) || seen.has(k)) continue;
        if ('chunk' in holder && this.chunkPinned(holder.chunk, pinned)) continue;
        seen.add(k);
        batch.push(holder);
      }
      await this.evictBatch(batch);
    }
    // Then the least recently used of what was touched.
    while (over() && this.recent.size > 0) {
      const batch: Evictable[] = [];
      for (const [k, o] of this.recent) {
        this.recent.delete(k);
        if ('hash' in o && (this.ledger.isDirty(o.hash) || pinned.has(o.hash.toString('latin1')))) continue;
        if ('chunk' in o && this.chunkPinned(o.chunk, pinned)) continue;
        batch.push(o);
        if (batch.length >= BATCH) break;
      }
      await this.evictBatch(batch);
    }
  }

  private chunkPinned(chunk: number, pinned: Set<string>): boolean {
    if (pinned.size === 0) return false;
    return this.store.superChunks.members(chunk).some((m) => pinned.has(m.hash.toString('latin1')));
  }

  private async evictBatch(batch: Evictable[]): Promise<void> {
    if (batch.length === 0) return;
    try {
      const freed = await this.ledger.evict(batch);
      this.evictedBytes += freed;
      this.evictedObjects += batch.length;
      for (const o of batch) this.recent.delete(objectKey(o));
    } catch (err) {
      this.options.log.error('evicting from the local cache failed', err);
    }
  }
}

/** The smallest key after `key` (for resuming a walk). */
function nextKey(key: Buffer): Buffer {
  return Buffer.concat([key, Buffer.from([0])]);
}
