import type { PoolClient } from 'pg';
import { MetadataError, sqlIsDir, sqlIsReg } from './meta-db';
import { PG_SCHEMA_VERSION, pgSchemaVersion } from './pg-schema';
import { PgSession } from './pg-session';
import { parsePgUrl } from './pg-url';

/**
 * fsck's read of a PostgreSQL volume's metadata: every query of one check runs in ONE
 * `REPEATABLE READ READ ONLY` transaction, so the check sees one consistent snapshot
 * while other machines keep writing (and it can neither change nor lock anything they
 * need). The SQLite engine's whole-volume scans are MetaDb's (MetaScan); these are their
 * PostgreSQL counterparts, shaped for an asynchronous checker that lets the server do the
 * joins (and walk the tree) rather than hold every row in memory.
 */

/** A server that does not answer is given up after this (fsck is run by hand: it should say so soon). */
const CONNECT_WAIT_MS = 10_000;

export interface PgInodeCounts {
  inodes: number;
  files: number;
  directories: number;
  entries: number;
  blockRows: number;
  /** Distinct hashes the block rows reference. */
  hashes: number;
}

export interface PgInodeRow {
  ino: number;
  mode: number;
  nlink: number;
  size: number;
}

export interface PgEntryRow {
  parent: number;
  name: Buffer;
  ino: number;
}

/** A usable dentry's problem: its inode or its directory does not exist, or the directory is not one. */
export interface PgDanglingEntry extends PgEntryRow {
  why: 'no-inode' | 'no-parent' | 'parent-not-dir';
}

export interface PgPackRow {
  id: number;
  name: string;
  size: number;
}

export class PgScan {
  private constructor(
    private readonly session: PgSession,
    private readonly client: PoolClient,
    /** The schema version of the database (the transaction is open only when it is this pogfs's). */
    readonly schemaVersion: number,
  ) {}

  /**
   * Connects to the volume's database (`url` as meta.url records it) and opens the
   * snapshot every later call reads; a database of another schema version is only opened
   * (schemaVersion says which) so the caller can refuse it.
   */
  static async open(url: string): Promise<PgScan> {
    const m = /^postgres(?:ql)?:(.*)$/i.exec(url);
    if (!m) throw new MetadataError(`"${url}" is not a postgres:// URL`);
    const target = parsePgUrl(m[1]);
    const session = new PgSession(target.connectionString, { readOnly: true, reconnectWaitMs: CONNECT_WAIT_MS, warn: () => undefined });
    let client: PoolClient | undefined;
    try {
      client = await session.read((pool) => pool.connect());
      const version = await pgSchemaVersion(client);
      if (version === PG_SCHEMA_VERSION) await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      return new PgScan(session, client, version);
    } catch (err) {
      client?.release();
      await session.close().catch(() => undefined);
      throw new MetadataError(`cannot read the volume in ${target.url}: ${(err as Error).message}`);
    }
  }

  async close(): Promise<void> {
    await this.client.query('ROLLBACK').catch(() => undefined);
    this.client.release();
    await this.session.close();
  }

  private async rows<T>(text: string, values: unknown[] = []): Promise<T[]> {
    return (await this.client.query(text, values)).rows as T[];
  }

  async counts(): Promise<PgInodeCounts> {
    const [r] = await this.rows<PgInodeCounts>(
      `SELECT (SELECT count(*) FROM inodes) AS inodes,
              (SELECT count(*) FROM inodes WHERE ${sqlIsReg('mode')}) AS files,
              (SELECT count(*) FROM inodes WHERE ${sqlIsDir('mode')}) AS directories,
              (SELECT count(*) FROM dentries) AS entries,
              (SELECT count(*) FROM blocks) AS "blockRows",
              (SELECT count(DISTINCT hash) FROM blocks) AS hashes`,
    );
    return r;
  }

  /** The root inode (inode 1), if there is one. */
  async root(): Promise<PgInodeRow | undefined> {
    return (await this.rows<PgInodeRow>('SELECT ino, mode, nlink, size FROM inodes WHERE ino = 1'))[0];
  }

  /** Every entry (for naming files by path: fsck names what it reports). */
  async entries(): Promise<PgEntryRow[]> {
    return this.rows<PgEntryRow>('SELECT parent, name, ino FROM dentries ORDER BY parent, name');
  }

  async danglingEntries(): Promise<PgDanglingEntry[]> {
    return this.rows<PgDanglingEntry>(
      `SELECT d.parent, d.name, d.ino,
              CASE WHEN c.ino IS NULL THEN 'no-inode' WHEN p.ino IS NULL THEN 'no-parent' ELSE 'parent-not-dir' END AS why
         FROM dentries d LEFT JOIN inodes c ON c.ino = d.ino LEFT JOIN inodes p ON p.ino = d.parent
        WHERE c.ino IS NULL OR p.ino IS NULL OR NOT ${sqlIsDir('p.mode')}
        ORDER BY d.parent, d.name`,
    );
  }

  /**
   * Inodes whose link count is not what the usable entries say (entries naming an existing
   * inode from an existing directory; a directory: 2 plus its subdirectories). An inode
   * with no links and no entries is left out: it is dead, or held open (deadInodes).
   */
  async linkCountMismatches(): Promise<{ ino: number; nlink: number; want: number }[]> {
    return this.rows(
      `WITH usable AS (
         SELECT d.parent, d.ino, ${sqlIsDir('c.mode')} AS is_dir
           FROM dentries d JOIN inodes p ON p.ino = d.parent AND ${sqlIsDir('p.mode')} JOIN inodes c ON c.ino = d.ino),
       links AS (SELECT ino, count(*) AS n FROM usable GROUP BY ino),
       subdirs AS (SELECT parent AS ino, count(*) AS n FROM usable WHERE is_dir GROUP BY parent),
       wanted AS (
         SELECT i.ino, i.nlink, l.n AS links,
                CASE WHEN ${sqlIsDir('i.mode')} THEN 2 + coalesce(s.n, 0) ELSE coalesce(l.n, 0) END AS want
           FROM inodes i LEFT JOIN links l ON l.ino = i.ino LEFT JOIN subdirs s ON s.ino = i.ino)
       SELECT ino, nlink, want FROM wanted
        WHERE nlink <> want AND NOT (nlink = 0 AND links IS NULL AND ino <> 1)
        ORDER BY ino`,
    );
  }

  /**
   * Inodes the root does not reach (one recursive query down the tree; UNION stops at a
   * cycle), apart from those with no links and no entries (dead or held open: deadInodes).
   */
  async unreachable(): Promise<PgInodeRow[]> {
    return this.rows<PgInodeRow>(
      `WITH RECURSIVE reach(ino) AS (
         SELECT ino FROM inodes WHERE ino = 1 AND ${sqlIsDir('mode')}
         UNION
         SELECT d.ino FROM reach r JOIN inodes p ON p.ino = r.ino AND ${sqlIsDir('p.mode')}
           JOIN dentries d ON d.parent = r.ino)
       SELECT i.ino, i.mode, i.nlink, i.size FROM inodes i
        WHERE i.ino <> 1
          AND NOT EXISTS (SELECT 1 FROM reach r WHERE r.ino = i.ino)
          AND NOT (i.nlink = 0 AND NOT EXISTS (SELECT 1 FROM dentries d WHERE d.ino = i.ino))
        ORDER BY i.ino`,
    );
  }

  /** Directories named by more than one entry, and entries naming the root (a directory has one parent). */
  async directoriesLinkedTwice(): Promise<{ ino: number; links: number }[]> {
    return this.rows(
      `SELECT d.ino, count(*) AS links FROM dentries d JOIN inodes c ON c.ino = d.ino
        WHERE ${sqlIsDir('c.mode')} GROUP BY d.ino HAVING count(*) > 1 OR d.ino = 1 ORDER BY d.ino`,
    );
  }

  /**
   * Inodes with no links and no entries that no live session holds open: leaks. A session
   * is live when its heartbeat is within `expiryMs` of the snapshot's time (now(): the
   * transaction's start, so a long check does not see a live session expire under it).
   */
  async deadInodes(expiryMs: number): Promise<PgInodeRow[]> {
    return this.rows<PgInodeRow>(
      `SELECT i.ino, i.mode, i.nlink, i.size FROM inodes i
        WHERE i.nlink = 0 AND i.ino <> 1
          AND NOT EXISTS (SELECT 1 FROM dentries d WHERE d.ino = i.ino)
          AND NOT EXISTS (SELECT 1 FROM session_opens o JOIN sessions s ON s.id = o.session_id
                           WHERE o.ino = i.ino AND s.heartbeat >= now() - $1 * interval '1 millisecond')
        ORDER BY i.ino`,
      [expiryMs],
    );
  }

  /** How many mount sessions are live (heartbeat within `expiryMs` of the snapshot's time). */
  async liveSessions(expiryMs: number): Promise<number> {
    const [r] = await this.rows<{ n: number }>("SELECT count(*) AS n FROM sessions WHERE heartbeat >= now() - $1 * interval '1 millisecond'", [expiryMs]);
    return r.n;
  }

  /** Inode numbers that own block, symlink or xattr rows but have no inode row. */
  async strayRowOwners(): Promise<{ ino: number; blocks: number; symlinks: number; xattrs: number }[]> {
    return this.rows(
      `SELECT ino, sum(kb) AS blocks, sum(ks) AS symlinks, sum(kx) AS xattrs FROM (
         SELECT ino, count(*) AS kb, 0 AS ks, 0 AS kx FROM blocks GROUP BY ino
         UNION ALL SELECT ino, 0, 1, 0 FROM symlinks
         UNION ALL SELECT ino, 0, 0, count(*) FROM xattrs GROUP BY ino
       ) t WHERE NOT EXISTS (SELECT 1 FROM inodes i WHERE i.ino = t.ino) GROUP BY ino ORDER BY ino`,
    );
  }

  /** Block rows past their file's size, or of an inode that is not a regular file. */
  async blockRowsPastSize(blockSize: number): Promise<{ ino: number; idx: number; len: number; size: number; mode: number }[]> {
    return this.rows(
      `SELECT b.ino, b.idx, b.len, i.size, i.mode FROM blocks b JOIN inodes i ON i.ino = b.ino
        WHERE NOT ${sqlIsReg('i.mode')} OR b.idx * $1 >= i.size OR b.idx * $1 + b.len > i.size
        ORDER BY b.ino, b.idx`,
      [blockSize],
    );
  }

  /** Regular files whose stored_bytes disagrees with the lengths of their block rows. */
  async storedBytesMismatches(): Promise<{ ino: number; stored: number; actual: number }[]> {
    return this.rows(
      `SELECT i.ino, i.stored_bytes AS stored, coalesce(s.n, 0) AS actual
         FROM inodes i LEFT JOIN (SELECT ino, sum(len) AS n FROM blocks GROUP BY ino) s ON s.ino = i.ino
        WHERE ${sqlIsReg('i.mode')} AND i.stored_bytes <> coalesce(s.n, 0)
        ORDER BY i.ino`,
    );
  }

  /** The distinct hashes block rows reference, in hash order, `limit` at a time after `after`. */
  async referencedHashes(after: Buffer | undefined, limit: number): Promise<Buffer[]> {
    const rows = await this.rows<{ hash: Buffer }>(
      'SELECT DISTINCT hash FROM blocks WHERE $1::bytea IS NULL OR hash > $1::bytea ORDER BY hash LIMIT $2',
      [after ?? null, limit],
    );
    return rows.map((r) => r.hash);
  }

  /**
   * Referenced hashes no machine can read from the shared remote: no pack_blocks entry, or
   * an entry whose pack row is missing (`pack` is then the pack it names).
   */
  async hashesOutsidePacks(): Promise<{ hash: Buffer; pack: number | null }[]> {
    return this.rows(
      `SELECT h.hash, pb.pack FROM (SELECT DISTINCT hash FROM blocks) h
         LEFT JOIN pack_blocks pb ON pb.hash = h.hash LEFT JOIN packs p ON p.id = pb.pack
        WHERE p.id IS NULL ORDER BY h.hash`,
    );
  }

  async blockRowsOf(hash: Buffer): Promise<{ ino: number; idx: number; len: number }[]> {
    return this.rows('SELECT ino, idx, len FROM blocks WHERE hash = $1 ORDER BY ino, idx', [hash]);
  }

  /** The packs the shared index names. */
  async packs(): Promise<PgPackRow[]> {
    return this.rows<PgPackRow>('SELECT id, name, size FROM packs ORDER BY id');
  }

  /** The blocks of pack `id` that block rows reference (what is lost when the pack is). */
  async liveBlocksOf(pack: number): Promise<Buffer[]> {
    const rows = await this.rows<{ hash: Buffer }>(
      'SELECT pb.hash FROM pack_blocks pb WHERE pb.pack = $1 AND EXISTS (SELECT 1 FROM blocks b WHERE b.hash = pb.hash) ORDER BY pb.value_offset',
      [pack],
    );
    return rows.map((r) => r.hash);
  }
}
