import { listGenerations, type MetaBackup } from '../cache/meta-backup';
import type { CacheLedger } from '../cache/cache-ledger';
import type { RemoteCache } from '../cache/remote-cache';
import type { PackUsage } from '../meta/remote-index';
import type { Remote } from '../remote/remote';
import type { Volume } from '../vfs/volume';
import type { ProgressSink } from '../progress';

/**
 * Garbage collection of a volume's remote: forgets the locations of blocks no file
 * references, rewrites packs that are mostly dead (their live blocks are fetched, marked
 * dirty and uploaded into new packs), deletes packs that hold nothing live and packs on
 * the remote that the index does not know (left by a crash between an upload and its
 * commit).
 *
 * Deleted packs may be named by older metadata generations; so before anything is
 * deleted a new generation is uploaded, and the older ones are pruned (a restore of one
 * of them would look for the deleted packs).
 */

export interface RemoteGcOptions {
  dryRun: boolean;
  /** Repack packs whose live share is below this (default: the volume's pack-repack-below). */
  repackBelow?: number;
  log: { info(msg: string): void; error(msg: string, err?: unknown): void };
  /** Told how far the repack and the deletes on the remote are (each is a remote call or several). */
  progress?: ProgressSink;
}

export interface RemoteGcResult {
  dryRun: boolean;
  packs: number;
  /** Locations of blocks no file references any more, forgotten. */
  deadLocations: number;
  /** Packs rewritten because most of them was dead, and the live blocks moved out. */
  repackedPacks: number;
  movedBlocks: number;
  /** Packs deleted (nothing live left), with their bytes. */
  deletedPacks: number;
  deletedBytes: number;
  /** Packs on the remote that the index did not know, deleted. */
  orphanPacks: number;
  /** Older metadata generations deleted because they named deleted packs. */
  prunedGenerations: number;
}

export interface RemoteParts {
  remote: Remote;
  cache: RemoteCache;
  backup?: MetaBackup;
}

/** A mostly dead pack: some block in it is live, but the values holding one fill less than `threshold` of it. */
export function isSparse(u: Pick<PackUsage, 'liveBlocks' | 'liveValueBytes' | 'size'>, threshold: number): boolean {
  return u.liveBlocks > 0 && u.size > 0 && u.liveValueBytes / u.size < threshold;
}

/**
 * Moves the live blocks out of mostly dead packs: each pack's are fetched (a pack that
 * cannot be read whole is kept as it is), then marked dirty so the uploader puts them
 * into new packs; resolves once that upload is done. Returns the packs moved out and
 * the blocks marked.
 */
export async function repackPacks(
  packs: readonly Pick<PackUsage, 'pack' | 'name' | 'size'>[],
  liveHashesOf: (pack: number) => Buffer[] | Promise<Buffer[]>,
  cache: RemoteCache,
  ledger: CacheLedger,
  o: Pick<RemoteGcOptions, 'log' | 'progress'>,
): Promise<{ repackedPacks: number; movedBlocks: number }> {
  let repackedPacks = 0;
  let movedBlocks = 0;
  let doneBytes = 0;
  o.progress?.start('gc: repacking remote packs');
  for (const [i, u] of packs.entries()) {
    o.progress?.update(i, packs.length, doneBytes);
    doneBytes += u.size;
    const hashes = await liveHashesOf(u.pack);
    const outcomes = await Promise.all(cache.fetcher.fetch(hashes).values());
    if (outcomes.some((r) => r !== 'ok')) {
      o.log.error(`gc: pack ${u.name} could not be read whole; it is kept as it is`);
      continue;
    }
    repackedPacks++;
    movedBlocks += await ledger.markDirtyAgain(hashes);
  }
  o.progress?.update(packs.length, packs.length, doneBytes);
  await cache.flush();
  return { repackedPacks, movedBlocks };
}

export async function collectRemoteGarbage(volume: Volume, parts: RemoteParts, o: RemoteGcOptions): Promise<RemoteGcResult> {
  const { meta, ledger } = volume;
  const index = meta.remote;
  const threshold = o.repackBelow ?? volume.settings.packRepackBelow;
  const dead = index.deadEntries();
  const result: RemoteGcResult = {
    dryRun: o.dryRun,
    packs: index.packs().length,
    deadLocations: dead.length,
    repackedPacks: 0,
    movedBlocks: 0,
    deletedPacks: 0,
    deletedBytes: 0,
    orphanPacks: 0,
    prunedGenerations: 0,
  };
  if (!o.dryRun && dead.length > 0) meta.durableTransaction(() => index.deleteEntries(dead));

  // Mostly dead packs: their live blocks go into new packs.
  const sparse = index.usage().filter((u) => isSparse(u, threshold));
  result.repackedPacks = sparse.length;
  if (!o.dryRun && sparse.length > 0) {
    const r = await repackPacks(sparse, (pack) => index.entriesOf(pack).map((e) => e.hash), parts.cache, ledger, o);
    result.movedBlocks += r.movedBlocks;
  }
  for (const u of sparse) result.movedBlocks += o.dryRun ? u.liveBlocks : 0;

  // Packs with nothing live: everything after the repack whose rows are all gone.
  const empty = index.usage().filter((u) => u.liveBlocks === 0 && index.entriesOf(u.pack).length === 0);
  const known = new Set(index.packs().map((p) => p.name));
  const orphans = (await parts.remote.list('pack')).filter((p) => !known.has(p.name) && !parts.cache.uploader.inFlight.has(p.name));
  result.deletedPacks = empty.length;
  result.deletedBytes = empty.reduce((n, u) => n + u.size, 0);
  result.orphanPacks = orphans.length;
  if (o.dryRun || (empty.length === 0 && orphans.length === 0)) return result;

  // The newest generation must not name what goes; older ones may, and go too. Without a
  // way to write one (a read-only mount), nothing is deleted.
  if (!parts.backup) {
    result.deletedPacks = 0;
    result.deletedBytes = 0;
    result.orphanPacks = 0;
    return result;
  }
  // Forgotten first: a crash after this leaves orphans on the remote (the next gc's), never
  // a generation naming a pack that is gone.
  meta.durableTransaction(() => {
    for (const u of empty) index.deletePack(u.pack);
  });
  const fresh = await parts.backup.backup('gc');
  for (const g of await listGenerations(parts.remote)) {
    if (g.generation >= fresh.generation) continue;
    await parts.remote.delete(g);
    result.prunedGenerations++;
  }
  const doomed = [...empty.map((u) => ({ kind: 'pack' as const, name: u.name, id: u.remoteId })), ...orphans];
  o.progress?.start('gc: deleting remote packs');
  for (const [i, p] of doomed.entries()) {
    o.progress?.update(i, doomed.length);
    await parts.remote.delete(p);
  }
  if (doomed.length > 0) o.progress?.update(doomed.length, doomed.length);
  o.log.info(`gc on the remote: ${result.deletedPacks} packs deleted (${result.deletedBytes} bytes), ${result.repackedPacks} repacked, ${result.orphanPacks} orphans`);
  return result;
}
