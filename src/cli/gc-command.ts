import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { collectGarbage, type GcResult, type LiveGcResult } from '../gc/block-gc';
import type { ProgressSink } from '../progress';
import { progressDisplay } from './progress-output';
import { callControl } from './control-socket';
import { Volume } from '../vfs/volume';
import { liveDaemon } from './daemon-record';
import { UsageError } from './errors';
import { formatBytes } from '../format';
import { join } from 'node:path';
import { collectRemoteGarbage, type RemoteGcResult } from '../gc/remote-gc';
import { collectSharedGarbage, sharedGcGraceMs, type SharedGcResult } from '../gc/shared-gc';
import { VolumeFiles } from '../vfs/volume';
import { fileLogger } from './log';
import { attachRemote, detachRemote, remoteUsageError, startBackups, type AttachedRemote } from './remote-attachment';

export interface GcFlags {
  dryRun?: boolean;
  compact?: boolean;
  json?: boolean;
  /** Show progress even when stderr is not a terminal (as JSON lines with --json). */
  progress?: boolean;
  /** Overrides the volume's repack-below setting for this run (text from the command line). */
  repackBelow?: string;
  /** Also rewrite super-chunks stored with another codec than the volume's current one. */
  recompress?: boolean;
}

function parseShare(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new UsageError(`--repack-below ${text}: give a share from 0 (never repack) to 1`);
  return n;
}

/** `pogfs gc VOLUME [--dry-run] [--compact] [--json]`: directly when unmounted, through the daemon when mounted. */
export async function gc(target: string, flags: GcFlags): Promise<void> {
  const path = resolve(target);
  const repackBelow = parseShare(flags.repackBelow);
  if (!existsSync(path)) throw new UsageError(`no volume at ${path}`);
  if (!Volume.exists(path)) throw new UsageError(`${path} is not a pogfs volume`);
  const holder = liveDaemon(path);
  if (holder) {
    if (flags.compact) {
      throw new UsageError(`--compact rewrites the block store file and needs the volume unmounted (pogfs umount ${holder.mountpoint})`);
    }
    // Mounted: the daemon does the work, so blocks being written or held open are safe.
    let live: LiveGcResult & { remote?: RemoteGcResult };
    const line = progressDisplay(flags);
    try {
      live = await callControl<LiveGcResult & { remote?: RemoteGcResult }>(path, { op: 'gc', dryRun: !!flags.dryRun, repackBelow, recompress: !!flags.recompress }, Infinity, line.enabled ? line.show.bind(line) : undefined);
    } catch (err) {
      throw new UsageError(`gc through the daemon of ${path} failed: ${(err as Error).message}`, 1);
    } finally {
      line.clear();
    }
    if (flags.json) console.log(JSON.stringify({ volume: path, mounted: holder.mountpoint, ...live }, null, 2));
    else if (live.remote && isSharedGc(live.remote)) printSharedGc(path, holder.mountpoint, live.remote);
    else {
      printRemoved(path, live, holder.mountpoint);
      if (live.skippedBusy) console.log(`${live.skippedBusy} unreferenced blocks were taken by writes while gc ran and were kept`);
      printRepack(live.repack, live.dryRun);
      if (live.remote) printRemoteGc(live.remote);
      printSpace(live.space, false);
    }
    return;
  }
  if (existsSync(join(path, VolumeFiles.metaUrl)) && (await sharesBlocks(path))) {
    if (flags.compact) throw new UsageError('--compact is for a volume whose metadata is in meta.db: this one shares its blocks through the remote, and its block store is a cache');
    // No daemon here: this machine's cache directory and the shared index, as the daemon would.
    const progress = progressDisplay(flags);
    let remote: SharedGcResult;
    try {
      remote = await sharedGcOffline(path, !!flags.dryRun, repackBelow, progress);
    } finally {
      progress.clear();
    }
    if (flags.json) console.log(JSON.stringify({ volume: path, dryRun: remote.dryRun, remote }, null, 2));
    else printSharedGc(path, undefined, remote);
    return;
  }
  let result: GcResult;
  // A status line with rate and ETA on a terminal's stderr (or as asked by --progress).
  const progress = progressDisplay(flags);
  try {
    result = await collectGarbage(path, { dryRun: flags.dryRun, compact: flags.compact, repackBelow, recompress: flags.recompress, progress });
  } catch (err) {
    progress.clear();
    if ((err as Error).name === 'VolumeError') throw err;
    throw new UsageError(`gc of ${path} failed: ${(err as Error).message}`, 1);
  }
  // Attaching the remote may print notices: the status line starts again with its phases.
  progress.clear();
  let remote: RemoteGcResult | undefined;
  try {
    remote = await remoteGcOffline(path, !!flags.dryRun, progress);
  } finally {
    progress.clear();
  }
  if (flags.json) {
    console.log(JSON.stringify({ ...result, remote }, null, 2));
    return;
  }
  printRemoved(result.volume, result);
  if (remote) printRemoteGc(remote);
  if (result.refsCorrected || result.staleRefs) {
    console.log(
      `reference counts: ${result.refsCorrected} ${result.dryRun ? 'would be' : ''} set to their row counts, ` +
        `${result.staleRefs} stale entries ${result.dryRun ? 'would be ' : ''}removed`,
    );
  }
  if (result.missingBlocks) console.log(`warning: ${result.missingBlocks} referenced blocks are missing from the store: run pogfs fsck`);
  printRepack(result.repack, result.dryRun);
  printSpace(result.space, !!result.compacted);
  if (result.compacted) {
    const c = result.compacted;
    console.log(
      result.dryRun
        ? `compaction would shrink the file from ${formatBytes(c.beforeBytes)} to about ${formatBytes(c.afterBytes)}`
        : `compacted: ${formatBytes(c.beforeBytes)} -> ${formatBytes(c.afterBytes)}`,
    );
  }
}

function printRemoved(volume: string, r: Pick<GcResult, 'dryRun' | 'storedBlocks' | 'removedBlocks' | 'removedBytes' | 'removedRawBytes'>, mountpoint?: string): void {
  const would = r.dryRun ? 'would remove' : 'removed';
  console.log(`pogfs gc ${volume}${mountpoint ? ` (mounted at ${mountpoint}: done by its daemon)` : ''}${r.dryRun ? ' (dry run: nothing changed)' : ''}`);
  console.log(
    `blocks: ${r.storedBlocks} stored, ${r.removedBlocks} unreferenced: ${would} ` +
      `${formatBytes(r.removedBytes)} (${r.removedBytes} bytes stored, ${r.removedRawBytes} bytes of data)`,
  );
}

/**
 * Runs `collect` on an unmounted volume's remote, attached as a mount attaches it (the
 * writer lock, or for a shared volume none), and detaches it after, also on failure.
 */
async function withRemoteOffline<T>(
  volume: Volume,
  path: string,
  dryRun: boolean,
  collect: (attached: AttachedRemote, log: ReturnType<typeof fileLogger>) => Promise<T>,
): Promise<T> {
  const log = fileLogger(join(path, VolumeFiles.log), false);
  const attached = await attachRemote(volume, { readOnly: dryRun, breakLock: false, log, notice: (line) => console.error(line) });
  try {
    return await collect(attached, log);
  } catch (err) {
    throw remoteUsageError(volume.settings.remote, err);
  } finally {
    await detachRemote(attached, log);
    log.flush();
  }
}

/** gc of an unmounted volume's remote: takes the writer lock like a mount, and gives it back. */
async function remoteGcOffline(path: string, dryRun: boolean, progress: ProgressSink): Promise<RemoteGcResult | undefined> {
  const volume = Volume.open(path);
  try {
    if (!volume.settings.remote) return undefined;
    return await withRemoteOffline(volume, path, dryRun, (attached, log) => {
      startBackups(attached, volume, () => () => undefined, log);
      return collectRemoteGarbage(volume, { remote: attached.remote, cache: attached.cache, backup: attached.backup }, { dryRun, log, progress });
    });
  } finally {
    await volume.close();
  }
}

function printRemoteGc(r: RemoteGcResult): void {
  const would = r.dryRun ? 'would be ' : '';
  console.log(
    `remote: ${r.packs} packs; ${r.deadLocations} locations of deleted blocks ${would}forgotten; ${r.repackedPacks} mostly dead packs ${would}repacked (${r.movedBlocks} live blocks moved); ` +
      `${r.deletedPacks} empty packs ${would}deleted (${formatBytes(r.deletedBytes)}); ${r.orphanPacks} orphan packs ${would}deleted` +
      (r.prunedGenerations ? `; ${r.prunedGenerations} older metadata generations that named them deleted` : ''),
  );
}

/** gc of the shared remote of an unmounted volume several machines write (other machines may have it mounted). */
async function sharedGcOffline(path: string, dryRun: boolean, repackBelow: number | undefined, progress: ProgressSink): Promise<SharedGcResult> {
  const volume = Volume.open(path);
  try {
    return await withRemoteOffline(volume, path, dryRun, (attached, log) =>
      collectSharedGarbage(volume, { remote: attached.remote, cache: attached.cache, index: attached.shared! }, { dryRun, repackBelow, graceMs: sharedGcGraceMs(), log, progress }),
    );
  } finally {
    await volume.close();
  }
}

/** Whether the volume at `path` is one several machines write (Volume.sharesBlocks). */
async function sharesBlocks(path: string): Promise<boolean> {
  const volume = Volume.open(path);
  try {
    return volume.sharesBlocks;
  } finally {
    await volume.close();
  }
}

function isSharedGc(r: RemoteGcResult): r is SharedGcResult {
  return (r as Partial<SharedGcResult>).sharedIndex === true;
}

/** A volume several machines write: only the shared remote is collected (each machine's store is a cache, evicted on its own). */
function printSharedGc(volume: string, mountpoint: string | undefined, r: SharedGcResult): void {
  const where = mountpoint ? `mounted at ${mountpoint}: done by its daemon, ` : '';
  console.log(`pogfs gc ${volume} (${where}in the pack index the machines share)${r.dryRun ? ' (dry run: nothing changed)' : ''}`);
  printRemoteGc(r);
  console.log(
    `${r.youngPacks} packs published within the grace period (${r.gracePeriodSeconds} s) left alone` +
      (r.failedDeletes ? `; ${r.failedDeletes} packs left on the remote because deleting them failed (see the log)` : ''),
  );
}

function printRepack(r: GcResult['repack'], dryRun: boolean): void {
  if (r.sparseChunks === 0) return;
  const recoded = r.otherCodecChunks ? ` (${r.otherCodecChunks} of them in another codec than the volume's, --recompress)` : '';
  if (dryRun) {
    console.log(`super-chunks: ${r.sparseChunks} mostly dead${recoded} (${formatBytes(r.bytesBefore)} stored, ${r.blocksMoved} live blocks) would be repacked`);
    return;
  }
  console.log(
    `super-chunks: repacked ${r.sparseChunks} mostly dead${recoded} (${formatBytes(r.bytesBefore)}) into ${r.chunksWritten} ` +
      `(${formatBytes(r.bytesAfter)}; ${r.blocksMoved} live blocks moved): ${formatBytes(Math.max(0, r.bytesBefore - r.bytesAfter))} given back`,
  );
}

function printSpace(s: GcResult['space'], compacted: boolean): void {
  console.log(
    `block store file: ${formatBytes(s.fileBytes)}, ${formatBytes(s.usedBytes)} in use, ${formatBytes(s.freeBytes)} free inside ` +
      `(reused by new writes${compacted ? '' : '; --compact, on an unmounted volume, gives it back to the file system'})`,
  );
}
