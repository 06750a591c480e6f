import { ChunkCache, type DecodedChunk } from './chunk-cache';
import { verifiedMember } from './block-verify';
import { BLOCK_HEADER_SIZE, LOCATOR_SIZE, decodeBlock, decodeBlockAsync, decodeLocator, encodeLocator, isLocator, type Locator } from './codec';
import { readFast, u64Key, u64KeyValue, type BlockStoreStats, type StoreEnv, type Table, type WriteTxn } from './store-env';

/** What reading a block found: its verified bytes, nothing, or bytes that fail their hash. */
export type BlockRead = 'ok' | 'missing' | 'corrupt';

/** The bookkeeping of one super-chunk. */
export interface ChunkInfo {
  /** Blocks whose locator points into it. */
  liveBlocks: number;
  /** Their decoded bytes. */
  liveBytes: number;
  /** Decoded bytes of the whole chunk (live and dead blocks). */
  totalBytes: number;
}

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

/** A block going into a new chunk, and what it must still be for its value to be swapped. */
export interface ChunkCandidate extends ChunkMember {
  /** Still loose, or still at this place in another chunk (a repack). */
  from: 'loose' | Locator;
}

const NEXT_CHUNK_KEY = Buffer.from('next-chunk');
export const DEFAULT_CHUNK_CACHE_BYTES = 64 * 1024 * 1024;

/**
 * Super-chunks: many short blocks concatenated and compressed as one unit, so that small
 * files get the context a full block has. Owns, in the store's environment:
 *  - `chunks`:    chunk id (u64 big-endian) → the chunk's value (raw, LZ4 or zstd);
 *  - `chunkinfo`: chunk id → live blocks, live bytes, total bytes: a chunk goes when its
 *                 last block does, and gc repacks the ones mostly dead;
 *  - `chunkdir`:  chunk id → the blocks packed into it (digest, offset, length), written
 *                 once: what repacking and uploading a chunk start from;
 *  - `unpacked`:  sequence number → digest of a short block stored loose that waits to be
 *                 packed (in write order, so files written together are packed together);
 * and the next chunk id in `info`. A packed block's value in `blocks` is a locator (chunk
 * id, offset); this class writes those when it swaps blocks in (SuperChunkPacker) and
 * reads them to serve a block from its chunk, through the decoded-chunk LRU.
 */
export class SuperChunks {
  private readonly chunks: Table;
  private readonly chunkinfo: Table;
  private readonly chunkdir: Table;
  private readonly unpacked: Table;
  readonly cache: ChunkCache;
  private nextSeq = 0;

  constructor(
    private readonly env: StoreEnv,
    /** The core's `blocks` table, where packed blocks hold their locators. */
    private readonly blocks: Table,
    /** The core's reference count of a block (a block nobody references is not moved). */
    private readonly refCount: (hash: Buffer) => number,
    chunkCacheBytes: number,
  ) {
    this.chunks = env.table('chunks');
    this.chunkinfo = env.table('chunkinfo');
    this.chunkdir = env.table('chunkdir');
    this.unpacked = env.table('unpacked');
    this.cache = new ChunkCache(chunkCacheBytes);
    for (const key of this.unpacked.getKeys({ reverse: true, limit: 1 })) this.nextSeq = u64KeyValue(key) + 1;
  }

  // ---- Reading. ----

  /**
   * Copies bytes of the block `loc` points to into `target` (see BlockStore.read),
   * verified once per decoding of its chunk. A chunk not in the cache is decompressed
   * off this thread: the answer is then a promise.
   */
  read(loc: Locator, hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead | Promise<BlockRead> {
    const cached = this.cache.get(loc.chunk);
    if (cached) return serveFromChunk(cached, loc, hash, from, length, target, at);
    return this.cache
      .load(loc.chunk, () => {
        const v = this.chunks.getBinary(u64Key(loc.chunk));
        return v ? decodeBlockAsync(v) : Promise.reject(new MissingChunkError(loc.chunk));
      })
      .then(
        (chunk) => serveFromChunk(chunk, loc, hash, from, length, target, at),
        (err: unknown): BlockRead => (err instanceof MissingChunkError ? 'missing' : 'corrupt'),
      );
  }

  /** The decoded bytes of the block `loc` points to (a private copy, not verified), decoding its chunk on this thread. */
  bytesAt(loc: Locator): Buffer {
    const chunk = this.cache.loadSync(loc.chunk, () => {
      const v = this.chunks.getBinary(u64Key(loc.chunk));
      if (!v) throw new MissingChunkError(loc.chunk);
      return decodeBlock(v);
    });
    if (loc.offset + loc.length > chunk.data.length) throw new Error(`super-chunk ${loc.chunk} is shorter than its locators say`);
    return Buffer.from(chunk.data.subarray(loc.offset, loc.offset + loc.length));
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

  /** The members of `chunk` whose locator still points at it. */
  liveMembers(chunk: number): ChunkMember[] {
    return this.members(chunk).filter((m) => {
      const loc = this.locatorOf(m.hash);
      return loc !== undefined && loc.chunk === chunk && loc.offset === m.offset;
    });
  }

  /** A super-chunk's stored value as a private copy, or undefined. */
  value(chunk: number): Buffer | undefined {
    const value = this.chunks.getBinary(u64Key(chunk));
    return value ? Buffer.from(value) : undefined;
  }

  /** A super-chunk's stored size, or undefined when absent. */
  storedSize(chunk: number): number | undefined {
    return readFast(this.chunks, u64Key(chunk))?.length;
  }

  /** The kind byte of a super-chunk's value (its codec), or undefined when absent or malformed. */
  kind(chunk: number): number | undefined {
    const value = readFast(this.chunks, u64Key(chunk));
    return value && value.length >= BLOCK_HEADER_SIZE ? value[1] : undefined;
  }

  /** The blocks packed into a chunk when it was written (some may have died or moved since). */
  members(chunk: number): ChunkMember[] {
    return decodeChunkDir(readFast(this.chunkdir, u64Key(chunk)));
  }

  info(chunk: number): ChunkInfo | undefined {
    return decodeChunkInfo(readFast(this.chunkinfo, u64Key(chunk)));
  }

  /** Super-chunks in id order with their values (private copies). */
  *scan(): Generator<{ chunk: number; value: Buffer }> {
    for (const { key, value } of this.chunks.getRange({})) yield { chunk: u64KeyValue(key), value };
  }

  /** Stored values of the super-chunks without copies (each valid until the next read). */
  *scanFast(): Generator<Buffer> {
    for (const key of this.chunks.getKeys({})) {
      const value = readFast(this.chunks, key);
      if (value) yield value;
    }
  }

  /** Every super-chunk's bookkeeping; `info` is undefined when the entry is malformed. */
  *scanInfo(): Generator<{ chunk: number; info: ChunkInfo | undefined }> {
    for (const { key, value } of this.chunkinfo.getRange({})) yield { chunk: u64KeyValue(key), info: decodeChunkInfo(value) };
  }

  /** Super-chunks held, and short blocks waiting to be packed. */
  counts(): { chunks: number; queuedBlocks: number } {
    const entries = (db: Table) => (db.getStats() as { entryCount: number }).entryCount;
    return { chunks: entries(this.chunks), queuedBlocks: entries(this.unpacked) };
  }

  // ---- The packing queue. ----

  /** Queues a short block just stored loose, for packing. */
  enqueue(txn: WriteTxn, hash: Buffer): void {
    txn.assertOpen();
    this.unpacked.put(u64Key(this.nextSeq++), hash);
  }

  /** Up to `limit` queued short blocks, oldest first. */
  queuedBlocks(limit: number): QueuedBlock[] {
    const out: QueuedBlock[] = [];
    for (const { key, value } of this.unpacked.getRange({ limit })) out.push({ seq: u64KeyValue(key), hash: Buffer.from(value) });
    return out;
  }

  // ---- Writes inside the store's transactions. ----

  /** A block of `chunk` went: counts it out, deleting the chunk with its last block. Returns stored bytes freed. */
  releaseBlock(txn: WriteTxn, chunk: number, length: number, totals: BlockStoreStats): number {
    txn.assertOpen();
    const key = u64Key(chunk);
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
    this.cache.drop(chunk);
    if (!value) return 0;
    const freed = value.length;
    totals.storedBytes -= freed;
    this.chunks.remove(key);
    this.env.freed(txn);
    return freed;
  }

  /**
   * Stores a chunk fetched from the remote with locators for `wanted` (blocks referenced
   * here and absent), counted into `totals`. Returns how many blocks it now holds.
   */
  installFetched(txn: WriteTxn, value: Buffer, wanted: readonly ChunkMember[], totals: BlockStoreStats): number {
    txn.assertOpen();
    const id = this.allocate(txn);
    let liveBytes = 0;
    for (const m of wanted) {
      // New keys (absent blocks): nothing is freed, so no page-reuse commit is owed.
      this.blocks.put(m.hash, encodeLocator({ chunk: id, offset: m.offset, length: m.length }));
      liveBytes += m.length;
      totals.blocks += 1;
      totals.uniqueBytes += m.length;
      totals.storedBytes += LOCATOR_SIZE;
    }
    this.chunks.put(u64Key(id), value);
    this.chunkinfo.put(u64Key(id), encodeChunkInfo({ liveBlocks: wanted.length, liveBytes, totalBytes: value.readUInt32LE(4) }));
    this.chunkdir.put(u64Key(id), encodeChunkDir(wanted));
    totals.storedBytes += value.length;
    return wanted.length;
  }

  /**
   * Gives up the local copy of a chunk and the locators of `inside` (its live members),
   * counted out of `totals`; reference counts stay (the bytes live on the remote).
   * Returns the stored bytes freed, 0 when the chunk is absent.
   */
  forget(txn: WriteTxn, chunk: number, inside: readonly ChunkMember[], totals: BlockStoreStats): number {
    txn.assertOpen();
    const value = readFast(this.chunks, u64Key(chunk));
    if (!value) return 0;
    let freed = value.length;
    totals.storedBytes -= value.length;
    for (const m of inside) {
      this.blocks.remove(m.hash);
      this.env.freed(txn);
      totals.blocks -= 1;
      totals.uniqueBytes -= m.length;
      totals.storedBytes -= LOCATOR_SIZE;
      freed += LOCATOR_SIZE;
    }
    this.remove(txn, chunk);
    return freed;
  }

  /** Replaces a chunk's value (its bookkeeping unchanged). */
  putValue(txn: WriteTxn, chunk: number, value: Buffer): void {
    txn.assertOpen();
    this.chunks.put(u64Key(chunk), value);
    this.cache.drop(chunk);
  }

  /** Deletes a chunk with its bookkeeping (the locators pointing into it stay). */
  remove(txn: WriteTxn, chunk: number): void {
    txn.assertOpen();
    this.chunks.remove(u64Key(chunk));
    this.env.freed(txn);
    this.chunkinfo.remove(u64Key(chunk));
    this.chunkdir.remove(u64Key(chunk));
    this.cache.drop(chunk);
  }

  setInfo(txn: WriteTxn, chunk: number, info: ChunkInfo): void {
    txn.assertOpen();
    this.chunkinfo.put(u64Key(chunk), encodeChunkInfo(info));
  }

  setMembers(txn: WriteTxn, chunk: number, members: readonly ChunkMember[]): void {
    txn.assertOpen();
    this.chunkdir.put(u64Key(chunk), encodeChunkDir(members));
  }

  private allocate(txn: WriteTxn): number {
    const raw = readFast(this.env.info, NEXT_CHUNK_KEY);
    let next = raw && raw.length === 8 ? Number(raw.readBigUInt64LE(0)) : 1;
    // Never reuse an id still present (a store whose counter was lost or rolled back).
    while (this.chunkinfo.doesExist(u64Key(next)) || this.chunks.doesExist(u64Key(next))) next++;
    const b = Buffer.allocUnsafe(8);
    b.writeBigUInt64LE(BigInt(next + 1), 0);
    txn.assertOpen();
    this.env.info.put(NEXT_CHUNK_KEY, b);
    return next;
  }

  // ---- The packer's swaps: each one durable transaction. ----

  /**
   * Stores a new super-chunk and points the listed blocks into it, in one durable
   * transaction. `members` are (hash, offset, length) of the blocks in `value`'s decoded
   * bytes; `from` says what each block must be right now for its value to be swapped
   * (still loose, or still at a given place in another chunk): a block that changed
   * meanwhile (released, or moved by someone else) keeps its value, and its bytes in the
   * new chunk are dead from the start. `done` queue entries are removed in the same
   * transaction. Returns the new chunk's id, or undefined when no block moved into it.
   */
  commitChunk(value: Buffer, totalBytes: number, members: readonly ChunkCandidate[], done: readonly number[]): Promise<number | undefined> {
    return this.env.durableWrite((txn) => {
      const totals = this.env.totals();
      const id = this.allocate(txn);
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
          this.releaseBlock(txn, curLoc.chunk, curLoc.length, totals);
        }
        totals.storedBytes += LOCATOR_SIZE - curLength;
        this.blocks.put(m.hash, encodeLocator({ chunk: id, offset: m.offset, length: m.length }));
        this.env.freed(txn);
        moved.push(m);
        liveBlocks++;
        liveBytes += m.length;
      }
      for (const seq of done) this.unpacked.remove(u64Key(seq));
      if (liveBlocks > 0) {
        this.chunks.put(u64Key(id), value);
        this.chunkinfo.put(u64Key(id), encodeChunkInfo({ liveBlocks, liveBytes, totalBytes }));
        this.chunkdir.put(u64Key(id), encodeChunkDir(moved));
        totals.storedBytes += value.length;
      }
      this.env.setTotals(txn, totals);
      return liveBlocks > 0 ? id : undefined;
    });
  }

  /**
   * Replaces loose values by others of the same bytes (a short block that did not pack
   * well, compressed alone after all) and removes `done` queue entries. Values are only
   * swapped while the block is still loose with the given raw length.
   */
  async replaceLoose(values: readonly { hash: Buffer; value: Buffer }[], done: readonly number[]): Promise<void> {
    await this.env.durableWrite((txn) => {
      const totals = this.env.totals();
      for (const { hash, value } of values) {
        const cur = readFast(this.blocks, hash);
        if (!cur || isLocator(cur) || cur.readUInt32LE(4) !== value.readUInt32LE(4)) continue;
        totals.storedBytes += value.length - cur.length;
        this.blocks.put(hash, value);
      }
      for (const seq of done) this.unpacked.remove(u64Key(seq));
      this.env.setTotals(txn, totals);
    });
  }
}

class MissingChunkError extends Error {
  constructor(chunk: number) {
    super(`super-chunk ${chunk} is missing`);
  }
}

function serveFromChunk(chunk: DecodedChunk, loc: Locator, hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead {
  if (loc.offset + loc.length > chunk.data.length) return 'corrupt';
  let data = chunk.data.subarray(loc.offset, loc.offset + loc.length);
  // Verified once per decoding of the chunk: its decoded bytes then sit in memory.
  if (!chunk.verified.has(loc.offset)) {
    const checked = verifiedMember(chunk.data, hash, loc.offset, loc.length);
    if (!checked) return 'corrupt';
    data = checked;
    chunk.verified.add(loc.offset);
  }
  copyRange(data, from, length, target, at);
  return 'ok';
}

/** Copies data[from, from+length) to target at `at`; bytes past the data's end read as zeros. */
export function copyRange(data: Buffer, from: number, length: number, target: Buffer, at: number): void {
  const end = Math.min(from + length, data.length);
  if (end > from) data.copy(target, at, from, end);
  if (end < from + length) target.fill(0, at + Math.max(0, end - from), at + length);
}

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
