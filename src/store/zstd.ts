/**
 * zstd for the codec layer: the addon build/Release/pogfs_zstd.node (source in
 * src/store/native/pogfs_zstd.c, over the system's libzstd), loaded on first use so
 * that a volume that never meets a zstd value never needs it.
 *
 * Frames carry their content size and no checksum (every block is checked against its
 * BLAKE3 key). Decoding takes the length the block header claims and fails unless the
 * frame holds exactly that many bytes, so codec.ts gets its corrupt-block rule for free.
 * The async functions run on libuv's thread pool, the sync ones on the caller's thread.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

interface ZstdAddon {
  compressSync(input: Uint8Array, level: number): Buffer;
  compressAsync(input: Uint8Array, level: number): Promise<Buffer>;
  decompressSync(frame: Uint8Array, rawLength: number): Buffer;
  decompressAsync(frame: Uint8Array, rawLength: number): Promise<Buffer>;
  version(): string;
  maxLevel(): number;
}

/** zstd's own default, and what `--compression zstd` means: most of level 9's saving at four times its speed. */
export const DEFAULT_ZSTD_LEVEL = 3;
/** Levels accepted in settings (libzstd's 1 to 19; 20-22 are its "ultra" levels, for inputs far larger than a block). */
export const MIN_ZSTD_LEVEL = 1;
export const MAX_ZSTD_LEVEL = 19;

let addon: ZstdAddon | undefined;

function load(): ZstdAddon {
  if (addon) return addon;
  let dir = __dirname;
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`pogfs: no package.json above ${__dirname}; cannot locate the zstd addon`);
    dir = up;
  }
  const file = join(dir, 'build', 'Release', 'pogfs_zstd.node');
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    addon = require(file) as ZstdAddon;
  } catch (err) {
    throw new Error(`pogfs: cannot load the zstd addon ${file} (install libzstd-dev, then \`npx node-gyp rebuild\`): ${String(err)}`);
  }
  return addon;
}

/** A zstd frame of `input` (content size in its header), on this thread. */
export function zstdCompressSync(input: Uint8Array, level: number): Buffer {
  return load().compressSync(input, level);
}

/** A zstd frame of `input`, compressed on libuv's thread pool. */
export function zstdCompress(input: Uint8Array, level: number): Promise<Buffer> {
  return load().compressAsync(input, level);
}

/** The `rawLength` bytes a frame holds; throws when it is malformed or holds any other length. */
export function zstdDecompressSync(frame: Uint8Array, rawLength: number): Buffer {
  return load().decompressSync(frame, rawLength);
}

/** `zstdDecompressSync` on libuv's thread pool. */
export function zstdDecompress(frame: Uint8Array, rawLength: number): Promise<Buffer> {
  return load().decompressAsync(frame, rawLength);
}

/** libzstd's version (e.g. "1.5.4"), for stats and the bench. */
export function zstdVersion(): string {
  return load().version();
}
