import { MetadataError, type Superblock } from './meta-db';
import { pgSchemaVersion } from './pg-schema';
import { PgSession } from './pg-session';
import { parsePgUrl } from './pg-url';
import { VOLUME_MAGIC } from './schema';

/** What a machine joining a PostgreSQL volume needs before it has a volume directory. */
export interface PgVolumeInfo {
  /** The URL as recorded (postgres://…, no password). */
  url: string;
  superblock: Superblock;
  /** The volume's settings as `pogfs init` stored them (key → text). */
  settings: Record<string, string>;
}

/** A server that does not answer is given up after this when joining (a mount waits longer once running). */
const JOIN_WAIT_MS = 10_000;

/**
 * Reads the superblock and the settings of the volume whose metadata is in the database
 * `url` names, claiming nothing and changing nothing.
 */
export async function readPgVolumeInfo(url: string): Promise<PgVolumeInfo> {
  const m = /^postgres(?:ql)?:(.*)$/i.exec(url);
  if (!m) throw new MetadataError(`"${url}" is not a postgres:// URL`);
  const target = parsePgUrl(m[1]);
  const session = new PgSession(target.connectionString, { readOnly: true, reconnectWaitMs: JOIN_WAIT_MS, warn: () => undefined });
  try {
    return await session.read(async (pool) => {
      const client = await pool.connect();
      try {
        if ((await pgSchemaVersion(client)) === 0) throw new MetadataError(`${target.url} has no pogfs schema: not a pogfs volume`);
      } finally {
        client.release();
      }
      const sb = (await pool.query('SELECT magic, format_version, block_size, hash_algorithm, uuid, created_ns FROM superblock WHERE id = 1')).rows[0] as Superblock | undefined;
      if (!sb || sb.magic !== VOLUME_MAGIC) throw new MetadataError(`${target.url} holds no pogfs volume`);
      const rows = (await pool.query('SELECT key, value FROM settings ORDER BY key')).rows as { key: string; value: string }[];
      return { url: target.url, superblock: { ...sb }, settings: Object.fromEntries(rows.map((r) => [r.key, r.value])) };
    });
  } catch (err) {
    if (err instanceof MetadataError) throw err;
    throw new MetadataError(`cannot read the volume in ${target.url}: ${(err as Error).message}`);
  } finally {
    await session.close().catch(() => undefined);
  }
}
