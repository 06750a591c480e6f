import { encodeRefCount, type BlockStore } from './block-store';
import type { BlockStoreStats, Table, WriteTxn } from './store-env';
import type { ChunkInfo, ChunkMember } from './super-chunks';

/** Prefix of the `info` keys that mark known-damaged blocks (see StoreRepair.markDamaged). */
const DAMAGED_PREFIX = Buffer.from('damaged/');

/**
 * Direct edits of a block store, below its own bookkeeping: what fsck's repair, gc and a
 * restore do once they have recounted the truth elsewhere (the block index, a scan).
 * Each primitive leaves the rest alone (a reference count set without its block, a value
 * deleted without its chunk's share or the totals), so a set of them is only consistent
 * as a whole: every one takes the WriteTxn of the transaction they share, which only
 * `run` issues, and refuses to run once that transaction has ended.
 */
export class StoreRepair {
  private readonly blocks: Table;
  private readonly refs: Table;

  constructor(private readonly store: BlockStore) {
    this.blocks = store.env.table('blocks');
    this.refs = store.env.table('refs');
  }

  /** Runs `fn` in one write transaction and resolves once it is durable. */
  run<T>(fn: (txn: WriteTxn) => T): Promise<T> {
    return this.store.env.durableWrite(fn);
  }

  /** Sets a block's reference count; 0 removes the entry. Does not touch the block or the totals. */
  setRefCount(txn: WriteTxn, hash: Buffer, count: number): void {
    txn.assertOpen();
    if (count <= 0) this.refs.remove(hash);
    else this.refs.put(hash, encodeRefCount(count));
  }

  /** Stores a raw value (header included) under `hash`, replacing any. References and totals unchanged. */
  putRawValue(txn: WriteTxn, hash: Buffer, value: Buffer): void {
    txn.assertOpen();
    this.blocks.put(hash, value);
  }

  /** Deletes a block's value, leaving its reference count, its chunk's bookkeeping and the totals alone. */
  deleteValue(txn: WriteTxn, hash: Buffer): void {
    txn.assertOpen();
    this.blocks.remove(hash);
    this.store.env.freed(txn);
  }

  /** Replaces a super-chunk's value; its bookkeeping stays. */
  putChunk(txn: WriteTxn, chunk: number, value: Buffer): void {
    this.store.superChunks.putValue(txn, chunk, value);
  }

  /** Deletes a super-chunk with its bookkeeping; locators pointing into it stay. */
  deleteChunk(txn: WriteTxn, chunk: number): void {
    this.store.superChunks.remove(txn, chunk);
  }

  setChunkInfo(txn: WriteTxn, chunk: number, info: ChunkInfo): void {
    this.store.superChunks.setInfo(txn, chunk, info);
  }

  setChunkMembers(txn: WriteTxn, chunk: number, members: readonly ChunkMember[]): void {
    this.store.superChunks.setMembers(txn, chunk, members);
  }

  /**
   * Deletes a block with all its bookkeeping (reference count, super-chunk share, totals):
   * what gc does to a block nothing references. Returns what went, or undefined when absent.
   */
  dropBlock(txn: WriteTxn, hash: Buffer): { stored: number; raw: number; references: number } | undefined {
    const totals = this.store.env.totals();
    const references = this.store.refCount(hash);
    const gone = this.store.removeBlock(txn, hash, totals);
    if (!gone) return undefined;
    this.refs.remove(hash);
    totals.references -= references;
    this.store.env.setTotals(txn, totals);
    return { ...gone, references };
  }

  /** Overwrites the running totals (after a recount). */
  setTotals(txn: WriteTxn, totals: BlockStoreStats): void {
    this.store.env.setTotals(txn, totals);
  }

  /**
   * Records a block found lost (missing or corrupt) and left referenced, so that reads of
   * it fail with EIO: "known damaged", kept in `info` under `damaged/` + digest.
   */
  markDamaged(txn: WriteTxn, hash: Buffer): void {
    txn.assertOpen();
    const stamp = Buffer.alloc(8);
    stamp.writeBigUInt64LE(BigInt(Date.now()), 0);
    this.store.env.info.put(Buffer.concat([DAMAGED_PREFIX, hash]), stamp);
  }

  clearDamaged(txn: WriteTxn, hash: Buffer): void {
    txn.assertOpen();
    this.store.env.info.remove(Buffer.concat([DAMAGED_PREFIX, hash]));
  }
}

/** The blocks recorded as known damaged (StoreRepair.markDamaged). */
export function damagedHashes(store: BlockStore): Buffer[] {
  const out: Buffer[] = [];
  for (const key of store.env.info.getKeys({ start: DAMAGED_PREFIX })) {
    if (!key.subarray(0, DAMAGED_PREFIX.length).equals(DAMAGED_PREFIX)) break;
    if (key.length === DAMAGED_PREFIX.length + 32) out.push(Buffer.from(key.subarray(DAMAGED_PREFIX.length)));
  }
  return out;
}
