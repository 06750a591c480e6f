import type { Compression } from '../store/codec';
import { DEFAULT_COMPRESSION, Volume } from '../vfs/volume';
import { UsageError } from './errors';
import { formatBytes } from '../format';

function checkBlockSize(blockSize: number): void {
  const ok = blockSize >= 4096 && blockSize <= 4 * 1024 * 1024 && (blockSize & (blockSize - 1)) === 0;
  if (!ok) throw new UsageError(`block size ${blockSize} is not a power of two between 4K and 4M`);
}

export function initVolume(path: string, blockSize: number, compression: Compression = DEFAULT_COMPRESSION): void {
  checkBlockSize(blockSize);
  const v = Volume.create(path, { blockSize, compression });
  void v.close();
  console.log(`created pogfs volume ${v.path} (block size ${formatBytes(blockSize)}, compression ${compression})`);
}

/** Creates the volume unless it exists; returns true when it was created. */
export function ensureVolume(path: string): boolean {
  if (Volume.exists(path)) return false;
  void Volume.create(path).close();
  return true;
}
