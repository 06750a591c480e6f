import { hostname } from 'node:os';
import { MetaBackup } from '../cache/meta-backup';
import { maxPackSize } from '../cache/pack-format';
import { RemoteCache } from '../cache/remote-cache';
import { openRemote, type RemoteSettings } from '../remote/open-remote';
import { RemoteError, type Remote } from '../remote/remote';
import type { PgPackIndex } from '../meta/pg-pack-index';
import type { Volume } from '../vfs/volume';
import type { VolumeSettings } from '../vfs/volume-settings';
import { UsageError } from './errors';
import type { Logger } from './log';

/**
 * Glue between a volume and its remote: opening the remote from the volume's settings
 * (with the errors a user can act on), the writer lock, the cache, and the metadata
 * backups, and taking them down again in the order that loses nothing.
 */

/** The remote layer's settings that follow from a volume's settings. */
export function remoteSettingsFor(s: VolumeSettings): Partial<RemoteSettings> {
  const out: Partial<RemoteSettings> = {
    // A pack goes up in one request (plus the session's start): resumable chunks hold the largest pack.
    uploadChunkBytes: Math.max(8 << 20, Math.ceil(maxPackSize(s.packBytes) / (256 * 1024)) * 256 * 1024),
  };
  if (s.driveApiUrl) out.driveRootUrl = s.driveApiUrl;
  if (s.driveTokenUrl) out.tokenUrl = s.driveTokenUrl;
  if (s.driveCredentials) out.credentialsPath = s.driveCredentials;
  return out;
}

/** Opens the remote a volume's settings name; problems the user can fix become one-line UsageErrors. */
export async function openVolumeRemote(settings: VolumeSettings): Promise<Remote> {
  try {
    return await openRemote(settings.remote, remoteSettingsFor(settings));
  } catch (err) {
    throw remoteUsageError(settings.remote, err);
  }
}

/** A remote failure as the user should read it. */
export function remoteUsageError(spec: string, err: unknown): UsageError {
  if (err instanceof UsageError) return err;
  const e = err as Error;
  if (e instanceof RemoteError && e.code === 'auth') {
    // Said once: some messages already say what to run.
    const hint = /pogfs auth/.test(e.message) ? '' : ' (run pogfs auth, or give --credentials FILE)';
    return new UsageError(`${spec}: ${e.message}${hint}`);
  }
  if (e instanceof RemoteError && e.code === 'quota') return new UsageError(`${spec}: ${e.message} (free space on the remote, then try again)`, 1);
  // A remote that holds nothing to mount is the user's mistake (a wrong path), not a failure.
  const code = e instanceof RemoteError && e.code === 'not-found' ? 2 : 1;
  return new UsageError(e.message.includes(spec) ? e.message : `${spec}: ${e.message}`, code);
}

export interface AttachOptions {
  readOnly: boolean;
  breakLock: boolean;
  log: Logger;
  notice: (line: string) => void;
}

export interface AttachedRemote {
  remote: Remote;
  cache: RemoteCache;
  owner: string;
  readOnly: boolean;
  backup?: MetaBackup;
  /** The shared pack index of a volume several machines write (Volume.sharesBlocks); gc works on it. */
  shared?: PgPackIndex;
}

/**
 * Opens the remote, takes its writer lock (unless read-only) and sets up the cache. A
 * volume several machines share (Volume.sharesBlocks) takes no writer lock (the mount
 * sessions in its metadata database guard it) and gets the shared pack index.
 */
export async function attachRemote(volume: Volume, o: AttachOptions): Promise<AttachedRemote> {
  const s = volume.settings;
  const remote = await openVolumeRemote(s);
  const owner = volume.store.instanceId();
  let shared: PgPackIndex | undefined;
  try {
    await remote.init();
    if (volume.sharesBlocks) shared = (await import('../meta/pg-pack-index')).PgPackIndex.open(volume.metaUrl!, { warn: (msg) => o.log.warn(msg) });
    else if (!o.readOnly) {
      const holder = await remote.readLock();
      if (holder && holder.owner !== owner) {
        if (!o.breakLock) {
          throw new UsageError(
            `${s.remote} is in use by ${holder.host} (pid ${holder.pid}) since ${holder.since}: a second writer would corrupt it. ` +
              'Mount with --read-only, or, only if that machine will never write again, with --break-lock',
          );
        }
        o.notice(`pogfs: warning: taking over the writer lock of ${s.remote} from ${holder.host} (pid ${holder.pid}, since ${holder.since})`);
        o.log.warn(`writer lock taken over from ${holder.host} pid ${holder.pid} (${holder.owner})`);
      }
      await remote.acquireLock({ owner, host: hostname(), pid: process.pid, since: new Date().toISOString() }, { force: o.breakLock });
    }
  } catch (err) {
    await remote.close().catch(() => undefined);
    throw remoteUsageError(s.remote, err);
  }
  const cache = new RemoteCache(volume.ledger, volume.localPackIndex, remote, volume.packer(), {
    cacheBytes: s.cacheBytes,
    packBytes: s.packBytes,
    readaheadBytes: s.readaheadBytes,
    uploadIdleMs: 2000,
    log: o.log,
    shared,
  });
  return { remote, cache, owner, readOnly: o.readOnly, shared };
}

/**
 * Starts the metadata backups (after the filesystem exists: backups hold its block
 * releases). Not of a volume whose metadata is in another engine: its backups are the
 * database's (pg_dump).
 */
export function startBackups(a: AttachedRemote, volume: Volume, holdReleases: () => () => void, log: Logger): void {
  if (a.readOnly || volume.metaUrl !== undefined) return;
  a.backup = new MetaBackup(volume.meta, a.remote, {
    keep: volume.settings.backupKeep,
    holdReleases,
    flushBlocks: () => a.cache.flush(),
    log,
  });
  a.backup.schedule(volume.settings.backupIntervalSec);
}

/**
 * The unmount path with a remote: everything dirty uploaded, a last metadata generation,
 * the lock given back. If the remote cannot be reached, the dirty blocks stay in the local
 * store (nothing is lost: they go up at the next mount) and the lock is kept, so no other
 * machine writes a volume whose newest data is here.
 */
export async function detachRemote(a: AttachedRemote, log: Logger): Promise<void> {
  a.backup?.stop();
  try {
    if (a.shared) {
      // Every commit uploaded its blocks already: what is left was never committed.
      if (!a.readOnly) await a.cache.flush();
    } else if (!a.readOnly) {
      await a.backup!.backup('unmount');
      await a.remote.releaseLock(a.owner);
    }
  } catch (err) {
    log.error(`could not finish with ${a.remote.description} at unmount: the local volume keeps what is not uploaded (it goes up at the next mount) and the writer lock stays`, err);
  } finally {
    await a.cache.close();
    await a.shared?.close().catch(() => undefined);
    await a.remote.close().catch(() => undefined);
  }
}
