import { open, type RootDatabase, type Database } from 'lmdb';
import { mkdirSync } from 'node:fs';
import { BLOCK_HEADER_SIZE, decodeBlock, decodeHeader, encodeBlock } from './codec';

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

  private constructor(readonly path: string, readOnly: boolean) {
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
      // Commits return when visible; `flushed` (awaited by every write below) says durable.
      overlappingSync: true,
    });
    const dbOptions = { encoding: 'binary' as const, keyEncoding: 'binary' as const, compression: false, cache: false };
    this.blocks = this.env.openDB<Buffer, Buffer>({ name: 'blocks', ...dbOptions });
    this.refs = this.env.openDB<Buffer, Buffer>({ name: 'refs', ...dbOptions });
    this.info = this.env.openDB<Buffer, Buffer>({ name: 'info', ...dbOptions });
  }

  static open(path: string, options: { readOnly?: boolean } = {}): BlockStore {
    return new BlockStore(path, options.readOnly ?? false);
  }

  /**
   * Takes one reference on each block, storing the bytes of those the store lacks.
   * Resolves once the change is durable on disk, so metadata may then point at them.
   */
  async acquire(items: readonly BlockToStore[]): Promise<void> {
    if (items.length === 0) return;
    await this.env.transaction(() => {
      const totals = this.readTotals();
      for (const { hash, data } of items) {
        const count = this.refCount(hash);
        if (count === 0) {
          const value = encodeBlock(data);
          this.blocks.put(hash, value);
          totals.blocks += 1;
          totals.uniqueBytes += data.length;
          totals.storedBytes += value.length;
        }
        this.refs.put(hash, u32(count + 1));
        totals.references += 1;
      }
      this.writeTotals(totals);
    });
    await this.env.flushed;
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
  copyOut(hash: Buffer, from: number, length: number, target: Buffer, at: number): boolean {
    const value = this.blocks.getBinaryFast(hash);
    if (!value) return false;
    const data = decodeBlock(value);
    const end = Math.min(from + length, data.length);
    if (end > from) data.copy(target, at, from, end);
    // Bytes past the stored length (a short block inside the file) read as zeros.
    if (end < from + length) target.fill(0, at + Math.max(0, end - from), at + length);
    return true;
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
