import type { RemoteCache } from '../cache/remote-cache';
import type { PgPackIndex } from '../meta/pg-pack-index';
import type { SharedPackUsage } from '../meta/remote-index';
import type { Remote } from '../remote/remote';
import type { Volume } from '../vfs/volume';
import { isSparse, repackPacks, type RemoteGcOptions, type RemoteGcResult } from './remote-gc';

/**
 * Garbage collection of the remote of a volume several machines write (Volume.sharesBlocks),
 * decided in the shared pack index in PostgreSQL, never by this machine's reference counts
 * (they count only its own references). An entry of a block no row of `blocks` references
 * is deleted, and a pack left without entries is deleted: its rows in one transaction, its
 * object on the remote after that commit. A pack whose live share is below the volume's
 * pack-repack-below is rewritten first: its live blocks are fetched, uploaded in a new pack
 * and published there (which moves their entries), and the old pack then has none.
 *
 * Packs younger than the grace period are left alone: the blocks of a file still being
 * written on some machine are published before its rows are committed. A commit on
 * another machine that names a block whose entry is being deleted is kept safe by the
 * locks PgPackIndex.collectPack takes (the commit then uploads the block again).
 *
 * The metadata's backups are PostgreSQL's (the user's): no generation on the remote names
 * packs. Packs on the remote the index does not know are deleted (see deleteOrphans).
 */

/** The default grace period: far beyond the commit interval (5 s) of any machine. */
export const SHARED_GC_GRACE_MS = 15 * 60 * 1000;

/**
 * The grace period gc uses: POGFS_GC_GRACE_SECONDS, which only tests set (0: none), or
 * SHARED_GC_GRACE_MS.
 */
export function sharedGcGraceMs(): number {
  const text = process.env.POGFS_GC_GRACE_SECONDS;
  const s = Number(text);
  return text !== undefined && text.trim() !== '' && Number.isFinite(s) && s >= 0 ? s * 1000 : SHARED_GC_GRACE_MS;
}

export interface SharedGcParts {
  remote: Remote;
  cache: RemoteCache;
  index: Pick<PgPackIndex, 'usage' | 'liveEntriesOf' | 'collectPack' | 'hasPack' | 'holdingName'>;
}

export interface SharedGcOptions extends RemoteGcOptions {
  /** Packs published less than this long ago are left alone (ms). */
  graceMs: number;
}

/** RemoteGcResult (prunedGenerations stays 0), and what only a shared index has. */
export interface SharedGcResult extends RemoteGcResult {
  /** The pack index is the one several machines share in PostgreSQL. */
  sharedIndex: true;
  gracePeriodSeconds: number;
  /** Packs left alone because they were published within the grace period. */
  youngPacks: number;
  /** Packs whose object on the remote could not be deleted (left as orphans for the next gc). */
  failedDeletes: number;
}

export async function collectSharedGarbage(volume: Volume, parts: SharedGcParts, o: SharedGcOptions): Promise<SharedGcResult> {
  const threshold = o.repackBelow ?? volume.settings.packRepackBelow;
  const cutoff = (BigInt(Date.now()) - BigInt(Math.max(0, Math.floor(o.graceMs)))) * 1000000n;
  const old = (u: SharedPackUsage): boolean => u.createdNs <= cutoff;
  const before = await parts.index.usage();
  const settled = before.filter(old);
  const result: SharedGcResult = {
    dryRun: o.dryRun,
    packs: before.length,
    deadLocations: 0,
    repackedPacks: 0,
    movedBlocks: 0,
    deletedPacks: 0,
    deletedBytes: 0,
    orphanPacks: 0,
    prunedGenerations: 0,
    sharedIndex: true,
    gracePeriodSeconds: o.graceMs / 1000,
    youngPacks: before.length - settled.length,
    failedDeletes: 0,
  };
  const sparse = settled.filter((u) => isSparse(u, threshold));
  if (o.dryRun) {
    const known = new Set(before.map((u) => u.name));
    result.orphanPacks = (await parts.remote.list('pack')).filter((p) => !known.has(p.name)).length;
    result.deadLocations = settled.reduce((n, u) => n + u.entries - u.liveBlocks, 0);
    const empty = settled.filter((u) => u.liveBlocks === 0);
    result.deletedPacks = empty.length;
    result.deletedBytes = empty.reduce((n, u) => n + u.size, 0);
    result.repackedPacks = sparse.length;
    result.movedBlocks = sparse.reduce((n, u) => n + u.liveBlocks, 0);
    return result;
  }

  if (sparse.length > 0) {
    // The live blocks of a pack are the entries the shared index still names for it.
    const r = await repackPacks(sparse, (pack) => parts.index.liveEntriesOf(pack), parts.cache, volume.ledger, o);
    result.repackedPacks += r.repackedPacks;
    result.movedBlocks += r.movedBlocks;
  }

  // Packs with a dead entry, or with none left (moved out by the repack, or by a machine
  // that uploaded the same blocks again: a later pack takes a block's entry over).
  const candidates = (await parts.index.usage()).filter((u) => old(u) && (u.entries === 0 || u.entries > u.liveBlocks));
  const local = volume.localPackIndex;
  o.progress?.start('gc: deleting dead packs');
  for (const [i, u] of candidates.entries()) {
    o.progress?.update(i, candidates.length);
    const r = await parts.index.collectPack(u.pack);
    result.deadLocations += r.deadEntries.length;
    const gone = r.deletedPack;
    if (!gone) continue;
    result.deletedPacks++;
    result.deletedBytes += gone.size;
    // This machine's cache of the index forgets the pack (other machines find out at their next fetch from it).
    const known = local.remote.packByName(gone.name);
    local.durableTransaction(() => {
      if (known) local.remote.deletePack(known.id);
      local.remote.deleteEntries(r.deadEntries);
    });
    try {
      await parts.index.holdingName(gone.name, async () => {
        // Published again meanwhile (the same bytes uploaded anew by some machine): it stays.
        if (!(await parts.index.hasPack(gone.name))) await parts.remote.delete({ kind: 'pack', name: gone.name, id: gone.remoteId });
      });
    } catch (err) {
      result.failedDeletes++;
      o.log.error(`gc: pack ${gone.name} is out of the index but deleting it on the remote failed (it stays as an orphan)`, err);
    }
  }
  if (candidates.length > 0) o.progress?.update(candidates.length, candidates.length);
  await deleteOrphans(parts, result, o);
  o.log.info(
    `gc on the shared remote: ${result.deadLocations} dead entries, ${result.deletedPacks} packs deleted (${result.deletedBytes} bytes), ` +
      `${result.repackedPacks} repacked, ${result.youngPacks} younger than the grace period (${result.gracePeriodSeconds} s) left alone`,
  );
  return result;
}

/**
 * Packs on the remote the index does not name (left by a crash between an upload and its
 * publication, or between gc's commit and its delete). Each is deleted holding its name's
 * lock, which every upload holds from its put to its publication: a pack still being
 * uploaded and published is waited for, and then named by the index, so it stays.
 */
async function deleteOrphans(parts: SharedGcParts, result: SharedGcResult, o: SharedGcOptions): Promise<void> {
  const known = new Set((await parts.index.usage()).map((u) => u.name));
  const unknown = (await parts.remote.list('pack')).filter((p) => !known.has(p.name));
  for (const p of unknown) {
    try {
      const deleted = await parts.index.holdingName(p.name, async () => {
        if (await parts.index.hasPack(p.name)) return false;
        await parts.remote.delete(p);
        return true;
      });
      if (deleted) result.orphanPacks++;
    } catch (err) {
      result.failedDeletes++;
      o.log.error(`gc: deleting the orphan pack ${p.name} failed`, err);
    }
  }
}
