import { open, type RootDatabase, type Database } from 'lmdb';
import { closeSync, fstatSync, mkdirSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { hashBlock } from './hash';
import { BLOCK_HEADER_SIZE, Codec, decodeBlock, decodeHeader, encodeBlock } from './codec';

/** What reading a block found: its verified bytes, nothing, or bytes that fail their hash. */
export type BlockRead = 'ok' | 'missing' | 'corrupt';

/** One block to take a reference on: its key and, in case the store lacks it, its bytes. */
export interface BlockToStore {
  hash: Buffer;
  data: Buffer;
}

export interface BlockStoreStats {
  /** Distinct blocks held. */
  blocks: number;
  /** Sum of the decoded lengths of those blocks. */
  uniqueBytes: number;
  /** Sum of the stored value sizes (headers and codec output). */
  storedBytes: number;
  /** Sum of all reference counts. */
  references: number;
}

const STATS_KEY = Buffer.from('stats');
/** Prefix of the `info` keys that mark known-damaged blocks (see BlockStore.markDamaged). */
const DAMAGED_PREFIX = Buffer.from('damaged/');

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
 * Three sub-databases share one environment (one file, one transaction for all):
 *  - `blocks`: BLAKE3 digest → header + bytes (see codec.ts);
 *  - `refs`:   digest → uint32 reference count. Counts live apart from the bytes so that
 *              taking or dropping a reference never rewrites a 128 KiB value;
 *  - `info`:   running totals, so `stats` costs one read instead of a scan.
 *
 * Counts are only ever too high after a crash, never too low: callers take references
 * (and wait for durability) before committing metadata that points at a block, and drop
 * them only after the metadata that released it is durable. fsck recounts from the index.
 */
export class BlockStore {
  private readonly env: RootDatabase<Buffer, Buffer>;
  private readonly blocks: Database<Buffer, Buffer>;
  private readonly refs: Database<Buffer, Buffer>;
  private readonly info: Database<Buffer, Buffer>;

  private constructor(
    readonly path: string,
    readOnly: boolean,
    /** The codec new blocks are written with (encodeBlock stores raw what does not compress). */
    readonly codec: Codec,
  ) {
    mkdirSync(path, { recursive: true });
    this.env = open<Buffer, Buffer>({
      path,
      maxDbs: 8,
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
  }

  static open(path: string, options: { readOnly?: boolean; codec?: Codec } = {}): BlockStore {
    return new BlockStore(path, options.readOnly ?? false, options.codec ?? Codec.Raw);
  }

  /**
   * Takes one reference on each block, storing the bytes of those the store lacks.
   * Resolves once the change is durable on disk, so metadata may then point at them.
   */
  async acquire(items: readonly BlockToStore[]): Promise<void> {
    if (items.length === 0) return;
    await this.env.transaction(() => this.takeReferences(items));
    await this.env.flushed;
  }

  /**
   * `acquire` done on the calling thread: durable when it returns. For a few small
   * blocks (a file being closed) this saves the hand-offs to and from LMDB's writer
   * thread, about a quarter of a millisecond per commit here; large batches should use
   * `acquire`, which does not block the caller while the disk writes.
   */
  acquireSync(items: readonly BlockToStore[]): void {
    if (items.length === 0) return;
    this.env.transactionSync(() => this.takeReferences(items));
  }

  private takeReferences(items: readonly BlockToStore[]): void {
    {
      const totals = this.readTotals();
      for (const { hash, data } of items) {
        const count = this.refCount(hash);
        if (count === 0) {
          const value = encodeBlock(data, this.codec);
          this.blocks.put(hash, value);
          totals.blocks += 1;
          totals.uniqueBytes += data.length;
          totals.storedBytes += value.length;
        }
        this.refs.put(hash, u32(count + 1));
        totals.references += 1;
      }
      this.writeTotals(totals);
    }
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
        const value = this.blocks.getBinaryFast(hash);
        if (value) {
          totals.blocks -= 1;
          totals.storedBytes -= value.length;
          totals.uniqueBytes -= value.length >= BLOCK_HEADER_SIZE ? decodeHeader(value).rawLength : 0;
          this.blocks.remove(hash);
        }
      }
      this.writeTotals(totals);
    });
    await this.env.flushed;
  }

  /** The decoded bytes of a block (a private copy), or undefined when absent. */
  get(hash: Buffer): Buffer | undefined {
    const value = this.blocks.getBinary(hash);
    return value ? decodeBlock(value) : undefined;
  }

  /**
   * Copies `length` bytes starting at `from` within the block into `target` at `at`
   * without an intermediate copy. Returns false when the block is absent.
   */
  copyOut(hash: Buffer, from: number, length: number, target: Buffer, at: number): BlockRead {
    const value = this.blocks.getBinaryFast(hash);
    if (!value) return 'missing';
    let data: Buffer;
    try {
      data = decodeBlock(value);
    } catch {
      return 'corrupt';
    }
    // DESIGN invariant 2: wrong bytes are never served. Re-hashing a 128 KiB block costs
    // about 37 us here; the kernel's page cache keeps repeated reads from paying it.
    if (!hashBlock(data).equals(hash)) return 'corrupt';
    const end = Math.min(from + length, data.length);
    if (end > from) data.copy(target, at, from, end);
    // Bytes past the stored length (a short block inside the file) read as zeros.
    if (end < from + length) target.fill(0, at + Math.max(0, end - from), at + length);
    return 'ok';
  }

  has(hash: Buffer): boolean {
    return this.blocks.doesExist(hash);
  }

  refCount(hash: Buffer): number {
    const value = this.refs.getBinaryFast(hash);
    return value && value.length === 4 ? value.readUInt32LE(0) : 0;
  }

  stats(): BlockStoreStats {
    return this.readTotals();
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

  // ---- Maintenance (fsck, gc): whole-store scans and direct edits, for an unmounted volume only. ----

  /** Stored blocks in key order with their raw values (header included); each value is a private copy. */
  *scanValues(): Generator<{ hash: Buffer; value: Buffer }> {
    for (const { key, value } of this.blocks.getRange({})) yield { hash: key, value };
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

  /** Number of stored blocks, from LMDB's own statistics (no scan). */
  blockCount(): number {
    return (this.blocks.getStats() as { entryCount: number }).entryCount;
  }

  /** The raw stored value (header included) as a private copy, or undefined when absent. */
  rawValue(hash: Buffer): Buffer | undefined {
    const value = this.blocks.getBinary(hash);
    return value ? Buffer.from(value) : undefined;
  }

  /**
   * Runs `fn` in one write transaction and resolves once it is durable. The setters below
   * (setRefCount, putRawValue, deleteValue, setTotals, markDamaged, clearDamaged) are meant
   * to be called inside it.
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

  /** Deletes a block's value, leaving its reference count and the totals alone. */
  deleteValue(hash: Buffer): void {
    this.blocks.remove(hash);
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
      blockPages: pages(this.blocks.getStats() as TreeStats),
    };
  }

  /** Writes a compacted copy of the whole environment (free pages dropped) as `dir`/data.mdb. */
  async compactTo(dir: string): Promise<void> {
    mkdirSync(dir, { recursive: true });
    await this.env.backup(dir, true);
  }

  private readTotals(): BlockStoreStats {
    const raw = this.info.getBinaryFast(STATS_KEY);
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

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n, 0);
  return b;
}
