import { MetadataError } from './meta-db';
import { PgSession, type PgSessionOptions } from './pg-session';
import { parsePgUrl } from './pg-url';
import type { PackEntry, SharedPack, SharedPackIndex, SharedPackUsage } from './remote-index';

/** The shared pack index's statements (its tables are pg-schema.ts's third migration). */
const SQL = {
  // A pack published again (a retry after a lost reply, or the same bytes uploaded by two
  // machines: packs are named by their content) keeps its row.
  publishPack: `INSERT INTO packs (name, remote_id, size, created_ns) VALUES ($1, $2, $3, $4)
      ON CONFLICT (name) DO UPDATE SET remote_id = EXCLUDED.remote_id, size = EXCLUDED.size RETURNING id`,
  // Later locations of a block replace earlier ones, as in the SQLite index (RemoteIndex.addPack).
  publishEntries: `INSERT INTO pack_blocks (hash, pack, value_offset, value_length, block_offset, length)
      SELECT e.hash, $1, e.value_offset, e.value_length, e.block_offset, e.length
        FROM unnest($2::bytea[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[]) AS e(hash, value_offset, value_length, block_offset, length)
      ON CONFLICT (hash) DO UPDATE SET pack = EXCLUDED.pack, value_offset = EXCLUDED.value_offset,
        value_length = EXCLUDED.value_length, block_offset = EXCLUDED.block_offset, length = EXCLUDED.length`,
  packsHolding: `SELECT id, name, remote_id AS "remoteId", size FROM packs
      WHERE id IN (SELECT pack FROM pack_blocks WHERE hash = ANY($1::bytea[])) ORDER BY id`,
  entriesOfPacks: `SELECT pack, hash, value_offset AS "valueOffset", value_length AS "valueLength", block_offset AS "blockOffset", length
      FROM pack_blocks WHERE pack = ANY($1::bigint[]) ORDER BY pack, value_offset, block_offset`,
  // gc: each pack with its entries and what of them a row of `blocks` names (live), by
  // stored value, as RemoteIndex.usage computes it for a SQLite volume.
  usage: `WITH e AS (
        SELECT pb.pack, pb.value_offset, pb.value_length, EXISTS (SELECT 1 FROM blocks b WHERE b.hash = pb.hash) AS live FROM pack_blocks pb
      ), v AS (
        SELECT pack, value_offset, max(value_length) AS len, bool_or(live) AS live, count(*) AS n, count(*) FILTER (WHERE live) AS nlive
          FROM e GROUP BY pack, value_offset
      )
      SELECT p.id AS pack, p.name, p.remote_id AS "remoteId", p.size, p.created_ns AS "createdNs",
             coalesce(sum(v.n), 0)::bigint AS entries, coalesce(sum(v.nlive), 0)::bigint AS "liveBlocks",
             coalesce(sum(v.len) FILTER (WHERE v.live), 0)::bigint AS "liveValueBytes"
        FROM packs p LEFT JOIN v ON v.pack = p.id GROUP BY p.id ORDER BY p.id`,
  liveEntriesOf: `SELECT pb.hash FROM pack_blocks pb WHERE pb.pack = $1 AND EXISTS (SELECT 1 FROM blocks b WHERE b.hash = pb.hash)`,
  // The pack's row first (a publication of the same name waits), then its entries in hash
  // order (as commits take FOR KEY SHARE and publications update them).
  lockPack: 'SELECT id FROM packs WHERE id = $1 FOR UPDATE',
  lockEntriesOf: 'SELECT hash FROM pack_blocks WHERE pack = $1 ORDER BY hash FOR UPDATE',
  // A statement of its own, after the locks: it sees every commit that ended while they were awaited.
  deleteDeadEntriesOf: `DELETE FROM pack_blocks pb WHERE pb.pack = $1 AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.hash = pb.hash) RETURNING pb.hash`,
  deleteEmptyPack: `DELETE FROM packs p WHERE p.id = $1 AND NOT EXISTS (SELECT 1 FROM pack_blocks pb WHERE pb.pack = p.id)
      RETURNING p.name, p.remote_id AS "remoteId", p.size`,
  packNamed: 'SELECT 1 FROM packs WHERE name = $1',
  lockName: 'SELECT pg_advisory_lock($1, hashtext($2))',
  unlockName: 'SELECT pg_advisory_unlock($1, hashtext($2))',
} as const;

/** The first key of the advisory locks on pack names ("pogp"); the second is the name's hash. */
const PACK_NAME_LOCK = 0x706f6770;

/** How long the index waits for a lost server before an upload or a fetch fails (the uploader tries again). */
const RECONNECT_WAIT_MS = 30_000;

/**
 * The pack index of a volume whose metadata is in PostgreSQL and whose blocks several
 * machines share through one remote: each machine publishes the packs it uploads here
 * before any row referencing their blocks is committed, and looks here for blocks its own
 * index (meta.db, a cache of this one) does not know. A connection of its own, so that an
 * upload never waits behind the namespace's changes, nor they behind it.
 *
 * Its commits are asynchronous, as the engine's are: a crash of the server may lose the
 * last ones, but only as a suffix of its log, and a row referencing a block is committed
 * (by this machine or by one that saw the pack) after the pack's publication: a row that
 * survives names blocks whose publication survived too.
 */
export class PgPackIndex implements SharedPackIndex {
  private constructor(private readonly session: PgSession) {}

  /** Connects to the database `url` (postgres://USER@HOST[:PORT]/DB) names. */
  static open(url: string, options: Pick<PgSessionOptions, 'warn' | 'reconnectWaitMs'> = {}): PgPackIndex {
    const m = /^postgres(?:ql)?:(.*)$/i.exec(url);
    if (!m) throw new MetadataError(`"${url}" is not a postgres:// URL`);
    const target = parsePgUrl(m[1]);
    return new PgPackIndex(new PgSession(target.connectionString, { reconnectWaitMs: RECONNECT_WAIT_MS, ...options }));
  }

  /**
   * Runs `fn` (an upload and publication of pack `name`, or gc's delete of its object)
   * holding a lock on the name across machines: packs are named by their content, so a
   * machine may upload again, under the same name, a pack gc is deleting (its blocks were
   * removed from the index and are committed again). gc deletes the object only while no
   * pack of that name is in the index, and a publication waits for the delete to end.
   */
  // Holds one connection of the pool (PgSession's, of 4) while `fn` may take another: the
  // uploader's two parallel uploads and one gc leave one free, so they cannot starve each other.
  async holdingName<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const client = await this.session.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query({ name: 'pogfs_lockPackName', text: SQL.lockName, values: [PACK_NAME_LOCK, name] });
      try {
        return await fn();
      } finally {
        await client.query({ name: 'pogfs_unlockPackName', text: SQL.unlockName, values: [PACK_NAME_LOCK, name] }).catch((err: Error) => {
          broken = err;
        });
      }
    } catch (err) {
      broken ??= err as Error;
      throw err;
    } finally {
      // A connection whose unlock failed is dropped: the server releases its locks with it.
      client.release(broken);
    }
  }

  /** Whether the index holds a pack named `name`. */
  async hasPack(name: string): Promise<boolean> {
    return this.session.read(async (pool) => (await pool.query({ name: 'pogfs_packNamed', text: SQL.packNamed, values: [name] })).rows.length > 0);
  }

  /** Every pack with its entries and how many of them, and which of its stored bytes, some file references. */
  async usage(): Promise<SharedPackUsage[]> {
    const rows = await this.session.read(async (pool) => (await pool.query({ name: 'pogfs_packUsage', text: SQL.usage, values: [] })).rows as Record<string, unknown>[]);
    return rows.map((r) => ({
      pack: Number(r.pack),
      name: r.name as string,
      remoteId: r.remoteId as string,
      size: Number(r.size),
      createdNs: BigInt(r.createdNs as string),
      entries: Number(r.entries),
      liveBlocks: Number(r.liveBlocks),
      liveValueBytes: Number(r.liveValueBytes),
    }));
  }

  /** The blocks of pack `pack` some file references. */
  async liveEntriesOf(pack: number): Promise<Buffer[]> {
    return this.session.read(async (pool) => ((await pool.query({ name: 'pogfs_liveEntriesOf', text: SQL.liveEntriesOf, values: [pack] })).rows as { hash: Buffer }[]).map((r) => r.hash));
  }

  /**
   * gc of one pack, in one transaction: its entries no file references are deleted, and
   * the pack's row when no entry is left (its object on the remote is the caller's to
   * delete, after this commits). The entries are locked FOR UPDATE first, so a commit
   * naming one of them (FOR KEY SHARE) either ended before, and its rows keep the entry,
   * or waits, and then finds it gone (BlocksNotPublished: it uploads the block again).
   */
  async collectPack(pack: number): Promise<{ deadEntries: Buffer[]; deletedPack?: { name: string; remoteId: string; size: number } }> {
    return this.session.change(async (c) => {
      const exists = await c.query({ name: 'pogfs_lockPack', text: SQL.lockPack, values: [pack] });
      if (exists.rows.length === 0) return { deadEntries: [] };
      await c.query({ name: 'pogfs_lockEntriesOf', text: SQL.lockEntriesOf, values: [pack] });
      const dead = ((await c.query({ name: 'pogfs_deleteDeadEntriesOf', text: SQL.deleteDeadEntriesOf, values: [pack] })).rows as { hash: Buffer }[]).map((r) => r.hash);
      const gone = (await c.query({ name: 'pogfs_deleteEmptyPack', text: SQL.deleteEmptyPack, values: [pack] })).rows as { name: string; remoteId: string; size: number | string }[];
      return { deadEntries: dead, deletedPack: gone[0] && { name: gone[0].name, remoteId: gone[0].remoteId, size: Number(gone[0].size) } };
    });
  }

  async publish(pack: SharedPack): Promise<void> {
    // In hash order: two machines publishing packs that share blocks lock them in one order.
    const entries = [...pack.entries].sort((a, b) => Buffer.compare(a.hash, b.hash));
    await this.session.change(async (c) => {
      const r = await c.query({ name: 'pogfs_publishPack', text: SQL.publishPack, values: [pack.name, pack.remoteId, pack.size, (BigInt(Date.now()) * 1000000n).toString()] });
      const id = (r.rows[0] as { id: number }).id;
      await c.query({
        name: 'pogfs_publishEntries',
        text: SQL.publishEntries,
        values: [
          id,
          entries.map((e) => e.hash),
          entries.map((e) => e.valueOffset),
          entries.map((e) => e.valueLength),
          entries.map((e) => e.blockOffset),
          entries.map((e) => e.length),
        ],
      });
    });
  }

  async locate(hashes: readonly Buffer[]): Promise<SharedPack[]> {
    if (hashes.length === 0) return [];
    return this.session.read(async (pool) => {
      const packs = (await pool.query({ name: 'pogfs_packsHolding', text: SQL.packsHolding, values: [hashes] })).rows as { id: number; name: string; remoteId: string; size: number }[];
      if (packs.length === 0) return [];
      const rows = (await pool.query({ name: 'pogfs_entriesOfPacks', text: SQL.entriesOfPacks, values: [packs.map((p) => p.id)] })).rows as (PackEntry & { pack: number })[];
      const byPack = new Map<number, PackEntry[]>(packs.map((p) => [p.id, []]));
      for (const { pack, ...entry } of rows) byPack.get(pack)?.push(entry);
      return packs.map((p) => ({ name: p.name, remoteId: p.remoteId, size: p.size, entries: byPack.get(p.id) ?? [] }));
    });
  }

  async close(): Promise<void> {
    await this.session.close();
  }
}
