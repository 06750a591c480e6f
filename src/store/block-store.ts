import { randomUUID } from 'node:crypto';
import { blockMatches, decodeVerified } from './block-verify';
import {
  BLOCK_HEADER_SIZE,
  Codec,
  decodeBlock,
  decodeHeader,
  decodeLocator,
  encodeBlock,
  encodeBlockAsync,
  isLocator,
  kindName,
  rawValue,
  type EncodeOptions,
  type Locator,
} from './codec';
import type { ChunkCache, ChunkCacheStats } from './chunk-cache';
import { StoreEnv, readFast, type BlockStoreStats, type StoreEnvHook, type Table, type WriteTxn } from './store-env';
import { DEFAULT_CHUNK_CACHE_BYTES, SuperChunks, copyRange, type BlockRead, type ChunkMember } from './super-chunks';
import { DEFAULT_ZSTD_LEVEL } from './zstd';

export type { BlockRead } from './super-chunks';
export type { BlockStoreStats } from './store-env';

/**
 * One block to take a reference on: its key and, in case the store lacks it, its bytes.
 * Without bytes (a copy by reference of a block some file already holds) the block must
 * be known to the store: taking a reference on one that is gone fails the batch.
 */
export interface BlockToStore {
  hash: Buffer;
  data?: Buffer;
  /** The value to store if the store lacks the block, encoded beforehand (BlockStore.encodeAhead). */
  value?: Buffer;
}

export interface BlockStoreOptions {
  readOnly?: boolean;
  /** The codec new values are written with (encodeBlock stores raw what does not compress). */
  codec?: Codec;
  /** zstd's level, with Codec.Zstd (default DEFAULT_ZSTD_LEVEL). */
  zstdLevel?: number;
  /**
   * Blocks shorter than this are packed into super-chunks (0: never). They are stored raw
   * at first, queued, and packed by the SuperChunkPacker within seconds; only with a
   * compressing codec.
   */
  packBelow?: number;
  /** Decoded super-chunks kept in memory (bytes). */
  chunkCacheBytes?: number;
}

/** Values of one kind (codec.ts kindName: raw, lz4, zstd; locators are counted apart) and their stored bytes. */
export interface KindCount {
  values: number;
  storedBytes: number;
  /** Decoded bytes they hold. */
  rawBytes: number;
}

/** What the store holds, by codec: loose blocks and super-chunks apart (see BlockStore.codecMix). */
export interface CodecMix {
  loose: Record<string, KindCount>;
  superChunks: Record<string, KindCount>;
  /** Blocks inside super-chunks (their locators). */
  locators: number;
}

/** Where to read a block from: the store itself, or the remote cache in front of it. */
export interface BlockSource {
  read(hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead | Promise<BlockRead>;
}

/**
 * Bookkeeping kept beside the blocks in the same environment (the remote cache's ledger of
 * what is not uploaded yet), told inside the store's own write transactions so that it
 * commits with them or not at all.
 */
export interface StoreLedger {
  /** A block the store lacked was just stored (`length`: its decoded bytes). */
  stored(txn: WriteTxn, hash: Buffer, length: number): void;
  /** A block's value is being deleted for good (its last reference went, or gc dropped it). */
  removed(txn: WriteTxn, hash: Buffer, length: number): void;
}

const INSTANCE_KEY = Buffer.from('instance');
const REMOTE_KEY = Buffer.from('remote');
/** The last block parked in the metadata that the store took (see parkedSeq). */
const PARKED_KEY = Buffer.from('parked');
/** Marks of tree operations whose reference step is done, by operation id. */
const TREE_OP_PREFIX = Buffer.from('tree-op:');

function treeOpKey(op: number): Buffer {
  const key = Buffer.alloc(TREE_OP_PREFIX.length + 8);
  TREE_OP_PREFIX.copy(key);
  key.writeBigUInt64BE(BigInt(op), TREE_OP_PREFIX.length);
  return key;
}

/**
 * Content-addressed blocks in LMDB with reference counts: the core of the store.
 *
 * Sub-databases of one environment (one file, one transaction for all; StoreEnv):
 *  - `blocks`: BLAKE3 digest → value (codec.ts): the bytes of a loose block (raw, LZ4 or
 *              zstd), or a locator into a super-chunk (SuperChunks owns those tables);
 *  - `refs`:   digest → uint32 reference count. Counts live apart from the bytes so that
 *              taking or dropping a reference never rewrites a 128 KiB value;
 *  - `info`:   running totals (so `stats` costs one read), this copy's identity and its
 *              remote; other parts keep their own small records there too.
 * The remote cache's ledger (src/cache/cache-ledger.ts) keeps `dirty` and `dirtyq` in the
 * same environment and is told of stored and deleted blocks inside these transactions.
 *
 * With a remote, the store is a cache: a block may be referenced (counted in `refs`)
 * without being held here, its bytes living only in a pack on the remote.
 *
 * Counts are only ever too high after a crash, never too low: callers take references
 * (and wait for durability) before committing metadata that points at a block, and drop
 * them only after the metadata that released it is durable. fsck recounts from the index.
 */
export class BlockStore implements BlockSource {
  private readonly lmdb: StoreEnv;
  private readonly blocks: Table;
  private readonly refs: Table;
  readonly superChunks: SuperChunks;
  private ledger: StoreLedger | undefined;
  /** The codec new values are written with. */
  codec: Codec;
  /** zstd's level for new values (with Codec.Zstd). */
  zstdLevel: number;
  /** Blocks shorter than this wait to be packed into super-chunks (0: super-chunks off). */
  packBelow: number;
  /**
   * A volume several machines share through its remote: a reference may be taken on a
   * block this store never held (a copy by reference of a file another machine wrote), as
   * on an evicted one. Its bytes are on the remote: every block a row references was
   * uploaded and published before the row was committed (see Volume.sharesBlocks).
   */
  referencesOnRemote = false;
  /** Told after a commit queued short blocks for packing (the SuperChunkPacker listens). */
  onQueued: ((bytes: number) => void) | undefined;
  /**
   * Told after a commit stored new blocks or queued short ones for packing (the remote
   * cache listens: uploads, eviction). Queued ones count: they are writing going on, and
   * the uploader must not take a pause in stored blocks for the end of the writing.
   */
  onStored: (() => void) | undefined;

  private constructor(
    readonly path: string,
    readOnly: boolean,
    options: BlockStoreOptions,
  ) {
    this.codec = options.codec ?? Codec.Raw;
    this.zstdLevel = options.zstdLevel ?? DEFAULT_ZSTD_LEVEL;
    this.packBelow = options.packBelow ?? 0;
    this.lmdb = new StoreEnv(path, readOnly);
    this.blocks = this.lmdb.table('blocks');
    this.refs = this.lmdb.table('refs');
    this.superChunks = new SuperChunks(this.lmdb, this.blocks, (hash) => this.refCount(hash), options.chunkCacheBytes ?? DEFAULT_CHUNK_CACHE_BYTES);
    if (!readOnly && !this.lmdb.info.doesExist(INSTANCE_KEY)) this.lmdb.info.putSync(INSTANCE_KEY, Buffer.from(randomUUID()));
  }

  static open(path: string, options: BlockStoreOptions = {}): BlockStore {
    return new BlockStore(path, options.readOnly ?? false, options);
  }

  /** The environment, as the parts of the store kept in other modules (ledger, repair, file checks) use it. */
  get env(): StoreEnvHook {
    return this.lmdb;
  }

  /** Joins a ledger to the store's transactions (one at most: the remote cache's). */
  attachLedger(ledger: StoreLedger): void {
    if (this.ledger && this.ledger !== ledger) throw new Error('the block store already has a ledger');
    this.ledger = ledger;
  }

  /** The decoded super-chunks kept in memory. */
  get chunkCache(): ChunkCache {
    return this.superChunks.cache;
  }

  /** True when a new block of this length goes to the packing queue rather than being encoded alone. */
  private packs(length: number): boolean {
    return this.packBelow > 0 && this.codec !== Codec.Raw && length > 0 && length < this.packBelow;
  }

  /** How encodeBlock(Async) is to compress new values for this store (the zstd level). */
  encodeOptions(): EncodeOptions {
    return { level: this.zstdLevel };
  }

  /**
   * Starts encoding a block the store would compress alone, on libuv's thread pool, so
   * the caller (the block writer, on the thread that serves every FUSE request) can hand
   * the value to `acquire` with the block. Undefined when there is nothing to encode
   * ahead: no compression, a short block bound for a super-chunk, or a block held already.
   */
  encodeAhead(hash: Buffer, data: Buffer): Promise<Buffer> | undefined {
    if (this.codec === Codec.Raw || this.packs(data.length) || this.blocks.doesExist(hash)) return undefined;
    return encodeBlockAsync(data, this.codec, this.encodeOptions());
  }

  /**
   * Takes one reference on each block, storing the bytes of those the store lacks.
   * Resolves once the change is durable on disk, so metadata may then point at them.
   */
  async acquire(items: readonly BlockToStore[], parkedSeq?: number): Promise<void> {
    if (items.length === 0) return;
    await this.lmdb.reusableFirst();
    const r = await this.lmdb.durableWrite((txn) => this.takeReferences(txn, items, parkedSeq));
    this.afterStore(r);
  }

  /**
   * `acquire` done on the calling thread: durable when it returns. For a few small
   * blocks (a file being closed) this saves the hand-offs to and from LMDB's writer
   * thread, about a quarter of a millisecond per commit here; large batches should use
   * `acquire`, which does not block the caller while the disk writes.
   */
  acquireSync(items: readonly BlockToStore[], parkedSeq?: number): void {
    if (items.length === 0) return;
    this.afterStore(this.lmdb.writeSync((txn) => this.takeReferences(txn, items, parkedSeq)));
  }

  /**
   * The sequence number of the last block parked in the metadata that this store took
   * (0: none). `acquire` with a `parkedSeq` records it in the same transaction as the
   * references, so a parked block is taken exactly once, whatever crashes in between.
   */
  parkedSeq(): number {
    const raw = readFast(this.lmdb.info, PARKED_KEY);
    return raw && raw.length === 8 ? Number(raw.readBigUInt64LE(0)) : 0;
  }

  private afterStore(r: { queued: number; stored: number }): void {
    if (r.queued > 0) this.onQueued?.(r.queued);
    if (r.stored > 0 || r.queued > 0) this.onStored?.();
  }

  /** Returns the bytes queued for packing and the number of blocks newly stored. */
  private takeReferences(txn: WriteTxn, items: readonly BlockToStore[], parkedSeq?: number): { queued: number; stored: number } {
    if (parkedSeq !== undefined) {
      const raw = Buffer.alloc(8);
      raw.writeBigUInt64LE(BigInt(parkedSeq), 0);
      this.lmdb.info.put(PARKED_KEY, raw);
    }
    const totals = this.lmdb.totals();
    let queued = 0;
    let stored = 0;
    for (const { hash, data, value: encoded } of items) {
      const count = this.refCount(hash);
      if (count === 0 && !this.blocks.doesExist(hash) && !(data === undefined && this.referencesOnRemote)) {
        // Never a reference to bytes nobody has (DESIGN invariant 1).
        if (!data) throw new Error(`block ${hash.toString('hex')} was to be shared by reference but is no longer stored`);
        let value: Buffer;
        if (this.packs(data.length)) {
          // Stored raw for now (durable at once, no compression on this path); the
          // packer compresses it together with its neighbours shortly.
          value = rawValue(data);
          this.superChunks.enqueue(txn, hash);
          queued += data.length;
        } else value = encoded ?? encodeBlock(data, this.codec, this.encodeOptions());
        this.blocks.put(hash, value);
        totals.blocks += 1;
        totals.uniqueBytes += data.length;
        totals.storedBytes += value.length;
        this.ledger?.stored(txn, hash, data.length);
        stored++;
      }
      this.refs.put(hash, encodeRefCount(count + 1));
      totals.references += 1;
    }
    this.lmdb.setTotals(txn, totals);
    return { queued, stored };
  }

  /** Drops one reference per listed hash (a hash may repeat); a block at zero is deleted. */
  async release(hashes: readonly Buffer[]): Promise<void> {
    if (hashes.length === 0) return;
    await this.lmdb.write((txn) => {
      const totals = this.lmdb.totals();
      for (const hash of hashes) this.dropReferences(txn, hash, 1, totals);
      this.lmdb.setTotals(txn, totals);
    });
    await this.lmdb.reusableFirst();
    await this.lmdb.synced();
  }

  /** Drops `n` references on `hash`, deleting the block when none is left. */
  private dropReferences(txn: WriteTxn, hash: Buffer, n: number, totals: BlockStoreStats): void {
    const count = this.refCount(hash);
    if (count === 0) return; // already gone: a leak repaired by fsck, never an error here
    const dropped = Math.min(n, count);
    totals.references -= dropped;
    if (count > dropped) {
      this.refs.put(hash, encodeRefCount(count - dropped));
      return;
    }
    this.refs.remove(hash);
    this.removeBlock(txn, hash, totals);
  }

  /**
   * Takes (`delta` 1) or drops (-1) the counted references of a tree operation (a clone,
   * a snapshot's removal: src/vfs/tree-ops.ts) in one durable transaction on the calling
   * thread, setting (`mark`) or clearing the operation's mark in the same transaction:
   * after a crash, the mark says whether this step happened. Taking a reference on a block the store no longer has throws,
   * and then nothing is changed.
   */
  changeReferencesMarked(op: number, delta: 1 | -1, counts: readonly { hash: Buffer; n: number }[], mark: boolean): void {
    this.lmdb.writeSync((txn) => {
      const totals = this.lmdb.totals();
      for (const { hash, n } of counts) {
        if (delta < 0) {
          this.dropReferences(txn, hash, n, totals);
          continue;
        }
        const count = this.refCount(hash);
        if (count === 0 && !this.blocks.doesExist(hash)) throw new Error(`block ${hash.toString('hex')} was to be shared by reference but is no longer stored`);
        this.refs.put(hash, encodeRefCount(count + n));
        totals.references += n;
      }
      this.lmdb.setTotals(txn, totals);
      if (mark) this.lmdb.info.put(treeOpKey(op), Buffer.from([1]));
      else this.lmdb.info.remove(treeOpKey(op));
    });
  }

  /** True when the tree operation's reference step is done (its mark is set). */
  hasTreeOpMark(op: number): boolean {
    return this.lmdb.info.doesExist(treeOpKey(op));
  }

  /** Forgets a finished tree operation's mark (durable on return). */
  clearTreeOpMark(op: number): void {
    this.lmdb.writeSync(() => {
      this.lmdb.info.remove(treeOpKey(op));
    });
  }

  /** The tree operations with a mark set. */
  treeOpMarks(): number[] {
    const marks: number[] = [];
    for (const { key } of this.lmdb.info.getRange({ start: TREE_OP_PREFIX, end: Buffer.concat([TREE_OP_PREFIX, Buffer.from([0xff])]) })) {
      marks.push(Number((key as Buffer).readBigUInt64BE(TREE_OP_PREFIX.length)));
    }
    return marks;
  }

  /**
   * Deletes a block's value (for a locator, also its share of the super-chunk, and the
   * chunk itself when it was its last block) and takes it out of `totals`; its reference
   * count stays. Returns what went, or undefined when the block was absent.
   */
  removeBlock(txn: WriteTxn, hash: Buffer, totals: BlockStoreStats): { stored: number; raw: number } | undefined {
    txn.assertOpen();
    // Everything is read out of the value before any other get: getBinaryFast hands out
    // one shared buffer that the next get overwrites.
    const value = readFast(this.blocks, hash);
    if (!value) return undefined;
    const valueLength = value.length;
    let raw = 0;
    try {
      raw = decodeHeader(value).rawLength;
    } catch {
      raw = Math.max(0, valueLength - BLOCK_HEADER_SIZE);
    }
    let loc: Locator | undefined;
    if (isLocator(value)) {
      try {
        loc = decodeLocator(value);
      } catch {
        loc = undefined;
      }
    }
    let stored = valueLength;
    if (loc) stored += this.superChunks.releaseBlock(txn, loc.chunk, loc.length, totals);
    this.ledger?.removed(txn, hash, raw);
    totals.blocks -= 1;
    totals.storedBytes -= valueLength;
    totals.uniqueBytes -= raw;
    this.blocks.remove(hash);
    this.lmdb.freed(txn);
    return { stored, raw };
  }

  /**
   * Gives up the local copy of a loose block whose bytes live on the remote, counted out of
   * `totals`; its reference count stays. Returns the stored bytes freed (0: absent or not loose).
   */
  forgetLoose(txn: WriteTxn, hash: Buffer, totals: BlockStoreStats): number {
    txn.assertOpen();
    const value = readFast(this.blocks, hash);
    if (!value || isLocator(value)) return 0;
    const length = value.length;
    const raw = value.readUInt32LE(4);
    this.blocks.remove(hash);
    this.lmdb.freed(txn);
    totals.blocks -= 1;
    totals.uniqueBytes -= raw;
    totals.storedBytes -= length;
    return length;
  }

  /** The decoded bytes of a block (a private copy, not verified), or undefined when absent. Decodes super-chunks on this thread. */
  get(hash: Buffer): Buffer | undefined {
    const value = this.blocks.getBinary(hash);
    if (!value) return undefined;
    if (!isLocator(value)) return Buffer.from(decodeBlock(value));
    return this.superChunks.bytesAt(decodeLocator(value));
  }

  /** `get`, keeping only bytes that match their key: undefined when absent, unreadable or wrong. */
  getVerified(hash: Buffer): Buffer | undefined {
    let data: Buffer | undefined;
    try {
      data = this.get(hash);
    } catch {
      return undefined;
    }
    return data && blockMatches(data, hash) ? data : undefined;
  }

  /** The verified bytes of a loose block (a private copy), or undefined when it is absent, packed already or corrupt. */
  looseVerified(hash: Buffer): Buffer | undefined {
    const value = readFast(this.blocks, hash);
    if (!value || isLocator(value)) return undefined;
    try {
      return Buffer.from(decodeVerified(value, hash));
    } catch {
      return undefined;
    }
  }

  /**
   * Copies `length` bytes starting at `from` within the block into `target` at `at`,
   * verified against the block's hash; bytes past the block's end read as zeros. A
   * block inside a super-chunk that is not in the chunk cache answers with a promise
   * (the chunk is decompressed off this thread); everything else answers at once.
   */
  read(hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead | Promise<BlockRead> {
    const value = readFast(this.blocks, hash);
    if (!value) return 'missing';
    if (isLocator(value)) {
      let loc: Locator;
      try {
        loc = decodeLocator(value);
      } catch {
        return 'corrupt';
      }
      return this.superChunks.read(loc, hash, from, length, target, at);
    }
    // DESIGN invariant 2: wrong bytes are never served. Re-hashing a 128 KiB block costs
    // about 37 us here; the kernel's page cache keeps repeated reads from paying it.
    let data: Buffer;
    try {
      data = decodeVerified(value, hash);
    } catch {
      return 'corrupt';
    }
    copyRange(data, from, length, target, at);
    return 'ok';
  }

  has(hash: Buffer): boolean {
    return this.blocks.doesExist(hash);
  }

  refCount(hash: Buffer): number {
    const value = readFast(this.refs, hash);
    return value && value.length === 4 ? value.readUInt32LE(0) : 0;
  }

  stats(): BlockStoreStats {
    return this.lmdb.totals();
  }

  /**
   * This local copy's identity: made when the store is created, so a volume restored on
   * another machine (a new store) is another owner of the remote's writer lock.
   */
  instanceId(): string {
    return this.lmdb.info.getBinary(INSTANCE_KEY)?.toString() ?? 'unknown';
  }

  /**
   * The volume's remote, kept here as well as in the metadata database: when that database
   * is lost, this names where to rebuild it from.
   */
  rememberRemote(spec: string): void {
    if (this.rememberedRemote() !== spec) this.lmdb.info.putSync(REMOTE_KEY, Buffer.from(spec));
  }

  rememberedRemote(): string | undefined {
    return this.lmdb.info.getBinary(REMOTE_KEY)?.toString() || undefined;
  }

  /** Super-chunks held and the chunk cache's state. */
  chunkStats(): { chunks: number; queuedBlocks: number; cache: ChunkCacheStats } {
    return { ...this.superChunks.counts(), cache: this.chunkCache.stats() };
  }

  /** Waits until every write issued so far is committed and durable. */
  async flushed(): Promise<void> {
    await this.lmdb.flushed();
  }

  async close(): Promise<void> {
    await this.lmdb.close();
  }

  /**
   * Stores a value fetched from the remote (already verified by the caller): a loose block
   * as it is, or a super-chunk with locators for its members. Only members still
   * referenced and absent here are taken; nothing becomes dirty (it is on the remote).
   * With `unreferenced`, members absent here are taken whether or not this store counts a
   * reference to them: a volume several machines share reads blocks the rows of another
   * machine reference (their count here stays 0, so releasing them later is a no-op, and
   * eviction gives them up as any clean block).
   */
  async installFetched(value: Buffer, members: readonly { hash: Buffer; blockOffset: number; length: number }[], unreferenced = false): Promise<number> {
    return this.lmdb.write((txn) => {
      const totals = this.lmdb.totals();
      const wanted = members.filter((m) => (unreferenced || this.refCount(m.hash) > 0) && !this.blocks.doesExist(m.hash));
      if (wanted.length === 0) return 0;
      const loose = !isLocator(value) && members.length === 1 && members[0].blockOffset === 0 && value.readUInt32LE(4) === members[0].length;
      if (loose) {
        this.blocks.put(wanted[0].hash, value);
        totals.blocks += 1;
        totals.uniqueBytes += wanted[0].length;
        totals.storedBytes += value.length;
        this.lmdb.setTotals(txn, totals);
        return 1;
      }
      const placed: ChunkMember[] = wanted.map((m) => ({ hash: m.hash, offset: m.blockOffset, length: m.length }));
      const n = this.superChunks.installFetched(txn, value, placed, totals);
      this.lmdb.setTotals(txn, totals);
      return n;
    });
  }

  // ---- Whole-store scans (fsck, gc, stats, eviction). ----

  /** Stored blocks in key order with their raw values (header included); each value is a private copy. */
  *scanValues(): Generator<{ hash: Buffer; value: Buffer }> {
    for (const { key, value } of this.blocks.getRange({})) yield { hash: key, value };
  }

  /** Up to `limit` stored block keys from `start` on (inclusive), in key order. */
  *scanHashesFrom(start: Buffer | undefined, limit: number): Generator<Buffer> {
    for (const key of this.blocks.getKeys(start ? { start, limit } : { limit })) yield key;
  }

  /** Stored block keys in key order, without reading the values. */
  *scanHashes(): Generator<Buffer> {
    for (const key of this.blocks.getKeys({})) yield key;
  }

  /** Every reference-count entry; `count` is undefined when the entry is malformed (not 4 bytes). */
  *scanRefCounts(): Generator<{ hash: Buffer; count: number | undefined }> {
    for (const { key, value } of this.refs.getRange({})) {
      yield { hash: key, count: value.length === 4 ? value.readUInt32LE(0) : undefined };
    }
  }

  /**
   * Loose blocks and super-chunks counted by codec, from each value's header. A scan of the
   * whole store (LMDB copies each value out: about 0.15 s per GiB held in the page cache),
   * so `stats` pays it, not the write path: no running per-codec totals to keep right.
   */
  codecMix(): CodecMix {
    const mix: CodecMix = { loose: {}, superChunks: {}, locators: 0 };
    const add = (into: Record<string, KindCount>, value: Buffer) => {
      const kind = value.length >= BLOCK_HEADER_SIZE ? kindName(value[1]) : 'malformed';
      const c = (into[kind] ??= { values: 0, storedBytes: 0, rawBytes: 0 });
      c.values++;
      c.storedBytes += value.length;
      c.rawBytes += value.length >= BLOCK_HEADER_SIZE ? value.readUInt32LE(4) : 0;
    };
    for (const key of this.blocks.getKeys({})) {
      const value = readFast(this.blocks, key);
      if (!value) continue;
      if (isLocator(value)) mix.locators++;
      else add(mix.loose, value);
    }
    for (const value of this.superChunks.scanFast()) add(mix.superChunks, value);
    return mix;
  }

  /** Number of stored blocks, from LMDB's own statistics (no scan). */
  blockCount(): number {
    return (this.blocks.getStats() as { entryCount: number }).entryCount;
  }

  /** The raw stored value (header included) as a private copy, or undefined when absent. */
  rawValue(hash: Buffer): Buffer | undefined {
    const value = this.blocks.getBinary(hash);
    return value ? Buffer.from(value) : undefined;
  }
}

/** A reference count's stored form (uint32 little-endian). */
export function encodeRefCount(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n, 0);
  return b;
}
