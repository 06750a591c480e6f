import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { COMPRESSIONS, type Compression } from '../store/codec';
import { Volume } from '../vfs/volume';
import { liveDaemon } from './daemon';
import { UsageError } from './errors';

export interface TuneFlags {
  compression?: Compression;
}

/**
 * Changes settings of an unmounted volume. A running daemon holds the settings it read at
 * mount time (and the block store open), so a mounted volume is refused rather than
 * changed behind its back. Compression applies to blocks written from then on: existing
 * blocks keep their codec (each value says which it uses).
 */
export function tune(target: string, flags: TuneFlags): void {
  const path = resolve(target);
  if (!existsSync(path) || !Volume.exists(path)) throw new UsageError(`${path} is not a pogfs volume`);
  if (flags.compression === undefined) throw new UsageError('nothing to change: give --compression lz4|none');
  if (!COMPRESSIONS.includes(flags.compression)) {
    throw new UsageError(`unknown compression ${flags.compression} (choose ${COMPRESSIONS.join(' or ')})`);
  }
  const holder = liveDaemon(path);
  if (holder) {
    throw new UsageError(
      `${path} is mounted at ${holder.mountpoint} (daemon pid ${holder.pid}): unmount it first (pogfs umount ${holder.mountpoint}); settings never change under a mounted volume`,
    );
  }
  const v = Volume.open(path);
  try {
    const before = v.compression;
    if (before === flags.compression) {
      console.log(`${v.path}: compression is already ${before}`);
      return;
    }
    v.meta.setCompression(flags.compression);
    console.log(`${v.path}: compression ${before} -> ${flags.compression} (applies to blocks written from now on)`);
  } finally {
    void v.close();
  }
}
