import { existsSync, readFileSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { MetadataError } from '../meta/meta-db';
import { readPgVolumeInfo } from '../meta/pg-volume-info';
import { HASH_ALGORITHM } from '../store/hash';
import { Volume, VolumeFiles } from '../vfs/volume';
import { readSettings, type VolumeSettings } from '../vfs/volume-settings';
import { UsageError } from './errors';

/**
 * `pogfs mount postgres://USER@HOST[:PORT]/DB MOUNTPOINT` on a machine joining a volume
 * whose metadata is in PostgreSQL: a local cache volume directory (its own block store, a
 * meta.db holding the volume's settings but no namespace, and meta.url naming the
 * database) is created the first time and reused after, then mounted as any volume is.
 */

/** A `postgres://` (or `postgresql://`) URL rather than a volume directory. */
export function isPgUrl(spec: string): boolean {
  return /^postgres(ql)?:\/\//i.test(spec);
}

/** Where a joined volume's cache lives unless told: one directory per volume (by its UUID) under the cache directory. */
export function defaultJoinCacheDir(uuid: string): string {
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'pogfs', uuid);
}

export interface JoinOptions {
  /** Where to keep the cache volume (default: defaultJoinCacheDir). */
  cacheDir?: string;
  notice: (line: string) => void;
}

/** The cache volume directory of the volume in the database `url`, created when missing; returns its path. */
export async function joinPostgresVolume(url: string, o: JoinOptions): Promise<string> {
  let info: Awaited<ReturnType<typeof readPgVolumeInfo>>;
  try {
    info = await readPgVolumeInfo(url);
  } catch (err) {
    if (!(err instanceof MetadataError)) throw err;
    // A URL refused as written says what to do already; a server not reached is a failure (1), not a usage error.
    if (/PGPASSWORD/.test(err.message)) throw new UsageError(err.message);
    const unreachable = /unreachable/.test(err.message);
    throw new UsageError(`${err.message} (check the URL, that the server is up, and PGPASSWORD, ~/.pgpass or PGPASSFILE)`, unreachable ? 1 : 2);
  }
  let settings: VolumeSettings;
  try {
    settings = readSettings(info.settings);
  } catch (err) {
    throw new UsageError(`${info.url}: ${(err as Error).message}`);
  }
  if (!settings.remote) {
    throw new UsageError(
      `${info.url} has no remote: its blocks are only in the volume directory of the machine that created it; mount that directory there (only a volume made with pogfs init --meta URL --remote SPEC can be mounted from other machines)`,
    );
  }
  if (info.superblock.hash_algorithm !== HASH_ALGORITHM) throw new UsageError(`${info.url}: unsupported hash algorithm ${info.superblock.hash_algorithm}`);
  const dir = resolve(o.cacheDir ?? defaultJoinCacheDir(info.superblock.uuid));
  if (Volume.exists(dir)) {
    checkCacheOf(dir, info.url);
    return dir;
  }
  const existed = existsSync(dir);
  try {
    const v = Volume.create(dir, { blockSize: info.superblock.block_size, ...settings });
    v.recordMetaUrl(info.url);
    await v.close();
  } catch (err) {
    // Volume.create refuses a file or a non-empty directory before writing anything there.
    if (!existed && existsSync(dir)) rmSync(dir, { recursive: true, force: true });
    throw err instanceof Error && err.name === 'VolumeError' ? new UsageError(`--cache-dir: ${err.message}`) : err;
  }
  o.notice(`pogfs: created the local cache of ${info.url} at ${dir}`);
  return dir;
}

/** An existing directory must be the cache of this very database, not a volume of its own nor another's cache. */
function checkCacheOf(dir: string, url: string): void {
  const urlFile = join(dir, VolumeFiles.metaUrl);
  if (!existsSync(urlFile)) throw new UsageError(`${dir} is a pogfs volume of its own, not a cache of ${url}: give another --cache-dir`);
  const recorded = readFileSync(urlFile, 'utf8').trim();
  if (recorded !== url) throw new UsageError(`${dir} is the cache of ${recorded}, not of ${url}: give another --cache-dir`);
}
