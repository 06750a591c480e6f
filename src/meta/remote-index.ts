import type Database from 'better-sqlite3';

/** A pack on the remote, as the metadata knows it. */
export interface PackRow {
  id: number;
  name: string;
  remote_id: string;
  size: number;
  created_ns: number;
}

/** Where one block lives on the remote: a byte range of a pack holding a stored value, and the block's place in that value's decoded bytes. */
export interface BlockLocation {
  hash: Buffer;
  pack: number;
  name: string;
  remoteId: string;
  valueOffset: number;
  valueLength: number;
  blockOffset: number;
  length: number;
}

/** One block of a pack's index, as written into the pack and into pack_blocks. */
export interface PackEntry {
  hash: Buffer;
  valueOffset: number;
  valueLength: number;
  blockOffset: number;
  length: number;
}

/** A pack as a shared pack index holds it: the pack and the location of each of its blocks. */
export interface SharedPack {
  name: string;
  remoteId: string;
  size: number;
  entries: PackEntry[];
}

/**
 * The pack index of a volume several machines write (pg-pack-index.ts): where the blocks
 * every machine uploaded live on the shared remote. The local RemoteIndex caches it.
 */
export interface SharedPackIndex {
  /** Records a pack on the remote and its blocks' locations; done twice (a retry), it changes nothing more. */
  publish(pack: SharedPack): Promise<void>;
  /** The packs holding the given blocks, each with all its entries (blocks not found are left out). */
  locate(hashes: readonly Buffer[]): Promise<SharedPack[]>;
  /** Runs `fn` (the upload and publication of pack `name`) while no gc deletes an object of that name (see PgPackIndex.holdingName). */
  holdingName<T>(name: string, fn: () => Promise<T>): Promise<T>;
  close(): Promise<void>;
}

/** A pack of a shared pack index as gc sees it (PgPackIndex.usage). */
export interface SharedPackUsage {
  pack: number;
  name: string;
  remoteId: string;
  size: number;
  /** When it was published (ns since the epoch, the publishing machine's clock). */
  createdNs: bigint;
  /** Its blocks' entries, and how many of them a file references. */
  entries: number;
  liveBlocks: number;
  /** Stored bytes of the values that still hold a live block. */
  liveValueBytes: number;
}

export interface PackUsage {
  pack: number;
  name: string;
  remoteId: string;
  size: number;
  /** Stored bytes of the values that still hold a live block. */
  liveValueBytes: number;
  liveBlocks: number;
}

/**
 * The remote's half of the metadata (schema migration 4): packs, where each block lives
 * in them, pinned trees, and small state such as the last metadata backup generation.
 * Lives in the same SQLite database as the inodes, so a metadata backup carries it.
 */
export class RemoteIndex {
  private readonly s;

  constructor(private readonly db: Database.Database) {
    this.s = {
      insertPack: db.prepare('INSERT INTO packs (name, remote_id, size, created_ns) VALUES (?, ?, ?, ?)'),
      packByName: db.prepare('SELECT * FROM packs WHERE name = ?'),
      allPacks: db.prepare('SELECT * FROM packs ORDER BY id'),
      deletePack: db.prepare('DELETE FROM packs WHERE id = ?'),
      clearEntries: db.prepare('DELETE FROM pack_blocks'),
      clearPacks: db.prepare('DELETE FROM packs'),
      upsertEntry: db.prepare('INSERT OR REPLACE INTO pack_blocks (hash, pack, value_offset, value_length, block_offset, length) VALUES (?, ?, ?, ?, ?, ?)'),
      deleteEntry: db.prepare('DELETE FROM pack_blocks WHERE hash = ?'),
      locate: db.prepare(
        `SELECT b.hash AS hash, b.pack AS pack, p.name AS name, p.remote_id AS remoteId, b.value_offset AS valueOffset,
                b.value_length AS valueLength, b.block_offset AS blockOffset, b.length AS length
           FROM pack_blocks b JOIN packs p ON p.id = b.pack WHERE b.hash = ?`,
      ),
      members: db.prepare('SELECT hash, block_offset AS blockOffset, length FROM pack_blocks WHERE pack = ? AND value_offset = ? ORDER BY block_offset'),
      entriesOfPack: db.prepare('SELECT hash, value_offset AS valueOffset, value_length AS valueLength, block_offset AS blockOffset, length FROM pack_blocks WHERE pack = ? ORDER BY value_offset, block_offset'),
      hasEntry: db.prepare('SELECT 1 FROM pack_blocks WHERE hash = ?').pluck(),
      usage: db.prepare(
        `SELECT p.id AS pack, p.name AS name, p.remote_id AS remoteId, p.size AS size,
                coalesce(u.bytes, 0) AS liveValueBytes, coalesce(u.blocks, 0) AS liveBlocks
           FROM packs p LEFT JOIN (
             SELECT pack, sum(value_length) AS bytes, sum(n) AS blocks FROM (
               SELECT pack, value_offset, value_length, count(*) AS n FROM pack_blocks
                WHERE hash IN (SELECT hash FROM blocks) GROUP BY pack, value_offset
             ) GROUP BY pack
           ) u ON u.pack = p.id ORDER BY p.id`,
      ),
      deadEntries: db.prepare('SELECT hash FROM pack_blocks WHERE hash NOT IN (SELECT hash FROM blocks)').pluck(),
      remoteBytes: db.prepare('SELECT count(*) AS packs, coalesce(sum(size), 0) AS bytes FROM packs'),
      addPin: db.prepare('INSERT OR IGNORE INTO pins (ino) VALUES (?)'),
      removePin: db.prepare('DELETE FROM pins WHERE ino = ?'),
      pins: db.prepare('SELECT ino FROM pins ORDER BY ino').pluck(),
      pinnedHashes: db.prepare(
        `WITH RECURSIVE tree(ino) AS (
           SELECT ino FROM pins
           UNION SELECT d.ino FROM dentries d JOIN tree t ON d.parent = t.ino
         )
         SELECT DISTINCT b.hash AS hash, b.len AS len FROM blocks b JOIN tree t ON b.ino = t.ino`,
      ),
      treeBlocks: db.prepare(
        `WITH RECURSIVE tree(ino) AS (
           SELECT ?
           UNION SELECT d.ino FROM dentries d JOIN tree t ON d.parent = t.ino
         )
         SELECT DISTINCT b.hash AS hash, b.len AS len FROM blocks b JOIN tree t ON b.ino = t.ino`,
      ),
      getState: db.prepare('SELECT value FROM volume_state WHERE key = ?').pluck(),
      setState: db.prepare('INSERT OR REPLACE INTO volume_state (key, value) VALUES (?, ?)'),
    };
  }

  /** Records an uploaded pack and its blocks in one transaction; returns the pack's id. Later locations of a block replace earlier ones. */
  addPack(name: string, remoteId: string, size: number, entries: readonly PackEntry[]): number {
    return this.db.transaction(() => {
      const id = Number(this.s.insertPack.run(name, remoteId, size, BigInt(Date.now()) * 1000000n).lastInsertRowid);
      for (const e of entries) this.s.upsertEntry.run(e.hash, id, e.valueOffset, e.valueLength, e.blockOffset, e.length);
      return id;
    })();
  }

  /**
   * Records a pack another machine uploaded (found in the shared pack index), adding its
   * entries to the pack's row when the pack is known here already.
   */
  recordPack(pack: SharedPack): void {
    this.db.transaction(() => {
      const known = this.packByName(pack.name);
      const id = known ? known.id : Number(this.s.insertPack.run(pack.name, pack.remoteId, pack.size, BigInt(Date.now()) * 1000000n).lastInsertRowid);
      for (const e of pack.entries) this.s.upsertEntry.run(e.hash, id, e.valueOffset, e.valueLength, e.blockOffset, e.length);
    })();
  }

  packByName(name: string): PackRow | undefined {
    return this.s.packByName.get(name) as PackRow | undefined;
  }

  packs(): PackRow[] {
    return this.s.allPacks.all() as PackRow[];
  }

  /** Forgets every pack and block location (before rebuilding them from the packs' own indexes). */
  clear(): void {
    this.s.clearEntries.run();
    this.s.clearPacks.run();
  }

  deletePack(id: number): void {
    this.s.deletePack.run(id);
  }

  locate(hash: Buffer): BlockLocation | undefined {
    return this.s.locate.get(hash) as BlockLocation | undefined;
  }

  has(hash: Buffer): boolean {
    return this.s.hasEntry.get(hash) !== undefined;
  }

  /** The blocks held by the value at `valueOffset` of a pack (a loose block, or every member of a super-chunk). */
  valueMembers(pack: number, valueOffset: number): { hash: Buffer; blockOffset: number; length: number }[] {
    return this.s.members.all(pack, valueOffset) as { hash: Buffer; blockOffset: number; length: number }[];
  }

  entriesOf(pack: number): PackEntry[] {
    return this.s.entriesOfPack.all(pack) as PackEntry[];
  }

  deleteEntries(hashes: readonly Buffer[]): void {
    this.db.transaction(() => {
      for (const h of hashes) this.s.deleteEntry.run(h);
    })();
  }

  /** Per pack: its size and how much of it still holds blocks some file references. */
  usage(): PackUsage[] {
    return this.s.usage.all() as PackUsage[];
  }

  /** Entries of blocks no file references any more. */
  deadEntries(): Buffer[] {
    return this.s.deadEntries.all() as Buffer[];
  }

  totals(): { packs: number; bytes: number } {
    return this.s.remoteBytes.get() as { packs: number; bytes: number };
  }

  addPin(ino: number): void {
    this.s.addPin.run(ino);
  }

  removePin(ino: number): boolean {
    return this.s.removePin.run(ino).changes > 0;
  }

  pins(): number[] {
    return this.s.pins.all() as number[];
  }

  /** Distinct blocks of every file under a pinned inode. */
  pinnedBlocks(): { hash: Buffer; len: number }[] {
    return this.s.pinnedHashes.all() as { hash: Buffer; len: number }[];
  }

  /** Distinct blocks of every file at or under `ino`. */
  treeBlocks(ino: number): { hash: Buffer; len: number }[] {
    return this.s.treeBlocks.all(ino) as { hash: Buffer; len: number }[];
  }

  state(key: string): string | undefined {
    return this.s.getState.get(key) as string | undefined;
  }

  setState(key: string, value: string): void {
    this.s.setState.run(key, value);
  }
}
