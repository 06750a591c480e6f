import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { GENERATION_KEY, MetaBackup, listGenerations } from '../cache/meta-backup';
import { progressDisplay, type ProgressFlags } from './progress-output';
import { downloadNewestMetadata, indexPacks } from '../cache/restore';
import { MetaDb } from '../meta/meta-db';
import { BlockStore } from '../store/block-store';
import { StoreRepair } from '../store/repair';
import { Volume, VolumeFiles } from '../vfs/volume';
import { SETTING_SPECS, formatSettings, readSettings } from '../vfs/volume-settings';
import { UsageError } from './errors';
import { liveDaemon } from './daemon-record';
import { normalizeRemoteSpec } from '../remote/remote-spec';
import { openVolumeRemote, remoteUsageError } from './remote-attachment';

/**
 * Volumes and their remotes from the command line: `pogfs init VOLUME --remote SPEC`
 * (the remote must not hold another volume; it gets a first metadata generation at once),
 * and `pogfs mount SPEC MOUNTPOINT` on a machine with no local copy (the newest generation
 * is restored into a local directory and every byte comes from the remote on demand).
 */

/** Setting key → text, from flags such as --credentials (only those given). */
export type SettingFlags = Record<string, string | undefined>;

function given(flags: SettingFlags): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of SETTING_SPECS) {
    const v = flags[s.key];
    if (v === undefined) continue;
    try {
      s.parse(v);
    } catch (err) {
      throw new UsageError(`--${s.key}: ${(err as Error).message}`);
    }
    out[s.key] = v;
  }
  return out;
}

/**
 * Connects a new volume to its remote: the remote must be free; it gets the volume's first
 * metadata generation (not a volume whose metadata will be in PostgreSQL: `firstGeneration`
 * false; its backups are the database's).
 */
export async function attachNewVolume(v: Volume, o: { firstGeneration: boolean } = { firstGeneration: true }): Promise<void> {
  const remote = await openVolumeRemote(v.settings);
  try {
    await remote.init();
    const existing = await listGenerations(remote);
    if (existing.length > 0) {
      throw new UsageError(
        `${v.settings.remote} already holds a pogfs volume (metadata generation ${existing[0].generation}); mount it with: pogfs mount ${v.settings.remote} MOUNTPOINT`,
      );
    }
    if (!o.firstGeneration) return;
    const backup = new MetaBackup(v.meta, remote, { keep: v.settings.backupKeep, holdReleases: () => () => undefined, flushBlocks: async () => undefined, log: { info: () => undefined, error: () => undefined } });
    await backup.backup('init');
  } catch (err) {
    throw remoteUsageError(v.settings.remote, err);
  } finally {
    await remote.close();
  }
}

/** Where a remote's local copy lives unless told: one directory per remote under the data directory. */
export function defaultLocalCopy(spec: string): string {
  const base = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  const slug = spec.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60);
  const tag = createHash('sha256').update(spec).digest('hex').slice(0, 10);
  return join(base, 'pogfs', 'remotes', `${slug}-${tag}`);
}

export interface LocalCopyOptions {
  /** Where to keep the local copy (default: defaultLocalCopy). */
  cacheDir?: string;
  /** Settings to store in the copy (credentials, Drive URLs, cache size ...). */
  settings: SettingFlags;
  notice: (line: string) => void;
  /** How reading the remote's pack indexes shows its progress (`--progress`, `--json`). */
  progress?: ProgressFlags;
}

/**
 * The local volume directory that mounts `spec`: an existing copy of it, or one restored
 * now from the newest metadata generation. A copy older than the remote's newest
 * generation (another machine wrote since) is set aside and restored anew, unless it has
 * blocks not uploaded yet, which would then be lost: that is refused.
 */
export async function localCopyFor(rawSpec: string, o: LocalCopyOptions): Promise<string> {
  const spec = normalizeRemoteSpec(rawSpec);
  const dir = resolve(o.cacheDir ?? defaultLocalCopy(spec));
  const overrides = { ...given(o.settings), remote: spec };
  if (Volume.exists(dir)) {
    const v = Volume.open(dir);
    try {
      if (v.settings.remote !== spec) throw new UsageError(`${dir} is the local copy of ${v.settings.remote || 'a volume with no remote'}, not of ${spec}: give another --cache-dir`);
      if (liveDaemon(dir)) return dir; // mounted already: the mount itself says so
      const local = Number(v.meta.remote.state(GENERATION_KEY) ?? '0');
      const remote = await openVolumeRemote(readSettings({ ...formatSettings(v.settings), ...overrides }, 'given'));
      let newest = 0;
      try {
        newest = (await listGenerations(remote))[0]?.generation ?? 0;
      } catch (err) {
        throw remoteUsageError(spec, err);
      } finally {
        await remote.close();
      }
      if (newest <= local) {
        if (Object.keys(given(o.settings)).length > 0) v.changeSettings(readSettings({ ...formatSettings(v.settings), ...overrides }, 'given'));
        return dir;
      }
      const dirty = v.ledger.dirtyStats().blocks;
      if (dirty > 0) {
        throw new UsageError(
          `${spec} has metadata generation ${newest}, newer than this copy's ${local}, but ${dir} still holds ${dirty} blocks never uploaded; ` +
            'both machines wrote: copy what you need out of this one (mount it with pogfs mount ' + dir + ' MNT --read-only) before restoring',
        );
      }
    } finally {
      await v.close();
    }
    const aside = `${dir}.stale-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    renameSync(dir, aside);
    o.notice(`pogfs: ${spec} was written elsewhere since this copy; the old copy is kept at ${aside}`);
  }
  await restoreInto(dir, spec, overrides, o.notice, o.progress ?? {});
  return dir;
}

async function restoreInto(dir: string, spec: string, overrides: Record<string, string>, notice: (line: string) => void, progressFlags: ProgressFlags): Promise<void> {
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new UsageError(`${dir} exists and is not a pogfs volume: give another --cache-dir`);
  const remote = await openVolumeRemote(readSettings(overrides, 'given'));
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  let done = false;
  try {
    const restored = await downloadNewestMetadata(remote, join(dir, VolumeFiles.meta));
    const meta = MetaDb.open(join(dir, VolumeFiles.meta));
    const store = BlockStore.open(join(dir, VolumeFiles.blocks));
    try {
      meta.setSettings(formatSettings(readSettings({ ...meta.settings(), ...overrides })));
      // Reference counts live with the local store: the new, empty one counts every block
      // the metadata names (each held only by the remote for now).
      let references = 0;
      const rows = [...meta.blockRowCounts()];
      const repair = new StoreRepair(store);
      await repair.run((txn) => {
        for (const r of rows) {
          repair.setRefCount(txn, r.hash, r.n);
          references += r.n;
        }
        repair.setTotals(txn, { blocks: 0, uniqueBytes: 0, storedBytes: 0, references });
      });
      meta.durableTransaction(() => meta.remote.setState(GENERATION_KEY, String(restored.generation)));
      const progress = progressDisplay(progressFlags);
      let scan;
      try {
        scan = await indexPacks(remote, meta, { progress });
      } finally {
        progress.clear();
      }
      const files = meta.totals().files;
      notice(
        `pogfs: restored ${files} files from ${spec} (metadata generation ${restored.generation}` +
          `${scan.packs > 0 ? `, ${scan.packs} newer packs indexed` : ''}) into ${dir}; file contents are fetched on demand`,
      );
      for (const u of scan.unreadable) notice(`pogfs: warning: pack ${u.name} on the remote could not be read: ${u.problem}`);
    } finally {
      meta.close();
      // An empty local store: a new instance, so a new owner of the writer lock.
      await store.close();
    }
    done = true;
  } catch (err) {
    throw remoteUsageError(spec, err);
  } finally {
    await remote.close();
    // A restore cut short leaves nothing half made behind.
    if (!done) rmSync(dir, { recursive: true, force: true });
  }
}
