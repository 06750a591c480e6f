import type Database from 'better-sqlite3';
import type { ParkedBlock } from './engine';

/** A parked block with its place in the sequence. */
export interface ParkedRow extends ParkedBlock {
  seq: number;
}

/**
 * The `parked_blocks` table (see MetaBlockParking): blocks of files just closed, kept
 * in the metadata until the block store has them durably. Statements are prepared on
 * first use: a read-only open of an older volume has no such table.
 */
export class ParkedBlocks {
  private s: ReturnType<ParkedBlocks['prepare']> | undefined;

  constructor(private readonly db: Database.Database) {}

  private prepare() {
    const db = this.db;
    return {
      insert: db.prepare('INSERT INTO parked_blocks (hash, data) VALUES (?, ?)'),
      after: db.prepare('SELECT seq, hash, data FROM parked_blocks WHERE seq > ? ORDER BY seq'),
      drop: db.prepare('DELETE FROM parked_blocks WHERE seq <= ?'),
      exists: db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'parked_blocks'").pluck(),
      sequence: db.prepare("SELECT seq FROM sqlite_sequence WHERE name = 'parked_blocks'").pluck(),
      setSequence: db.prepare("UPDATE sqlite_sequence SET seq = ? WHERE name = 'parked_blocks'"),
      addSequence: db.prepare("INSERT INTO sqlite_sequence (name, seq) VALUES ('parked_blocks', ?)"),
    };
  }

  private get st(): ReturnType<ParkedBlocks['prepare']> {
    this.s ??= this.prepare();
    return this.s;
  }

  /** Parks blocks (inside the caller's transaction); returns the last one's sequence number (0: none given). */
  park(blocks: readonly ParkedBlock[]): number {
    let seq = 0;
    for (const b of blocks) seq = Number(this.st.insert.run(b.hash, b.data ?? null).lastInsertRowid);
    return seq;
  }

  /** Parked blocks after `seq`, in order (none on a volume from before parking). */
  after(seq: number): ParkedRow[] {
    if (!this.st.exists.get()) return [];
    return (this.st.after.all(seq) as { seq: number; hash: Buffer; data: Buffer | null }[]).map((r) => ({
      seq: r.seq,
      hash: r.hash,
      data: r.data ?? undefined,
    }));
  }

  drop(seq: number): void {
    this.st.drop.run(seq);
  }

  /**
   * Keeps the sequence past `seq` (the last one the block store took). A crash of the
   * machine may take the metadata's newest rows, and with them its sequence, back while
   * the store's record survived: numbers handed out again would be taken as already stored.
   */
  continueAfter(seq: number): void {
    const current = this.st.sequence.get() as number | undefined;
    if (current === undefined) this.st.addSequence.run(seq);
    else if (current < seq) this.st.setSequence.run(seq);
  }
}
