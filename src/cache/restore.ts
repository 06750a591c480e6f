import type { ProgressSink } from '../progress';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import type { MetaDb } from '../meta/meta-db';
import type { PackEntry } from '../meta/remote-index';
import type { Remote, RemoteObject } from '../remote/remote';
import { RemoteError } from '../remote/remote';
import { listGenerations } from './meta-backup';
import { PACK_TRAILER_SIZE, decodeIndex, indexLength } from './pack-format';

/**
 * Bringing a volume back from its remote: the newest metadata generation, plus the
 * packs' own indexes for what that generation does not know (packs uploaded after it,
 * or every pack when the block index itself must be rebuilt).
 */

export interface RestoredMetadata {
  generation: number;
  name: string;
  bytes: number;
}

/** Downloads the newest metadata generation into `metaPath` (which must not exist). */
export async function downloadNewestMetadata(remote: Remote, metaPath: string): Promise<RestoredMetadata> {
  const generations = await listGenerations(remote);
  if (generations.length === 0) {
    throw new RemoteError(`${remote.description} holds no pogfs metadata backup: nothing to mount (create a volume there with pogfs init VOLUME --remote ...)`, 'not-found');
  }
  let lastError: unknown;
  // A generation that cannot be read or decompressed is skipped for the one before it.
  for (const g of generations) {
    try {
      const raw = gunzipSync(await remote.read(g));
      if (raw.subarray(0, 16).toString('latin1') !== 'SQLite format 3\0') throw new Error('not an SQLite database');
      const temp = `${metaPath}.restoring`;
      writeFileSync(temp, raw, { mode: 0o600 });
      renameSync(temp, metaPath);
      return { generation: g.generation, name: g.name, bytes: raw.length };
    } catch (err) {
      lastError = err;
      rmSync(`${metaPath}.restoring`, { force: true });
    }
  }
  throw new RemoteError(`no metadata backup on ${remote.description} could be read: ${(lastError as Error).message}`, 'io');
}

/** A pack's own index, from two ranged reads (the trailer, then the index before it). */
export async function readPackIndex(remote: Remote, pack: RemoteObject): Promise<PackEntry[]> {
  if (pack.size < PACK_TRAILER_SIZE + 4) throw new Error(`pack ${pack.name} is ${pack.size} bytes: too short to be a pack`);
  const trailer = await remote.read(pack, pack.size - PACK_TRAILER_SIZE, PACK_TRAILER_SIZE);
  const length = indexLength(trailer);
  if (length > pack.size - PACK_TRAILER_SIZE) throw new Error(`pack ${pack.name}: its index would be longer than the pack`);
  const index = await remote.read(pack, pack.size - PACK_TRAILER_SIZE - length, length);
  return decodeIndex(index, trailer, pack.size);
}

export interface PackScan {
  /** Packs read and added to the index. */
  packs: number;
  blocks: number;
  /** Packs whose index could not be read, with why. */
  unreadable: { name: string; problem: string }[];
}

/**
 * Adds every pack on the remote that the metadata does not list (or, with `all`, every
 * pack, after forgetting the old rows) from the packs' own indexes. Packs are added in
 * name order; a block found in several keeps the last location read.
 */
export async function indexPacks(remote: Remote, meta: MetaDb, options: { all?: boolean; progress?: ProgressSink } = {}): Promise<PackScan> {
  const index = meta.remote;
  if (options.all) {
    meta.durableTransaction(() => index.clear());
  }
  const scan: PackScan = { packs: 0, blocks: 0, unreadable: [] };
  const remotePacks = (await remote.list('pack')).sort((a, b) => a.name.localeCompare(b.name));
  options.progress?.start('reading pack indexes');
  let seen = 0;
  let bytes = 0;
  for (const pack of remotePacks) {
    options.progress?.update(seen++, remotePacks.length, bytes);
    bytes += pack.size;
    if (index.packByName(pack.name)) continue;
    let entries: PackEntry[];
    try {
      entries = await readPackIndex(remote, pack);
    } catch (err) {
      scan.unreadable.push({ name: pack.name, problem: (err as Error).message });
      continue;
    }
    meta.durableTransaction(() => index.addPack(pack.name, pack.id, pack.size, entries));
    scan.packs++;
    scan.blocks += entries.length;
  }
  options.progress?.update(seen, remotePacks.length, bytes);
  return scan;
}
