import type { BlockStore, StoreLedger } from '../store/block-store';
import { BLOCK_HEADER_SIZE, decodeLocator, isLocator } from '../store/codec';
import { readFast, u64Key, u64KeyValue, type Table, type WriteTxn } from '../store/store-env';

/** A block waiting for upload, in the order blocks were stored. */
export interface DirtyBlock {
  seq: number;
  hash: Buffer;
}

/** Something the local store can give up once it is on the remote: a loose block or a whole super-chunk. */
export type Evictable = { hash: Buffer } | { chunk: number };

/** A stored value as it goes into a pack: a loose block, or a super-chunk with its live members. */
export interface UploadUnit {
  /** Names the value among a pack's units (`b` + digest, or `c` + chunk id): one copy per pack. */
  key: string;
  value: Buffer;
  members: { hash: Buffer; blockOffset: number; length: number }[];
}

const DIRTY_KEY = Buffer.from('dirty');

/**
 * The local store's ledger as a cache of the remote: which blocks are not uploaded yet
 * (dirty: never evicted, DESIGN invariant 4), what goes into a pack, and what eviction may
 * give up. Kept in the block store's own LMDB environment, so that a block and its dirty
 * mark are committed in one transaction:
 *  - `dirty`:  digest → sequence number; `dirtyq`: sequence number → digest (upload in
 *              write order);
 *  - `info` key `dirty`: the dirty blocks' count and decoded bytes.
 * The store tells it of every block stored and deleted inside its transactions
 * (StoreLedger). A volume attaches one whether or not it has a remote: only with one are
 * new blocks marked dirty, but a block deleted for good always loses its mark.
 */
export class CacheLedger implements StoreLedger {
  private readonly dirty: Table;
  private readonly dirtyq: Table;
  /** The store's `blocks` table, read for the raw lengths and kinds of values. */
  private readonly blocks: Table;
  private nextDirtySeq = 0;

  constructor(
    readonly store: BlockStore,
    /** Mark newly stored blocks dirty (a volume with a remote). */
    private readonly trackNew: boolean,
  ) {
    this.dirty = store.env.table('dirty');
    this.dirtyq = store.env.table('dirtyq');
    this.blocks = store.env.table('blocks');
    for (const key of this.dirtyq.getKeys({ reverse: true, limit: 1 })) this.nextDirtySeq = u64KeyValue(key) + 1;
    store.attachLedger(this);
  }

  stored(txn: WriteTxn, hash: Buffer, length: number): void {
    if (this.trackNew) this.markDirty(txn, hash, length);
  }

  removed(txn: WriteTxn, hash: Buffer, length: number): void {
    this.unmarkDirty(txn, hash, length);
  }

  private markDirty(txn: WriteTxn, hash: Buffer, length: number): void {
    txn.assertOpen();
    if (this.dirty.doesExist(hash)) return;
    const seq = u64Key(this.nextDirtySeq++);
    this.dirty.put(hash, seq);
    this.dirtyq.put(seq, hash);
    const t = this.dirtyStats();
    this.writeDirtyTotals(t.blocks + 1, t.bytes + length);
  }

  private unmarkDirty(txn: WriteTxn, hash: Buffer, length: number): boolean {
    txn.assertOpen();
    const seq = this.dirty.getBinary(hash);
    if (!seq) return false;
    this.dirtyq.remove(seq);
    this.dirty.remove(hash);
    const t = this.dirtyStats();
    this.writeDirtyTotals(t.blocks - 1, t.bytes - length);
    return true;
  }

  /** Blocks not yet on the remote, and their decoded bytes. */
  dirtyStats(): { blocks: number; bytes: number } {
    const raw = readFast(this.store.env.info, DIRTY_KEY);
    if (!raw || raw.length !== 16) return { blocks: 0, bytes: 0 };
    return { blocks: Number(raw.readBigUInt64LE(0)), bytes: Number(raw.readBigUInt64LE(8)) };
  }

  private writeDirtyTotals(blocks: number, bytes: number): void {
    const raw = Buffer.alloc(16);
    raw.writeBigUInt64LE(BigInt(Math.max(0, blocks)), 0);
    raw.writeBigUInt64LE(BigInt(Math.max(0, bytes)), 8);
    this.store.env.info.put(DIRTY_KEY, raw);
  }

  isDirty(hash: Buffer): boolean {
    return this.dirty.doesExist(hash);
  }

  /** Up to `limit` dirty blocks, oldest first, starting after sequence number `after`. */
  dirtyBlocks(limit: number, after = -1): DirtyBlock[] {
    const out: DirtyBlock[] = [];
    for (const { key, value } of this.dirtyq.getRange({ start: u64Key(after + 1), limit })) out.push({ seq: u64KeyValue(key), hash: Buffer.from(value) });
    return out;
  }

  /** The blocks are on the remote now (their pack's rows are durable): they may be evicted. */
  async markClean(hashes: readonly Buffer[]): Promise<void> {
    if (hashes.length === 0) return;
    await this.store.env.durableWrite((txn) => {
      for (const hash of hashes) {
        const value = readFast(this.blocks, hash);
        const raw = value && value.length >= BLOCK_HEADER_SIZE ? value.readUInt32LE(4) : 0;
        this.unmarkDirty(txn, hash, raw);
      }
    });
  }

  /** Marks blocks dirty again so the uploader writes them into a new pack (repacking the remote). */
  async markDirtyAgain(hashes: readonly Buffer[]): Promise<number> {
    if (hashes.length === 0) return 0;
    return this.store.env.durableWrite((txn) => {
      let n = 0;
      for (const hash of hashes) {
        const value = readFast(this.blocks, hash);
        if (!value || this.dirty.doesExist(hash)) continue;
        this.markDirty(txn, hash, value.readUInt32LE(4));
        n++;
      }
      return n;
    });
  }

  /** The stored value of a block, or of the super-chunk holding it, with that value's members (for a pack). */
  uploadUnit(hash: Buffer): UploadUnit | undefined {
    const value = this.blocks.getBinary(hash);
    if (!value) return undefined;
    if (!isLocator(value)) {
      const copy = Buffer.from(value);
      return { key: `b${hash.toString('hex')}`, value: copy, members: [{ hash, blockOffset: 0, length: copy.readUInt32LE(4) }] };
    }
    const loc = decodeLocator(value);
    const chunk = this.store.superChunks.value(loc.chunk);
    if (!chunk) return undefined;
    const members = this.store.superChunks.liveMembers(loc.chunk).map((m) => ({ hash: m.hash, blockOffset: m.offset, length: m.length }));
    return { key: `c${loc.chunk}`, value: chunk, members };
  }

  /** What holds a block locally, for the evictor's bookkeeping: its super-chunk, or the block itself. */
  holderOf(hash: Buffer): Evictable | undefined {
    const value = readFast(this.blocks, hash);
    if (!value) return undefined;
    if (!isLocator(value)) return { hash };
    try {
      return { chunk: decodeLocator(value).chunk };
    } catch {
      return undefined;
    }
  }

  /**
   * Gives up local copies of blocks that are on the remote: loose blocks, or super-chunks
   * with every block pointing into them. Skips anything dirty (DESIGN invariant 4) and
   * anything that changed shape meanwhile. Reference counts stay: the blocks are still
   * referenced, their bytes now live only in their packs. Returns the stored bytes freed.
   */
  async evict(items: readonly Evictable[]): Promise<number> {
    if (items.length === 0) return 0;
    const chunks = this.store.superChunks;
    return this.store.env.write((txn) => {
      const totals = this.store.env.totals();
      let freed = 0;
      for (const item of items) {
        if ('hash' in item) {
          if (this.dirty.doesExist(item.hash)) continue;
          freed += this.store.forgetLoose(txn, item.hash, totals);
          continue;
        }
        const inside = chunks.liveMembers(item.chunk);
        if (inside.some((m) => this.dirty.doesExist(m.hash))) continue;
        freed += chunks.forget(txn, item.chunk, inside, totals);
      }
      this.store.env.setTotals(txn, totals);
      return freed;
    });
  }
}
