import { Volume } from '../vfs/volume';
import type { VolumeSettings } from '../vfs/volume-settings';
import { UsageError } from './errors';
import { formatBytes } from '../format';

function checkBlockSize(blockSize: number): void {
  const ok = blockSize >= 4096 && blockSize <= 4 * 1024 * 1024 && (blockSize & (blockSize - 1)) === 0;
  if (!ok) throw new UsageError(`block size ${blockSize} is not a power of two between 4K and 4M`);
}

export function initVolume(path: string, blockSize: number, settings: Partial<VolumeSettings> = {}): void {
  checkBlockSize(blockSize);
  const v = Volume.create(path, { blockSize, ...settings });
  void v.close();
  const s = v.settings;
  console.log(
    `created pogfs volume ${v.path} (block size ${formatBytes(blockSize)}, compression ${s.compression}, super-chunks ${s.superchunks ? 'on' : 'off'})`,
  );
}

/** Creates the volume unless it exists; returns true when it was created. */
export function ensureVolume(path: string): boolean {
  if (Volume.exists(path)) return false;
  void Volume.create(path).close();
  return true;
}
