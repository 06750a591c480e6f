import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { collectGarbage, type GcResult } from '../../fsck/gc';
import { Volume } from '../vfs/volume';
import { liveDaemon } from './daemon';
import { UsageError } from './errors';
import { formatBytes } from './units';

export interface GcFlags {
  dryRun?: boolean;
  compact?: boolean;
  json?: boolean;
}

/** `pogfs gc VOLUME [--dry-run] [--compact] [--json]` on an unmounted volume. */
export async function gc(target: string, flags: GcFlags): Promise<void> {
  const path = resolve(target);
  if (!existsSync(path)) throw new UsageError(`no volume at ${path}`);
  if (!Volume.exists(path)) throw new UsageError(`${path} is not a pogfs volume`);
  const holder = liveDaemon(path);
  if (holder) {
    throw new UsageError(
      `${path} is mounted at ${holder.mountpoint} (daemon pid ${holder.pid}): gc runs on an unmounted volume only for now ` +
        `(running it through the daemon will come later); unmount it first (pogfs umount ${holder.mountpoint})`,
    );
  }
  let result: GcResult;
  try {
    result = await collectGarbage(path, { dryRun: flags.dryRun, compact: flags.compact });
  } catch (err) {
    if ((err as Error).name === 'VolumeError') throw err;
    throw new UsageError(`gc of ${path} failed: ${(err as Error).message}`, 1);
  }
  if (flags.json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  const would = result.dryRun ? 'would remove' : 'removed';
  console.log(`pogfs gc ${result.volume}${result.dryRun ? ' (dry run: nothing changed)' : ''}`);
  console.log(
    `blocks: ${result.storedBlocks} stored, ${result.removedBlocks} unreferenced: ${would} ` +
      `${formatBytes(result.removedBytes)} (${result.removedBytes} bytes stored, ${result.removedRawBytes} bytes of data)`,
  );
  if (result.refsCorrected || result.staleRefs) {
    console.log(
      `reference counts: ${result.refsCorrected} ${result.dryRun ? 'would be' : ''} set to their row counts, ` +
        `${result.staleRefs} stale entries ${result.dryRun ? 'would be ' : ''}removed`,
    );
  }
  if (result.missingBlocks) console.log(`warning: ${result.missingBlocks} referenced blocks are missing from the store: run pogfs fsck`);
  const s = result.space;
  console.log(
    `block store file: ${formatBytes(s.fileBytes)}, ${formatBytes(s.usedBytes)} in use, ${formatBytes(s.freeBytes)} free inside ` +
      `(reused by new writes${result.compacted ? '' : '; --compact gives it back to the file system'})`,
  );
  if (result.compacted) {
    const c = result.compacted;
    console.log(
      result.dryRun
        ? `compaction would shrink the file from ${formatBytes(c.beforeBytes)} to about ${formatBytes(c.afterBytes)}`
        : `compacted: ${formatBytes(c.beforeBytes)} -> ${formatBytes(c.afterBytes)}`,
    );
  }
}
