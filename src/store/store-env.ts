import { open, type Database, type RootDatabase } from 'lmdb';
import { mkdirSync } from 'node:fs';

/** One sub-database of the store's LMDB environment: binary keys, binary values. */
export type Table = Database<Buffer, Buffer>;

/** Running totals of the block store, kept in `info` so `stats` costs one read. */
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

/** The key a WriteTxn is issued with: only this module holds it. */
const ISSUE: unique symbol = Symbol('WriteTxn');

/**
 * Proof that a write runs inside one of the store's write transactions. Only StoreEnv
 * issues one, for the duration of the transaction's callback; a write primitive that
 * takes it cannot be called where no transaction is open, and one kept past its
 * callback refuses to be used (LMDB would otherwise run the write in a transaction of
 * its own, outside the one whose consistency it relies on).
 */
export class WriteTxn {
  #open = true;

  constructor(key: typeof ISSUE) {
    if (key !== ISSUE) throw new Error('a WriteTxn is only issued by the store');
  }

  /** Throws unless the transaction is still running. */
  assertOpen(): void {
    if (!this.#open) throw new Error('a store write was attempted after its transaction ended');
  }

  static end(txn: WriteTxn): void {
    txn.#open = false;
  }
}

/**
 * A value read without a copy. getBinaryFast hands out a view of LMDB's shared read
 * buffer whose `length` lmdb-js sets by hand; Node 24's subarray ignores that and runs to
 * the end of the 16 MiB shared buffer (every block then failed its hash check). A plain
 * view of exactly the value, still without a copy, slices right on every Node. Valid only
 * until the next get on any table.
 */
export function readFast(db: Table, key: Buffer): Buffer | undefined {
  const v = db.getBinaryFast(key);
  return v ? Buffer.from(v.buffer, v.byteOffset, v.length) : undefined;
}

/** A u64 big-endian key (chunk ids, queue sequence numbers): key order is number order. */
export function u64Key(n: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeBigUInt64BE(BigInt(n), 0);
  return b;
}

export function u64KeyValue(key: Buffer): number {
  return Number(key.readBigUInt64BE(0));
}

const STATS_KEY = Buffer.from('stats');

/**
 * What the parts kept beside the content-addressed core see of its environment (the
 * remote cache's ledger, repair, file checks): named tables, write transactions to join,
 * the running totals, LMDB's page statistics and backups. Opening, closing and the
 * core's own commit paths stay with the BlockStore.
 */
export type StoreEnvHook = Pick<StoreEnv, 'table' | 'info' | 'write' | 'durableWrite' | 'totals' | 'setTotals' | 'freed' | 'envStats' | 'backup'>;

/**
 * The block store's LMDB environment: one file, sub-databases opened by name, one write
 * transaction at a time spanning all of them. The parts of the store (the content-
 * addressed core, super-chunks, the remote cache's ledger, repair) each open their own
 * tables here and write inside transactions run by this object, so one transaction can
 * span several parts.
 */
export class StoreEnv {
  private readonly env: RootDatabase<Buffer, Buffer>;
  private readonly tables = new Map<string, Table>();
  /** The running totals' table (also holds other small records). */
  readonly info: Table;
  /**
   * A transaction deleted values: LMDB hands their pages only to transactions after the
   * next one, so a small commit goes first before a large batch (see reusableFirst).
   */
  private pagesFreed = false;

  constructor(
    readonly path: string,
    readonly readOnly: boolean,
  ) {
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
    this.info = this.table('info');
  }

  /**
   * The named sub-database, opened on first use. A read-only open of a store written
   * before a table existed cannot create it: it reads as empty.
   */
  table(name: string): Table {
    let t = this.tables.get(name);
    if (!t) {
      t = this.env.openDB<Buffer, Buffer>({ name, encoding: 'binary', keyEncoding: 'binary', compression: false, cache: false });
      this.tables.set(name, t);
    }
    return t;
  }

  /** Runs `fn` in one write transaction (on LMDB's writer thread's turn); resolves once committed, not yet synced. */
  write<T>(fn: (txn: WriteTxn) => T): Promise<T> {
    return this.env.transaction(() => this.inTxn(fn));
  }

  /** `write`, resolving once the transaction is on disk. */
  async durableWrite<T>(fn: (txn: WriteTxn) => T): Promise<T> {
    const result = await this.write(fn);
    await this.env.flushed;
    return result;
  }

  /** `write` on the calling thread: durable when it returns. */
  writeSync<T>(fn: (txn: WriteTxn) => T): T {
    return this.env.transactionSync(() => this.inTxn(fn));
  }

  private inTxn<T>(fn: (txn: WriteTxn) => T): T {
    const txn = new WriteTxn(ISSUE);
    try {
      return fn(txn);
    } finally {
      WriteTxn.end(txn);
    }
  }

  /** Resolves once every commit so far is synced to disk. */
  async synced(): Promise<void> {
    await this.env.flushed;
  }

  /** Waits until every write issued so far is committed and durable. */
  async flushed(): Promise<void> {
    await this.env.committed;
    await this.env.flushed;
  }

  /** A transaction of `txn`'s deleted values (see reusableFirst). */
  freed(txn: WriteTxn): void {
    txn.assertOpen();
    this.pagesFreed = true;
  }

  /**
   * LMDB hands pages freed by transaction N only to transactions after N + 1 (the
   * previous snapshot may still be read). After values were deleted, one small commit
   * goes first, so the next batch reuses what was freed instead of growing the file
   * (and, on a full disk, failing although deleting made room).
   */
  async reusableFirst(): Promise<void> {
    if (!this.pagesFreed) return;
    this.pagesFreed = false;
    await this.write((txn) => this.setTotals(txn, this.totals()));
  }

  totals(): BlockStoreStats {
    const raw = readFast(this.info, STATS_KEY);
    if (!raw || raw.length !== 32) return { blocks: 0, uniqueBytes: 0, storedBytes: 0, references: 0 };
    return {
      blocks: Number(raw.readBigUInt64LE(0)),
      uniqueBytes: Number(raw.readBigUInt64LE(8)),
      storedBytes: Number(raw.readBigUInt64LE(16)),
      references: Number(raw.readBigUInt64LE(24)),
    };
  }

  setTotals(txn: WriteTxn, t: BlockStoreStats): void {
    txn.assertOpen();
    const raw = Buffer.alloc(32);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.blocks)), 0);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.uniqueBytes)), 8);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.storedBytes)), 16);
    raw.writeBigUInt64LE(BigInt(Math.max(0, t.references)), 24);
    this.info.put(STATS_KEY, raw);
  }

  /** LMDB's statistics of the whole environment (page size, last page, the catalogue and free-list trees). */
  envStats(): unknown {
    return this.env.getStats();
  }

  /** Writes a copy of the environment into `dir` (with `compact`, free pages dropped). */
  async backup(dir: string, compact: boolean): Promise<void> {
    await this.env.backup(dir, compact);
  }

  async close(): Promise<void> {
    await this.flushed();
    await this.env.close();
  }
}
