import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { Volume } from '../vfs/volume';
import { SETTING_SPECS, readSettings, type VolumeSettings } from '../vfs/volume-settings';
import { parseCompression } from '../store/codec';
import { normalizeRemoteSpec } from '../remote/remote-spec';
import { attachNewVolume } from './remote-volume';
import { UsageError } from './errors';
import { formatBytes } from '../format';

function checkBlockSize(blockSize: number): void {
  const ok = blockSize >= 4096 && blockSize <= 4 * 1024 * 1024 && (blockSize & (blockSize - 1)) === 0;
  if (!ok) throw new UsageError(`block size ${blockSize} is not a power of two between 4K and 4M`);
}

/** Settings given to `pogfs init`; compression as typed (none, lz4, zstd, zstd:LEVEL), parsed here. */
export type InitSettings = Partial<Omit<VolumeSettings, 'compression'>> & { compression?: string };

/**
 * Creates a volume. With a remote, the remote must not hold another volume; the new
 * volume's first metadata generation goes there at once, so it can be mounted from the
 * remote alone. If that fails, the new volume directory is removed again.
 */
export async function initVolume(
  path: string,
  blockSize: number,
  given: InitSettings = {},
  remote?: string,
  remoteFlags: Record<string, string | undefined> = {},
  metaUrl?: string,
): Promise<void> {
  checkBlockSize(blockSize);
  if (metaUrl !== undefined && !/^postgres(ql)?:/i.test(metaUrl)) throw new UsageError('--meta takes a PostgreSQL URL: postgres://USER@HOST[:PORT]/DB');
  const { compression, ...rest } = given;
  const settings: Partial<VolumeSettings> = { ...rest };
  if (compression !== undefined) {
    try {
      settings.compression = parseCompression(compression);
    } catch (err) {
      throw new UsageError(`--compression: ${(err as Error).message}`);
    }
  }
  const extra: Partial<VolumeSettings> = {};
  if (remote !== undefined) {
    const parsed = settingsOrUsage(() => readSettings({ ...Object.fromEntries(Object.entries(remoteFlags).filter(([, v]) => v !== undefined)) as Record<string, string>, remote: normalizeRemoteSpec(remote) }, 'given'));
    for (const spec of SETTING_SPECS) {
      if (spec.key === 'remote' || remoteFlags[spec.key] !== undefined) (extra as Record<string, unknown>)[spec.field] = parsed[spec.field];
    }
    if (!parsed.remote) throw new UsageError('--remote none is the same as no --remote');
  } else {
    const stray = Object.entries(remoteFlags).find(([, v]) => v !== undefined);
    if (stray) throw new UsageError(`--${stray[0]} only means something with --remote`);
  }
  const existed = existsSync(resolve(path));
  let v: Volume;
  try {
    v = Volume.create(path, { blockSize, ...settings, ...extra });
  } catch (err) {
    throw err instanceof Error && err.name === 'VolumeError' ? err : new UsageError((err as Error).message);
  }
  try {
    // The remote is checked first: a remote holding another volume leaves the database untouched.
    if (v.settings.remote) await attachNewVolume(v, { firstGeneration: metaUrl === undefined });
    if (metaUrl !== undefined) await v.createExternalMeta(metaUrl);
  } catch (err) {
    await v.close();
    rmSync(v.path, { recursive: true, force: true });
    if (existed) mkdirSync(v.path, { recursive: true });
    throw err;
  }
  await v.close();
  const s = v.settings;
  console.log(
    `created pogfs volume ${v.path} (block size ${formatBytes(blockSize)}, compression ${s.compression}, super-chunks ${s.superchunks ? 'on' : 'off'}` +
      `${s.remote ? `, remote ${s.remote}, cache ${formatBytes(s.cacheBytes)}` : ''}${metaUrl !== undefined ? `, metadata in ${v.metaUrl ?? metaUrl}` : ''})`,
  );
}

/** Creates the volume unless it exists; returns true when it was created. */
export function ensureVolume(path: string): boolean {
  if (Volume.exists(path)) return false;
  void Volume.create(path).close();
  return true;
}

/** Settings parsed from flags: a bad value is the user's to fix (exit 2). */
function settingsOrUsage(read: () => VolumeSettings): VolumeSettings {
  try {
    return read();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}
