import { randomBytes } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** A synced temp file next to `path`; the caller renames or links it into place. */
export async function writeTemp(path: string, data: Buffer | string, mode = 0o644): Promise<string> {
  const temp = join(dirname(path), `.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(temp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // whatever the umask
    await fh.sync();
  } catch (e) {
    await fh.close();
    await rm(temp, { force: true });
    throw e;
  }
  await fh.close();
  return temp;
}

/** Replaces `path` atomically and durably: a synced temp file renamed over it, then the directory synced. */
export async function writeDurably(path: string, data: Buffer | string, mode = 0o644): Promise<void> {
  const temp = await writeTemp(path, data, mode);
  try {
    await rename(temp, path);
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
  await fsyncDir(dirname(path));
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
