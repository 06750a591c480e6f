import { join } from 'node:path';
import type { Caller } from '../../src/posix/file-system';
import type { Compression } from '../../src/store/codec';
import { PogFs } from '../../src/vfs/filesystem';
import { Volume } from '../../src/vfs/volume';
import { tempDir } from './tmp';

export const root: Caller = { uid: 0, gid: 0, pid: 1, umask: 0o022 };
export const user = (uid: number, gid = uid): Caller => ({ uid, gid, pid: 1, umask: 0o022 });

export const quietLog = {
  errors: [] as string[],
  error(msg: string) {
    this.errors.push(msg);
  },
  info() {},
};

export interface TestFs {
  fs: PogFs;
  volume: Volume;
  path: string;
  /** Shuts the filesystem down and closes the volume. */
  close(): Promise<void>;
  /** Closes and opens the same volume again (as a remount would). */
  reopen(): Promise<TestFs>;
}

/** Opens the volume at `path`, creating it (with `blockSize`, `compression`, `superchunks`) when absent. */
export function openFs(path: string, blockSize?: number, compression?: Compression, superchunks?: boolean): TestFs {
  const volume = Volume.exists(path) ? Volume.open(path) : Volume.create(path, { blockSize, compression, superchunks });
  const fs = new PogFs(volume, { syncOnClose: true, commitIntervalMs: 5000, metadataCommitMs: 1000 }, quietLog);
  const t: TestFs = {
    fs,
    volume,
    path,
    async close() {
      await fs.shutdown();
      await volume.close();
    },
    async reopen() {
      await t.close();
      return openFs(path);
    },
  };
  return t;
}

export function newFs(blockSize?: number, compression?: Compression, superchunks?: boolean): TestFs {
  return openFs(join(tempDir(), 'vol'), blockSize, compression, superchunks);
}

export const b = (s: string) => Buffer.from(s);

/** Reads a file through PogFs as a program would (open, read, release); the bytes, or the errno. */
export async function readThrough(t: TestFs, ino: number, offset = 0, length = 64 << 20): Promise<Buffer | number> {
  const o = await t.fs.open(ino, 0, root);
  try {
    return await t.fs.read(ino, o.fh, length, offset);
  } catch (err) {
    return (err as { errno?: number }).errno ?? -1;
  } finally {
    t.fs.release(ino, o.fh, 0);
  }
}
