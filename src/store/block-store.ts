import { open, type RootDatabase, type Database } from 'lmdb';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, statSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { hashBlock } from './hash';
import { ChunkCache, type ChunkCacheStats, type DecodedChunk } from './chunk-cache';
import {
  BLOCK_HEADER_SIZE,
  Codec,
  LOCATOR_SIZE,
  decodeBlock,
  decodeBlockAsync,
  decodeHeader,
  decodeLocator,
  encodeBlock,
  encodeLocator,
  isLocator,
  kindName,
  rawValue,
  type EncodeOptions,
  type Locator,
} from './codec';
import { DEFAULT_ZSTD_LEVEL } from './zstd';

/** What reading a block found: its verified bytes, nothing, or bytes that fail their hash. */
export type BlockRead = 'ok' | 'missing' | 'corrupt';

/**
 * One block to take a reference on: its key and, in case the store lacks it, its bytes.
 * Without bytes (a copy by reference of a block some file already holds) the block must
 * be known to the store: taking a reference on one that is gone fails the batch.
 */
export interface BlockToStore {
  hash: Buffer;
  data?: Buffer;
  /** The value to store if the store lacks the block, encoded beforehand (off the JS thread). */
  value?: Buffer;
}

export interface BlockStoreStats {
  /** Distinct blocks held. */
  blocks: number;
  /** Sum of the decoded lengths of those blocks. */
  uniqueBytes: number;
  /** Sum of the stored value sizes: loose values, locators and super-chunks, headers included. */
  storedBytes: number;
  /** Sum of all reference counts. */
  references: number;
}

/** The bookkeeping of one super-chunk. */
export interface ChunkInfo {
  /** Blocks whose locator points into it. */
  liveBlocks: number;
  /** Their decoded bytes. */
  liveBytes: number;
  /** Decoded bytes of the whole chunk (live and dead blocks). */
  totalBytes: number;
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
  /** Keep track of blocks not yet on the remote (a volume with a remote). */
  trackDirty?: boolean;
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

/** A block waiting for upload, in the order blocks were stored. */
export interface DirtyBlock {
  seq: number;
  hash: Buffer;
}

/** Something the local store can give up once it is on the remote: a loose block or a whole super-chunk. */
export type Evictable = { hash: Buffer } | { chunk: number };

/** A block inside a super-chunk: where its bytes sit in the chunk's decoded bytes. */
export interface ChunkMember {
  hash: Buffer;
  offset: number;
  length: number;
}

/** A short block stored loose and waiting to be packed into a super-chunk. */
export interface QueuedBlock {
  seq: number;
  hash: Buffer;
}

/**
 * A value read without a copy. getBinaryFast hands out a view of LMDB's shared read
 * buffer whose `length` lmdb-js sets by hand; Node 24's subarray ignores that and runs to
 * the end of the 16 MiB shared buffer (every block then failed its hash check). A plain
 * view of exactly the value, still without a copy, slices right on every Node.
 */
function readFast(db: Database<Buffer, Buffer>, key: Buffer): Buffer | undefined {
  const v = db.getBinaryFast(key);
  return v ? Buffer.from(v.buffer, v.byteOffset, v.length) : undefined;
}

const STATS_KEY = Buffer.from('stats');
const NEXT_CHUNK_KEY = Buffer.from('next-chunk');
const DIRTY_KEY = Buffer.from('dirty');
const INSTANCE_KEY = Buffer.from('instance');
const REMOTE_KEY = Buffer.from('remote');
/** Prefix of the `info` keys that mark known-damaged blocks (see BlockStore.markDamaged). */
const DAMAGED_PREFIX = Buffer.from('damaged/');
export const DEFAULT_CHUNK_CACHE_BYTES = 64 * 1024 * 1024;

/** Page usage of the LMDB file (see BlockStore.space). */
export interface StoreSpace {
  pageSize: number;
  /** Size of data.mdb on disk. */
  fileBytes: number;
  /** Bytes in pages some tree (or a meta page) holds. */
  usedBytes: number;
  /** Bytes in free pages inside the file: reused by later writes, given back only by compaction. */
  freeBytes: number;
  /** Pages of the `blocks` sub-database (leaf, branch and overflow). */
  blockPages: number;
}

/** What the LMDB file's own header says, read with plain file reads (no memory map). */
export interface StoreFileCheck {
  /** Undefined when the file looks whole; otherwise why it cannot be opened safely. */
  problem?: string;
  fileBytes: number;
  pageSize: number;
  /** Bytes the last committed transaction needs the file to hold. */
  neededBytes: number;
}

const LMDB_MAGIC = 0xbeefc0de;

/**
 * Checks `dir`/data.mdb before anything maps it: LMDB maps the whole file, and touching a
 * page past a truncated end kills the process with SIGBUS, so a truncated or foreign file
 * must be recognised from its two meta pages first. Layout (LMDB 1.x as built by lmdb-js):
 * 24-byte page header, then magic u32, version u32, address u64, mapsize u64, two 48-byte
 * tree records (the first one's first u32 is the page size), last page u64, txnid u64.
 */
export function checkStoreFile(dir: string): StoreFileCheck {
  const path = join(dir, 'data.mdb');
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    return { problem: `cannot open ${path}: ${(err as Error).message}`, fileBytes: 0, pageSize: 0, neededBytes: 0 };
  }
  try {
    const fileBytes = fstatSync(fd).size;
    const first = Buffer.alloc(160);
    const n = readSync(fd, first, 0, first.length, 0);
    const meta = (buf: Buffer) => ({
      magic: buf.readUInt32LE(24),
      pageSize: buf.readUInt32LE(48),
      lastPage: Number(buf.readBigUInt64LE(144)),
      txnid: buf.readBigUInt64LE(152),
    });
    if (n < first.length || meta(first).magic !== LMDB_MAGIC) {
      return { problem: `${path} is not an LMDB file (bad or missing header; ${fileBytes} bytes)`, fileBytes, pageSize: 0, neededBytes: 0 };
    }
    const m0 = meta(first);
    const pageSize = m0.pageSize;
    if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) {
      return { problem: `${path} has an invalid page size ${pageSize}`, fileBytes, pageSize, neededBytes: 0 };
    }
    const second = Buffer.alloc(160);
    const n2 = readSync(fd, second, 0, second.length, pageSize);
    let best = m0;
    if (n2 === second.length) {
      const m1 = meta(second);
      if (m1.magic === LMDB_MAGIC && m1.txnid > m0.txnid) best = m1;
    }
    const neededBytes = (best.lastPage + 1) * pageSize;
    if (fileBytes < 2 * pageSize || fileBytes < neededBytes) {
      return {
        problem: `${path} is truncated: ${fileBytes} bytes, but its last committed transaction uses ${neededBytes}`,
        fileBytes,
        pageSize,
        neededBytes,
      };
    }
    return { fileBytes, pageSize, neededBytes };
  } finally {
    closeSync(fd);
  }
}

/**
 * Content-addressed blocks in LMDB with reference counts.
 *
 * Sub-databases of one environment (one file, one transaction for all):
 *  - `blocks`:    BLAKE3 digest → value (codec.ts): the bytes of a loose block (raw,
 *                 LZ4 or zstd), or a locator into a super-chunk;
 *  - `refs`:      digest → uint32 reference count. Counts live apart from the bytes so that
 *                 taking or dropping a reference never rewrites a 128 KiB value;
 *  - `chunks`:    chunk id (u64 big-endian) → a super-chunk: many short blocks, concatenated
 *                 and compressed as one unit (a raw, LZ4 or zstd value);
 *  - `chunkinfo`: chunk id → live blocks, live bytes, total bytes: a chunk goes when its
 *                 last block does, and gc repacks the ones mostly dead;
 *  - `chunkdir`:  chunk id → the blocks packed into it (digest, offset, length), written
 *                 once: what repacking and uploading a chunk start from;
 *  - `unpacked`:  sequence number → digest of a short block stored loose that waits to be
 *                 packed (in write order, so files written together are packed together);
 *  - `dirty`, `dirtyq`: with a remote, the blocks not uploaded yet (digest → sequence
 *                 number, and sequence number → digest: upload in write order). A dirty
 *                 block is never evicted (DESIGN invariant 4);
 *  - `info`:      running totals (so `stats` costs one read), dirty totals, the next chunk
 *                 id, and the blocks fsck recorded as damaged.
 *
 * With a remote, the store is a cache: a block may be referenced (counted in `refs`)
 * without being held here, its bytes living only in a pack on the remote.
 *
 * Counts are only ever too high after a crash, never too low: callers take references
 * (and wait for durability) before committing metadata that points at a block, and drop
 * them only after the metadata that released it is durable. fsck recounts from the index.
 */
export class BlockStore implements BlockSource {
  private readonly env: RootDatabase<Buffer, Buffer>;
  private readonly blocks: Database<Buffer, Buffer>;
  private readonly refs: Database<Buffer, Buffer>;
  private readonly chunks: Database<Buffer, Buffer>;
  private readonly chunkinfo: Database<Buffer, Buffer>;
  private readonly chunkdir: Database<Buffer, Buffer>;
  private readonly unpacked: Database<Buffer, Buffer>;
  private readonly dirty: Database<Buffer, Buffer>;
  private readonly dirtyq: Database<Buffer, Buffer>;
  private readonly info: Database<Buffer, Buffer>;
  private readonly trackDirty: boolean;
  private nextDirtySeq = 0;
  /** The codec new values are written with. */
  codec: Codec;
  /** zstd's level for new values (with Codec.Zstd). */
  zstdLevel: number;
  /** Blocks shorter than this wait to be packed into super-chunks (0: super-chunks off). */
  packBelow: number;
  readonly chunkCache: ChunkCache;
  private nextSeq = 0;
  /**
   * A transaction deleted values: LMDB hands their pages only to transactions after the
   * next one, so a small commit goes first before a large batch (see reusableFirst).
   */
  private pagesFreed = false;
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
    this.trackDirty = options.trackDirty ?? false;
    this.packBelow = options.packBelow ?? 0;
    this.chunkCache = new ChunkCache(options.chunkCacheBytes ?? DEFAULT_CHUNK_CACHE_BYTES);
    mkdirSync(path, { recursive: true });
    this.env = open<Buffer, Buffer>({
      path,
      maxDbs: 12,
      encoding: 'binary',
      keyEncoding: 'binary',
      compression: false,
      cache: false,
      noMemInit: true,
      readOnly,
      // Every commit is durable when it returns (synchronous ones included). Overlapping
      // sync would return first and flush later, which only pays for large batches; a
      // file being closed waits for its commit either way.
      overlappingSync: false,
    });
    const dbOptions = { encoding: 'binary' as const, keyEncoding: 'binary' as const, compression: false, cache: false };
    this.blocks = this.env.openDB<Buffer, Buffer>({ name: 'blocks', ...dbOptions });
    this.refs = this.env.openDB<Buffer, Buffer>({ name: 'refs', ...dbOptions });
    this.info = this.env.openDB<Buffer, Buffer>({ name: 'info', ...dbOptions });
    // A read-only open of a store written before super-chunks existed has no such
    // sub-databases, and cannot create them: it reads them as empty.
    this.chunks = this.env.openDB<Buffer, Buffer>({ name: 'chunks', ...dbOptions });
    this.chunkinfo = this.env.openDB<Buffer, Buffer>({ name: 'chunkinfo', ...dbOptions });
    this.chunkdir = this.env.openDB<Buffer, Buffer>({ name: 'chunkdir', ...dbOptions });
    this.unpacked = this.env.openDB<Buffer, Buffer>({ name: 'unpacked', ...dbOptions });
    this.dirty = this.env.openDB<Buffer, Buffer>({ name: 'dirty', ...dbOptions });
    this.dirtyq = this.env.openDB<Buffer, Buffer>({ name: 'dirtyq', ...dbOptions });
    for (const key of this.unpacked.getKeys({ reverse: true, limit: 1 })) this.nextSeq = Number(key.readBigUInt64BE(0)) + 1;
    for (const key of this.dirtyq.getKeys({ reverse: true, limit: 1 })) this.nextDirtySeq = Number(key.readBigUInt64BE(0)) + 1;
    if (!readOnly && !this.info.doesExist(INSTANCE_KEY)) this.info.putSync(INSTANCE_KEY, Buffer.from(randomUUID()));
  }

  static open(path: string, options: BlockStoreOptions = {}): BlockStore {
    return new BlockStore(path, options.readOnly ?? false, options);
  }

  /** True when a new block of this length goes to the packing queue rather than being encoded alone. */
  packs(length: number): boolean {
    return this.packBelow > 0 && this.codec !== Codec.Raw && length > 0 && length < this.packBelow;
  }

  /** How encodeBlock(Async) is to compress new values for this store (the zstd level). */
  encodeOptions(): EncodeOptions {
    return { level: this.zstdLevel };
  }

  /** True when storing this block would compress it alone (the caller may do that off this thread first). */
  wantsEncoding(hash: Buffer, length: number): boolean {
    return this.codec !== Codec.Raw && !this.packs(length) && !this.blocks.doesExist(hash);
  }

  /**
   * Takes one reference on each block, storing the bytes of those the store lacks.
   * Resolves once the change is durable on disk, so metadata may then point at them.
   */
  async acquire(items: readonly BlockToStore[]): Promise<void> {
    if (items.length === 0) return;
    await this.reusableFirst();
    const r = await this.env.transaction(() => this.takeReferences(items));
    await this.env.flushed;
    this.afterStore(r);
  }

  /**
   * `acquire` done on the calling thread: durable when it returns. For a few small
   * blocks (a file being closed) this saves the hand-offs to and from LMDB's writer
   * thread, about a quarter of a millisecond per commit here; large batches should use
   * `acquire`, which does not block the caller while the disk writes.
   */
  acquireSync(items: readonly BlockToStore[]): void {
    if (items.length === 0) return;
    this.afterStore(this.env.transactionSync(() => this.takeReferences(items)));
  }

  private afterStore(r: { queued: number; stored: number }): void {
    if (r.queued > 0) this.onQueued?.(r.queued);
    if (r.stored > 0 || r.queued > 0) this.onStored?.();
  }

  /** Returns the bytes queued for packing and the number of blocks newly stored. */
  private takeReferences(items: readonly BlockToStore[]): { queued: number; stored: number } {
    const totals = this.readTotals();
    let queued = 0;
    let stored = 0;
    for (const { hash, data, value: encoded } of items) {
      const count = this.refCount(hash);
      if (count === 0 && !this.blocks.doesExist(hash)) {
        // Never a reference to bytes nobody has (DESIGN invariant 1).
        if (!data) throw new Error(`block ${hash.toString('hex')} was to be shared by reference but is no longer stored`);
        let value: Buffer;
        if (this.packs(data.length)) {
          // Stored raw for now (durable at once, no compression on this path); the
          // packer compresses it together with its neighbours shortly.
          value = rawValue(data);
          this.unpacked.put(seqKey(this.nextSeq++), hash);
          queued += data.length;
        } else value = encoded ?? encodeBlock(data, this.codec, this.encodeOptions());
        this.blocks.put(hash, value);
        totals.blocks += 1;
        totals.uniqueBytes += data.length;
        totals.storedBytes += value.length;
        if (this.trackDirty) this.markDirty(hash, data.length);
        stored++;
      }
      this.refs.put(hash, u32(count + 1));
      totals.references += 1;
    }
    this.writeTotals(totals);
    return { queued, stored };
  }

  /** Drops one reference per listed hash (a hash may repeat); a block at zero is deleted. */
  async release(hashes: readonly Buffer[]): Promise<void> {
    if (hashes.length === 0) return;
    await this.env.transaction(() => {
      const totals = this.readTotals();
      for (const hash of hashes) {
        const count = this.refCount(hash);
        if (count === 0) continue; // already gone: a leak repaired by fsck, never an error here
        totals.references -= 1;
        if (count > 1) {
          this.refs.put(hash, u32(count - 1));
          continue;
        }
        this.refs.remove(hash);
        this.removeBlock(hash, totals);
      }
      this.writeTotals(totals);
    });
    await this.reusableFirst();
    await this.env.flushed;
  }

  /**
   * LMDB hands pages freed by transaction N only to transactions after N + 1 (the
   * previous snapshot may still be read). After values were deleted, one small commit
   * goes first, so the next batch reuses what was freed instead of growing the file
   * (and, on a full disk, failing although deleting made room).
   */
  private async reusableFirst(): Promise<void> {
    if (!this.pagesFreed) return;
    this.pagesFreed = false;
    await this.env.transaction(() => this.writeTotals(this.readTotals()));
  }

  /**
   * Deletes a block's value (for a locator, also its share of the super-chunk, and the
   * chunk itself when it was its last block) and takes it out of `totals`. Runs inside a
   * write transaction. Returns what went, or undefined when the block was absent.
   */
  private removeBlock(hash: Buffer, totals: BlockStoreStats): { stored: number; raw: number } | undefined {
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
    if (loc) stored += this.releaseFromChunk(loc.chunk, loc.length, totals);
    this.unmarkDirty(hash, raw);
    totals.blocks -= 1;
    totals.storedBytes -= valueLength;
    totals.uniqueBytes -= raw;
    this.blocks.remove(hash);
    this.pagesFreed = true;
    return { stored, raw };
  }

  /** A block of `chunk` went: counts it out, deleting the chunk with its last block. Returns stored bytes freed. */
  private releaseFromChunk(chunk: number, length: number, totals: BlockStoreStats): number {
    const key = chunkKey(chunk);
    const info = decodeChunkInfo(readFast(this.chunkinfo, key));
    if (!info) return 0;
    info.liveBlocks -= 1;
    info.liveBytes = Math.max(0, info.liveBytes - length);
    if (info.liveBlocks > 0) {
      this.chunkinfo.put(key, encodeChunkInfo(info));
      return 0;
    }
    this.chunkinfo.remove(key);
    this.chunkdir.remove(key);
    const value = readFast(this.chunks, key);
    this.chunkCache.drop(chunk);
    if (!value) return 0;
    const freed = value.length;
    totals.storedBytes -= freed;
    this.chunks.remove(key);
    this.pagesFreed = true;
    return freed;
  }

  /** The decoded bytes of a block (a private copy), or undefined when absent. Decodes super-chunks on this thread. */
  get(hash: Buffer): Buffer | undefined {
    const value = this.blocks.getBinary(hash);
    if (!value) return undefined;
    if (!isLocator(value)) return Buffer.from(decodeBlock(value));
    const loc = decodeLocator(value);
    const chunk = this.chunkCache.loadSync(loc.chunk, () => {
      const v = this.chunks.getBinary(chunkKey(loc.chunk));
      if (!v) throw new MissingChunkError(loc.chunk);
      return decodeBlock(v);
    });
    if (loc.offset + loc.length > chunk.data.length) throw new Error(`super-chunk ${loc.chunk} is shorter than its locators say`);
    return Buffer.from(chunk.data.subarray(loc.offset, loc.offset + loc.length));
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
      const cached = this.chunkCache.get(loc.chunk);
      if (cached) return serveFromChunk(cached, loc, hash, from, length, target, at);
      return this.chunkCache
        .load(loc.chunk, () => {
          const v = this.chunks.getBinary(chunkKey(loc.chunk));
          return v ? decodeBlockAsync(v) : Promise.reject(new MissingChunkError(loc.chunk));
        })
        .then(
          (chunk) => serveFromChunk(chunk, loc, hash, from, length, target, at),
          (err: unknown): BlockRead => (err instanceof MissingChunkError ? 'missing' : 'corrupt'),
        );
    }
    let data: Buffer;
    try {
      data = decodeBlock(value);
    } catch {
      return 'corrupt';
    }
    // DESIGN invariant 2: wrong bytes are never served. Re-hashing a 128 KiB block costs
    // about 37 us here; the kernel's page cache keeps repeated reads from paying it.
    if (!hashBlock(data).equals(hash)) return 'corrupt';
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
    return this.readTotals();
  }

  /**
   * This local copy's identity: made when the store is created, so a volume restored on
   * another machine (a new store) is another owner of the remote's writer lock.
   */
  instanceId(): string {
    return this.info.getBinary(INSTANCE_KEY)?.toString() ?? 'unknown';
  }

  /**
   * The volume's remote, kept here as well as in the metadata database: when that database
   * is lost, this names where to rebuild it from.
   */
  rememberRemote(spec: string): void {
    if (this.rememberedRemote() !== spec) this.info.putSync(REMOTE_KEY, Buffer.from(spec));
  }

  rememberedRemote(): string | undefined {
    return this.info.getBinary(REMOTE_KEY)?.toString() || undefined;
  }

  /** Super-chunks held and the chunk cache's state. */
  chunkStats(): { chunks: number; queuedBlocks: number; cache: ChunkCacheStats } {
    const entries = (db: Database<Buffer, Buffer>) => (db.getStats() as { entryCount: number }).entryCount;
    return { chunks: entries(this.chunks), queuedBlocks: entries(this.unpacked), cache: this.chunkCache.stats() };
  }

  /** Waits until every write issued so far is durable. */
  async flushed(): Promise<void> {
    await this.env.committed;
    await this.env.flushed;
  }

  async close(): Promise<void> {
    await this.flushed();
    await this.env.close();
  }

  // ---- Super-chunks: packing short blocks and repacking sparse chunks (SuperChunkPacker). ----

  /** Up to `limit` queued short blocks, oldest first. */
  queuedBlocks(limit: number): QueuedBlock[] {
    const out: QueuedBlock[] = [];
    for (const { key, value } of this.unpacked.getRange({ limit })) out.push({ seq: Number(key.readBigUInt64BE(0)), hash: Buffer.from(value) });
    return out;
  }

  /** The decoded bytes of a loose block (a private copy), or undefined when it is absent or not loose any more. */
  looseBytes(hash: Buffer): Buffer | undefined {
    const value = readFast(this.blocks, hash);
    if (!value || isLocator(value)) return undefined;
    try {
      return Buffer.from(decodeBlock(value));
    } catch {
      return undefined;
    }
  }

  /** The locator of a block inside a super-chunk, or undefined. */
  locatorOf(hash: Buffer): Locator | undefined {
    const value = readFast(this.blocks, hash);
    if (!value || !isLocator(value)) return undefined;
    try {
      return decodeLocator(value);
    } catch {
      return undefined;
    }
  }

  /**
   * Stores a new super-chunk and points the listed blocks into it, in one durable
   * transaction. `members` are (hash, offset, length) of the blocks in `value`'s decoded
   * bytes; `replaces` says what each block must be right now for its value to be swapped
   * (still loose, or still at a given place in another chunk): a block that changed
   * meanwhile (released, or moved by someone else) keeps its value, and its bytes in the
   * new chunk are dead from the start. `done` queue entries are removed in the same
   * transaction. Returns the new chunk's id, or undefined when no block moved into it.
   */
  async commitChunk(
    value: Buffer,
    totalBytes: number,
    members: readonly { hash: Buffer; offset: number; length: number; from: 'loose' | Locator }[],
    done: readonly number[],
  ): Promise<number | undefined> {
    const result = await this.env.transaction(() => {
      const totals = this.readTotals();
      const id = this.allocateChunk();
      let liveBlocks = 0;
      let liveBytes = 0;
      const moved: ChunkMember[] = [];
      for (const m of members) {
        if (this.refCount(m.hash) === 0) continue;
        // Read out before any other get (getBinaryFast's buffer is shared).
        const cur = readFast(this.blocks, m.hash);
        if (!cur) continue;
        const curLength = cur.length;
        const curLoc = isLocator(cur) ? decodeLocator(cur) : undefined;
        if (m.from === 'loose') {
          if (curLoc) continue;
        } else {
          if (!curLoc || curLoc.chunk !== m.from.chunk || curLoc.offset !== m.from.offset) continue;
          this.releaseFromChunk(curLoc.chunk, curLoc.length, totals);
        }
        totals.storedBytes += LOCATOR_SIZE - curLength;
        this.blocks.put(m.hash, encodeLocator({ chunk: id, offset: m.offset, length: m.length }));
        this.pagesFreed = true;
        moved.push(m);
        liveBlocks++;
        liveBytes += m.length;
      }
      for (const seq of done) this.unpacked.remove(seqKey(seq));
      if (liveBlocks > 0) {
        this.chunks.put(chunkKey(id), value);
        this.chunkinfo.put(chunkKey(id), encodeChunkInfo({ liveBlocks, liveBytes, totalBytes }));
        this.chunkdir.put(chunkKey(id), encodeChunkDir(moved));
        totals.storedBytes += value.length;
      }
      this.writeTotals(totals);
      return liveBlocks > 0 ? id : undefined;
    });
    await this.env.flushed;
    return result;
  }

  /**
   * Replaces loose values by others of the same bytes (a short block that did not pack
   * well, compressed alone after all) and removes `done` queue entries. Values are only
   * swapped while the block is still loose with the given raw length.
   */
  async replaceLoose(values: readonly { hash: Buffer; value: Buffer }[], done: readonly number[]): Promise<void> {
    await this.env.transaction(() => {
      const totals = this.readTotals();
      for (const { hash, value } of values) {
        const cur = readFast(this.blocks, hash);
        if (!cur || isLocator(cur) || cur.readUInt32LE(4) !== value.readUInt32LE(4)) continue;
        totals.storedBytes += value.length - cur.length;
        this.blocks.put(hash, value);
      }
      for (const seq of done) this.unpacked.remove(seqKey(seq));
      this.writeTotals(totals);
    });
    await this.env.flushed;
  }

  private allocateChunk(): number {
    const raw = readFast(this.info, NEXT_CHUNK_KEY);
    let next = raw && raw.length === 8 ? Number(raw.readBigUInt64LE(0)) : 1;
    // Never reuse an id still present (a store whose counter was lost or rolled back).
    while (this.chunkinfo.doesExist(chunkKey(next)) || this.chunks.doesExist(chunkKey(next))) next++;
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64LE(BigInt(next + 1), 0);
    this.info.put(NEXT_CHUNK_KEY, b);
    return next;
  }

  // ---- The store as a cache of the remote: dirty blocks, eviction, fetched blocks. ----

  private markDirty(hash: Buffer, length: number): void {
    if (this.dirty.doesExist(hash)) return;
    const seq = seqKey(this.nextDirtySeq++);
    this.dirty.put(hash, seq);
    this.dirtyq.put(seq, hash);
    const t = this.dirtyStats();
    this.writeDirtyTotals(t.blocks + 1, t.bytes + length);
  }

  private unmarkDirty(hash: Buffer, length: number): boolean {
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
    const raw = readFast(this.info, DIRTY_KEY);
    if (!raw || raw.length !== 16) return { blocks: 0, bytes: 0 };
    return { blocks: Number(raw.readBigUInt64LE(0)), bytes: Number(raw.readBigUInt64LE(8)) };
  }

  private writeDirtyTotals(blocks: number, bytes: number): void {
    const raw = Buffer.alloc(16);
    raw.writeBigUInt64LE(BigInt(Math.max(0, blocks)), 0);
    raw.writeBigUInt64LE(BigInt(Math.max(0, bytes)), 8);
    this.info.put(DIRTY_KEY, raw);
  }

  isDirty(hash: Buffer): boolean {
    return this.dirty.doesExist(hash);
  }

  /** Up to `limit` dirty blocks, oldest first, starting after sequence number `after`. */
  dirtyBlocks(limit: number, after = -1): DirtyBlock[] {
    const out: DirtyBlock[] = [];
    for (const { key, value } of this.dirtyq.getRange({ start: seqKey(after + 1), limit })) out.push({ seq: Number(key.readBigUInt64BE(0)), hash: Buffer.from(value) });
    return out;
  }

  /** The blocks are on the remote now (their pack's rows are durable): they may be evicted. */
  async markClean(hashes: readonly Buffer[]): Promise<void> {
    if (hashes.length === 0) return;
    await this.env.transaction(() => {
      for (const hash of hashes) {
        const value = readFast(this.blocks, hash);
        const raw = value && value.length >= BLOCK_HEADER_SIZE ? value.readUInt32LE(4) : 0;
        this.unmarkDirty(hash, raw);
      }
    });
    await this.env.flushed;
  }

  /** Marks blocks dirty again so the uploader writes them into a new pack (repacking the remote). */
  async markDirtyAgain(hashes: readonly Buffer[]): Promise<number> {
    if (hashes.length === 0) return 0;
    const marked = await this.env.transaction(() => {
      let n = 0;
      for (const hash of hashes) {
        const value = readFast(this.blocks, hash);
        if (!value || this.dirty.doesExist(hash)) continue;
        this.markDirty(hash, value.readUInt32LE(4));
        n++;
      }
      return n;
    });
    await this.env.flushed;
    return marked;
  }

  /** The stored value of a block, or of the super-chunk holding it, with that value's members (for a pack). */
  uploadUnit(hash: Buffer): { key: string; value: Buffer; members: { hash: Buffer; blockOffset: number; length: number }[] } | undefined {
    const value = this.blocks.getBinary(hash);
    if (!value) return undefined;
    if (!isLocator(value)) {
      const copy = Buffer.from(value);
      return { key: `b${hash.toString('hex')}`, value: copy, members: [{ hash, blockOffset: 0, length: copy.readUInt32LE(4) }] };
    }
    const loc = decodeLocator(value);
    const chunk = this.chunkValue(loc.chunk);
    if (!chunk) return undefined;
    const members = this.chunkMembers(loc.chunk)
      .filter((m) => {
        const l = this.locatorOf(m.hash);
        return l !== undefined && l.chunk === loc.chunk && l.offset === m.offset;
      })
      .map((m) => ({ hash: m.hash, blockOffset: m.offset, length: m.length }));
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
    return this.env.transaction(() => {
      const totals = this.readTotals();
      let freed = 0;
      for (const item of items) {
        if ('hash' in item) {
          const value = readFast(this.blocks, item.hash);
          if (!value || isLocator(value) || this.dirty.doesExist(item.hash)) continue;
          const length = value.length;
          const raw = value.readUInt32LE(4);
          this.blocks.remove(item.hash);
          this.pagesFreed = true;
          totals.blocks -= 1;
          totals.uniqueBytes -= raw;
          totals.storedBytes -= length;
          freed += length;
          continue;
        }
        const inside = this.chunkMembers(item.chunk).filter((m) => {
          const l = this.locatorOf(m.hash);
          return l !== undefined && l.chunk === item.chunk && l.offset === m.offset;
        });
        if (inside.some((m) => this.dirty.doesExist(m.hash))) continue;
        const chunk = readFast(this.chunks, chunkKey(item.chunk));
        if (!chunk) continue;
        freed += chunk.length;
        totals.storedBytes -= chunk.length;
        for (const m of inside) {
          this.blocks.remove(m.hash);
          this.pagesFreed = true;
          totals.blocks -= 1;
          totals.uniqueBytes -= m.length;
          totals.storedBytes -= LOCATOR_SIZE;
          freed += LOCATOR_SIZE;
        }
        this.deleteChunk(item.chunk);
      }
      this.writeTotals(totals);
      return freed;
    });
  }

  /**
   * Stores a value fetched from the remote (already verified by the caller): a loose block
   * as it is, or a super-chunk with locators for its members. Only members still
   * referenced and absent here are taken; nothing becomes dirty (it is on the remote).
   */
  async installFetched(value: Buffer, members: readonly { hash: Buffer; blockOffset: number; length: number }[]): Promise<number> {
    return this.env.transaction(() => {
      const totals = this.readTotals();
      const wanted = members.filter((m) => this.refCount(m.hash) > 0 && !this.blocks.doesExist(m.hash));
      if (wanted.length === 0) return 0;
      const loose = !isLocator(value) && members.length === 1 && members[0].blockOffset === 0 && value.readUInt32LE(4) === members[0].length;
      if (loose) {
        this.blocks.put(wanted[0].hash, value);
        totals.blocks += 1;
        totals.uniqueBytes += wanted[0].length;
        totals.storedBytes += value.length;
        this.writeTotals(totals);
        return 1;
      }
      const id = this.allocateChunk();
      let liveBytes = 0;
      for (const m of wanted) {
        this.blocks.put(m.hash, encodeLocator({ chunk: id, offset: m.blockOffset, length: m.length }));
        this.pagesFreed = true;
        liveBytes += m.length;
        totals.blocks += 1;
        totals.uniqueBytes += m.length;
        totals.storedBytes += LOCATOR_SIZE;
      }
      this.chunks.put(chunkKey(id), value);
      this.chunkinfo.put(chunkKey(id), encodeChunkInfo({ liveBlocks: wanted.length, liveBytes, totalBytes: value.readUInt32LE(4) }));
      this.chunkdir.put(chunkKey(id), encodeChunkDir(wanted.map((m) => ({ hash: m.hash, offset: m.blockOffset, length: m.length }))));
      totals.storedBytes += value.length;
      this.writeTotals(totals);
      return wanted.length;
    });
  }

  // ---- Maintenance (fsck, gc): whole-store scans and direct edits. ----

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

  /** Super-chunks in id order with their values (private copies). */
  *scanChunks(): Generator<{ chunk: number; value: Buffer }> {
    for (const { key, value } of this.chunks.getRange({})) yield { chunk: Number(key.readBigUInt64BE(0)), value };
  }

  /** Every super-chunk's bookkeeping; `info` is undefined when the entry is malformed. */
  *scanChunkInfo(): Generator<{ chunk: number; info: ChunkInfo | undefined }> {
    for (const { key, value } of this.chunkinfo.getRange({})) yield { chunk: Number(key.readBigUInt64BE(0)), info: decodeChunkInfo(value) };
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
    for (const key of this.chunks.getKeys({})) {
      const value = readFast(this.chunks, key);
      if (value) add(mix.superChunks, value);
    }
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

  /** A super-chunk's stored value as a private copy, or undefined. */
  chunkValue(chunk: number): Buffer | undefined {
    const value = this.chunks.getBinary(chunkKey(chunk));
    return value ? Buffer.from(value) : undefined;
  }

  /** The kind byte of a super-chunk's value (its codec), or undefined when absent or malformed. */
  chunkKind(chunk: number): number | undefined {
    const value = readFast(this.chunks, chunkKey(chunk));
    return value && value.length >= BLOCK_HEADER_SIZE ? value[1] : undefined;
  }

  /** The blocks packed into a chunk when it was written (some may have died or moved since). */
  chunkMembers(chunk: number): ChunkMember[] {
    return decodeChunkDir(readFast(this.chunkdir, chunkKey(chunk)));
  }

  chunkInfo(chunk: number): ChunkInfo | undefined {
    return decodeChunkInfo(readFast(this.chunkinfo, chunkKey(chunk)));
  }

  /**
   * Runs `fn` in one write transaction and resolves once it is durable. The setters below
   * (setRefCount, putRawValue, deleteValue, putChunk, deleteChunk, setChunkInfo,
   * clearQueue, setTotals, markDamaged, clearDamaged, dropBlock) are meant to be called inside it.
   */
  async maintenance<T>(fn: () => T): Promise<T> {
    const result = await this.env.transaction(fn);
    await this.env.flushed;
    return result;
  }

  /** Sets a block's reference count; 0 removes the entry. Does not touch the block or the totals. */
  setRefCount(hash: Buffer, count: number): void {
    if (count <= 0) this.refs.remove(hash);
    else this.refs.put(hash, u32(count));
  }

  /** Stores a raw value (header included) under `hash`, replacing any. References and totals unchanged. */
  putRawValue(hash: Buffer, value: Buffer): void {
    this.blocks.put(hash, value);
  }

  /** Deletes a block's value, leaving its reference count, its chunk's bookkeeping and the totals alone. */
  deleteValue(hash: Buffer): void {
    this.blocks.remove(hash);
    this.pagesFreed = true;
  }

  putChunk(chunk: number, value: Buffer): void {
    this.chunks.put(chunkKey(chunk), value);
    this.chunkCache.drop(chunk);
  }

  deleteChunk(chunk: number): void {
    this.chunks.remove(chunkKey(chunk));
    this.pagesFreed = true;
    this.chunkinfo.remove(chunkKey(chunk));
    this.chunkdir.remove(chunkKey(chunk));
    this.chunkCache.drop(chunk);
  }

  setChunkInfo(chunk: number, info: ChunkInfo): void {
    this.chunkinfo.put(chunkKey(chunk), encodeChunkInfo(info));
  }

  setChunkMembers(chunk: number, members: readonly ChunkMember[]): void {
    this.chunkdir.put(chunkKey(chunk), encodeChunkDir(members));
  }

  /** Empties the packing queue (fsck --repair, after which nothing is queued that is not loose). */
  clearQueue(): void {
    for (const key of this.unpacked.getKeys({})) this.unpacked.remove(key);
  }

  /**
   * Deletes a block with all its bookkeeping (reference count, super-chunk share, totals):
   * what gc does to a block nothing references. Returns what went, or undefined when absent.
   */
  dropBlock(hash: Buffer): { stored: number; raw: number; references: number } | undefined {
    const totals = this.readTotals();
    const references = this.refCount(hash);
    const gone = this.removeBlock(hash, totals);
    if (!gone) return undefined;
    this.refs.remove(hash);
    totals.references -= references;
    this.writeTotals(totals);
    return { ...gone, references };
  }

  /** Overwrites the running totals (after a recount). */
  setTotals(totals: BlockStoreStats): void {
    this.writeTotals(totals);
  }

  /**
   * Blocks fsck found lost (missing or corrupt) and left referenced so that reads of them
   * fail with EIO: "known damaged", kept in `info` under `damaged/` + digest.
   */
  damagedHashes(): Buffer[] {
    const out: Buffer[] = [];
    for (const key of this.info.getKeys({ start: DAMAGED_PREFIX })) {
      if (!key.subarray(0, DAMAGED_PREFIX.length).equals(DAMAGED_PREFIX)) break;
      if (key.length === DAMAGED_PREFIX.length + 32) out.push(Buffer.from(key.subarray(DAMAGED_PREFIX.length)));
    }
    return out;
  }

  markDamaged(hash: Buffer): void {
    const stamp = Buffer.alloc(8);
    stamp.writeBigUInt64LE(BigInt(Date.now()), 0);
    this.info.put(Buffer.concat([DAMAGED_PREFIX, hash]), stamp);
  }

  clearDamaged(hash: Buffer): void {
    this.info.remove(Buffer.concat([DAMAGED_PREFIX, hash]));
  }

  /**
   * How the LMDB file's pages are used: pages in the file, pages held by the trees (data,
   * reference counts, totals, the catalogue of sub-databases, the free list itself, the two
   * meta pages) and the rest, which is free (reused by later writes, never given back to
   * the file system; `compactTo` does that).
   */
  space(): StoreSpace {
    type TreeStats = { treeBranchPageCount: number; treeLeafPageCount: number; overflowPages: number };
    const pages = (s: TreeStats) => s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages;
    const all = this.env.getStats() as TreeStats & { pageSize: number; lastPageNumber: number; root: TreeStats; free: TreeStats };
    const treePages =
      pages(this.blocks.getStats() as TreeStats) +
      pages(this.refs.getStats() as TreeStats) +
      pages(this.info.getStats() as TreeStats) +
      pages(this.chunks.getStats() as TreeStats) +
      pages(this.chunkinfo.getStats() as TreeStats) +
      pages(this.chunkdir.getStats() as TreeStats) +
      pages(this.unpacked.getStats() as TreeStats) +
      pages(all.root) +
      pages(all.free) +
      2;
    const totalPages = all.lastPageNumber + 1;
    let fileBytes = 0;
    try {
      fileBytes = statSync(join(this.path, 'data.mdb')).size;
    } catch {
      fileBytes = 0;
    }
    return {
      pageSize: all.pageSize,
      fileBytes,
      usedBytes: Math.min(treePages, totalPages) * all.pageSize,
      freeBytes: Math.max(0, totalPages - treePages) * all.pageSize,
      blockPages: pages(this.blocks.getStats() as TreeStats) + pages(this.chunks.getStats() as TreeStats),
    };
  }

  /** Writes a compacted copy of the whole environment (free pages dropped) as `dir`/data.mdb. */
  async compactTo(dir: string): Promise<void> {
    mkdirSync(dir, { recursive: true });
    await this.env.backup(dir, true);
  }

  private readTotals(): BlockStoreStats {
    const raw = readFast(this.info, STATS_KEY);
    if (!raw || raw.length !== 32) return { blocks: 0, uniqueBytes: 0, storedBytes: 0, references: 0 };
    return {
      blocks: Number(raw.readBigUInt64LE(0)),
      uniqueBytes: Number(raw.readBigUInt64LE(8)),
      storedBytes: Number(raw.readBigUInt64LE(16)),
      references: Number(raw.readBigUInt64LE(24)),
    };
  }

  private writeTotals(t: BlockStoreStats): void {
    const raw = Buffer.alloc(32);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.blocks)), 0);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.uniqueBytes)), 8);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.storedBytes)), 16);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.references)), 24);
    this.info.put(STATS_KEY, raw);
  }
}

class MissingChunkError extends Error {
  constructor(chunk: number) {
    super(`super-chunk ${chunk} is missing`);
  }
}

function serveFromChunk(chunk: DecodedChunk, loc: Locator, hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead {
  if (loc.offset + loc.length > chunk.data.length) return 'corrupt';
  const data = chunk.data.subarray(loc.offset, loc.offset + loc.length);
  // Verified once per decoding of the chunk: its decoded bytes then sit in memory.
  if (!chunk.verified.has(loc.offset)) {
    if (!hashBlock(data).equals(hash)) return 'corrupt';
    chunk.verified.add(loc.offset);
  }
  copyRange(data, from, length, target, at);
  return 'ok';
}

/** Copies data[from, from+length) to target at `at`; bytes past the data's end read as zeros. */
function copyRange(data: Buffer, from: number, length: number, target: Buffer, at: number): void {
  const end = Math.min(from + length, data.length);
  if (end > from) data.copy(target, at, from, end);
  if (end < from + length) target.fill(0, at + Math.max(0, end - from), at + length);
}

function chunkKey(chunk: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(chunk), 0);
  return b;
}

const seqKey = chunkKey;

function encodeChunkInfo(info: ChunkInfo): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt32LE(Math.max(0, info.liveBlocks), 0);
  b.writeUInt32LE(Math.max(0, info.liveBytes), 4);
  b.writeUInt32LE(info.totalBytes, 8);
  return b;
}

function decodeChunkInfo(raw: Buffer | undefined): ChunkInfo | undefined {
  if (!raw || raw.length !== 12) return undefined;
  return { liveBlocks: raw.readUInt32LE(0), liveBytes: raw.readUInt32LE(4), totalBytes: raw.readUInt32LE(8) };
}

const DIR_ENTRY = 40;

function encodeChunkDir(members: readonly ChunkMember[]): Buffer {
  const b = Buffer.allocUnsafe(members.length * DIR_ENTRY);
  members.forEach((m, i) => {
    m.hash.copy(b, i * DIR_ENTRY);
    b.writeUInt32LE(m.offset, i * DIR_ENTRY + 32);
    b.writeUInt32LE(m.length, i * DIR_ENTRY + 36);
  });
  return b;
}

function decodeChunkDir(raw: Buffer | undefined): ChunkMember[] {
  if (!raw || raw.length % DIR_ENTRY !== 0) return [];
  const out: ChunkMember[] = [];
  for (let at = 0; at < raw.length; at += DIR_ENTRY) {
    out.push({ hash: Buffer.from(raw.subarray(at, at + 32)), offset: raw.readUInt32LE(at + 32), length: raw.readUInt32LE(at + 36) });
  }
  return out;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n, 0);
  return b;
}
