import { MetadataError } from './meta-db';
import { PgSession, type PgSessionOptions } from './pg-session';
import { parsePgUrl } from './pg-url';
import type { PackEntry, SharedPack, SharedPackIndex } from './remote-index';

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
} as const;

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
