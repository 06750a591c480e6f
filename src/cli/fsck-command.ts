import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { checkVolume, type CheckState } from '../../fsck/checker';
import { checkPacks, repairFromRemote } from '../../fsck/remote-check';
import type { Remote } from '../remote/remote';
import { normalizeRemoteSpec } from '../remote/remote-spec';
import { openVolumeRemote } from './remote-attachment';
import { rebuildFromRemote } from '../../fsck/rebuild';
import { MetaDb } from '../meta/meta-db';
import { readSettings } from '../vfs/volume-settings';
import { repairVolume } from '../../fsck/repairer';
import { exitCodeFor, renderJson, renderText, type FsckReport } from '../../fsck/report';
import { SCHEMA_VERSION, SNAPSHOTS_SCHEMA } from '../meta/schema';
import { TreeOps } from '../vfs/tree-ops';
import { BlockStore } from '../store/block-store';
import { checkStoreFile } from '../store/store-files';
import { Volume, VolumeFiles } from '../vfs/volume';
import { liveDaemon } from './daemon-record';
import { UsageError } from './errors';
import { progressDisplay, type ProgressDisplay } from './progress-output';
import { checkPgVolume, checkSharedPacks } from '../../fsck/pg-checker';
import type { PgScan } from '../meta/pg-scan';
import { sessionExpiryMs } from './session-expiry';

export interface FsckFlags {
  quick?: boolean;
  repair?: boolean;
  json?: boolean;
  /** Show progress even when stderr is not a terminal (as JSON lines with --json). */
  progress?: boolean;
  force?: boolean;
  /** Check the pack index against the remote's listing. */
  remote?: boolean;
  /** Rebuild lost metadata from the remote (true: the volume's own remote; a string: that remote). */
  rebuildFromRemote?: boolean | string;
  /** Remote settings for the rebuild (credentials, Drive URLs). */
  settings?: Record<string, string | undefined>;
}

/** e2fsck's exit code for "operational error": the check could not run; nothing was changed. */
export const FSCK_OPERATIONAL = 8;

/** Thrown for a volume fsck cannot check (missing, foreign, too new, mounted, unreadable store). */
class FsckAbort extends UsageError {
  constructor(message: string) {
    super(message, FSCK_OPERATIONAL);
  }
}

/** Opens a volume for fsck after the checks that must come before anything maps or migrates it. */
function openForCheck(path: string, repair: boolean): Volume {
  if (!existsSync(path)) throw new FsckAbort(`no volume at ${path}`);
  if (!Volume.exists(path)) throw new FsckAbort(`${path} is not a pogfs volume (no ${VolumeFiles.meta})`);
  const holder = liveDaemon(path);
  if (holder) {
    throw new FsckAbort(
      `${path} is mounted at ${holder.mountpoint} (daemon pid ${holder.pid}): unmount it first (pogfs umount ${holder.mountpoint}); fsck never runs on a mounted volume`,
    );
  }
  const blocks = join(path, VolumeFiles.blocks);
  if (!existsSync(blocks)) throw new FsckAbort(`${path}: the block store (${VolumeFiles.blocks}/) is missing`);
  // LMDB maps its file: a truncated one would kill this process on first touch (SIGBUS).
  const file = checkStoreFile(blocks);
  if (file.problem) throw new FsckAbort(`${path}: the block store cannot be read safely: ${file.problem}; restore ${VolumeFiles.blocks}/ from a backup`);

  let volume: Volume;
  try {
    volume = Volume.open(path, { readOnly: !repair });
  } catch (err) {
    throw new FsckAbort((err as Error).message);
  }
  try {
    const version = volume.meta.schemaVersion();
    if (version > SCHEMA_VERSION) {
      throw new FsckAbort(`${path}: the metadata has schema version ${version}, newer than this pogfs understands (${SCHEMA_VERSION}); upgrade pogfs`);
    }
    if (version < SCHEMA_VERSION) {
      throw new FsckAbort(`${path}: the metadata has the older schema version ${version}; mount the volume once (or run fsck --repair) to upgrade it`);
    }
    const bs = volume.blockSize;
    if (!Number.isInteger(bs) || bs < 4096 || bs > 4 * 1024 * 1024 || (bs & (bs - 1)) !== 0) {
      throw new FsckAbort(`${path}: the superblock has an invalid block size ${bs}`);
    }
  } catch (err) {
    void volume.close();
    throw err;
  }
  return volume;
}

/** Whether `path` is a volume whose metadata is in another engine (PostgreSQL): its directory, or a joined machine's cache directory. */
function keepsMetaElsewhere(path: string): boolean {
  return existsSync(join(path, VolumeFiles.metaUrl)) && Volume.exists(path);
}

/** Refuses what fsck cannot do on a volume whose metadata is in PostgreSQL: changing it. */
function refuseExternalRepair(path: string, flags: FsckFlags): void {
  const rebuild = flags.rebuildFromRemote !== undefined && flags.rebuildFromRemote !== false;
  if (!flags.repair && !rebuild) return;
  throw new FsckAbort(
    `${path} keeps its metadata in PostgreSQL: fsck does not ${rebuild ? 'rebuild' : 'repair'} it (nothing was changed); ` +
      'restore the database from your pg_dump backup, or fix what fsck names through a mount (remove or copy the files it names)',
  );
}

/**
 * fsck of a volume whose metadata is in PostgreSQL: a check of one snapshot of the shared
 * metadata (and of where its blocks live), which changes nothing, so it runs while the
 * volume is mounted, on this machine or others.
 */
async function runExternalFsck(path: string, flags: FsckFlags, progress?: ProgressDisplay): Promise<FsckReport> {
  refuseExternalRepair(path, flags);
  const started = performance.now();
  let volume: Volume;
  try {
    volume = Volume.open(path, { readOnly: true });
  } catch (err) {
    throw new FsckAbort((err as Error).message);
  }
  try {
    // The pg client is loaded only for such a volume (it costs every other fsck its start-up time).
    const [{ PgScan }, { PG_SCHEMA_VERSION }, { SESSION_EXPIRY_MS }] = await Promise.all([
      import('../meta/pg-scan'),
      import('../meta/pg-schema'),
      import('../meta/pg-mount-session'),
    ]);
    let scan: PgScan;
    try {
      scan = await PgScan.open(volume.metaUrl!);
    } catch (err) {
      throw new FsckAbort(`${path}: ${(err as Error).message}`);
    }
    try {
      const version = scan.schemaVersion;
      if (version === 0) throw new FsckAbort(`${path}: ${volume.metaUrl} has no pogfs schema: not a pogfs volume`);
      if (version > PG_SCHEMA_VERSION) {
        throw new FsckAbort(`${path}: the metadata has schema version ${version}, newer than this pogfs understands (${PG_SCHEMA_VERSION}); upgrade pogfs`);
      }
      if (version < PG_SCHEMA_VERSION) throw new FsckAbort(`${path}: the metadata has the older schema version ${version}; mount the volume once to upgrade it`);
      let state;
      try {
        state = await checkPgVolume(volume, scan, { quick: !!flags.quick, sessionExpiryMs: sessionExpiryMs() ?? SESSION_EXPIRY_MS, progress });
      } catch (err) {
        throw new FsckAbort(`${path}: the check failed: ${(err as Error).message}`);
      } finally {
        progress?.clear();
      }
      if (flags.remote) {
        if (!volume.sharesBlocks) throw new FsckAbort(`${path} has no remote (--remote checks a volume's packs)`);
        const remote = await openVolumeRemote(volume.settings).catch((err: unknown) => {
          throw new FsckAbort(`${path}: ${(err as Error).message}`);
        });
        try {
          await checkSharedPacks(state, remote);
        } finally {
          await remote.close();
        }
      }
      const list = state.findings.list();
      return {
        volume: path,
        mode: flags.quick ? 'quick' : 'full',
        repair: false,
        findings: list,
        stats: { ...state.stats, seconds: (performance.now() - started) / 1000 },
        exitCode: exitCodeFor(list, false),
      };
    } finally {
      await scan.close();
    }
  } finally {
    await volume.close();
  }
}

/** Runs fsck as `pogfs fsck` does and returns the report (no printing). */
export async function runFsck(target: string, flags: FsckFlags, progress?: ProgressDisplay): Promise<FsckReport> {
  const path = resolve(target);
  if (keepsMetaElsewhere(path)) return runExternalFsck(path, flags, progress);
  const volume = openForCheck(path, !!flags.repair);
  const started = performance.now();
  try {
    // A clone or snapshot removal cut off by a crash: finished first by a repair, as a mount would.
    const unfinished = volume.meta.schemaVersion() >= SNAPSHOTS_SCHEMA ? volume.meta.clone.pendingTreeOps() : [];
    if (unfinished.length > 0 && flags.repair) new TreeOps(volume.meta.clone, () => volume.meta.barrier(), volume.store).finishPending();
    let state;
    try {
      state = checkVolume(volume, { quick: !!flags.quick, progress });
      for (const op of unfinished) state.findings.add('unfinished-tree-op', `a ${op.kind === 'clone' ? 'clone' : 'snapshot removal'} (inodes ${op.first} to ${op.last})`);
      if (unfinished.length > 0 && flags.repair) state.findings.setRepaired('unfinished-tree-op', unfinished.length, 'finished: a clone undone, a removal completed');
    } catch (err) {
      throw new FsckAbort(`${path}: the check failed: ${(err as Error).message}`);
    } finally {
      progress?.clear();
    }
    // The remote, when it is needed: --remote, or a repair that may fetch damaged blocks back.
    const hasRemote = volume.settings.remote !== '';
    if (flags.remote && !hasRemote) throw new FsckAbort(`${path} has no remote (--remote checks a volume's packs)`);
    const remote = hasRemote && (flags.remote || flags.repair) ? await openVolumeRemote(volume.settings).catch((err: unknown) => {
      if (flags.remote) throw new FsckAbort(`${path}: ${(err as Error).message}`);
      return undefined;
    }) : undefined;
    try {
      const packs = flags.remote && remote ? await checkPacks(state, remote) : undefined;
      return await finish(path, state, flags, started, remote, packs);
    } finally {
      await remote?.close();
    }
  } finally {
    await volume.close();
  }
}

/** Repairs what was found (if asked) and makes the report. */
async function finish(
  path: string,
  state: CheckState,
  flags: FsckFlags,
  started: number,
  remote: Remote | undefined,
  packs: Awaited<ReturnType<typeof checkPacks>> | undefined,
): Promise<FsckReport> {
  const findings = state.findings.list();
  const problems = findings.some((f) => f.severity !== 'notice');
  if (flags.repair && findings.some((f) => f.kind === 'metadata-corrupt')) {
    // Writing into a damaged SQLite file can only make it worse: repair nothing.
    for (const f of findings) {
      if (f.severity !== 'notice') state.findings.setRepaired(f.kind, 0, 'not repaired: the metadata database itself is damaged; restore meta.db from a backup (or sqlite3 .recover) first');
    }
  } else if (flags.repair && problems) {
    try {
      await repairVolume(state);
      if (remote) await repairFromRemote(state, remote, packs);
    } catch (err) {
      throw new FsckAbort(`${path}: the repair failed part way (run fsck again): ${(err as Error).message}`);
    }
  }
  const list = state.findings.list();
  return {
    volume: path,
    mode: flags.quick ? 'quick' : 'full',
    repair: !!flags.repair,
    findings: list,
    stats: { ...state.stats, seconds: (performance.now() - started) / 1000 },
    exitCode: exitCodeFor(list, !!flags.repair),
  };
}

/** The remote a rebuild reads: given on the command line, or named by the volume's (still readable) settings. */
function rebuildSpec(path: string, flag: boolean | string): string {
  if (typeof flag === 'string') return normalizeRemoteSpec(flag);
  try {
    const meta = MetaDb.open(join(path, VolumeFiles.meta), { readOnly: true });
    try {
      const spec = readSettings(meta.settings()).remote;
      if (spec) return spec;
    } finally {
      meta.close();
    }
  } catch {
    // unreadable: the block store keeps a copy of the name
  }
  try {
    const store = BlockStore.open(join(path, VolumeFiles.blocks), { readOnly: true });
    try {
      const spec = store.rememberedRemote();
      if (spec) return spec;
    } finally {
      void store.close();
    }
  } catch {
    // no block store either: the user must name the remote
  }
  throw new FsckAbort(`${path}: say which remote to rebuild from: --rebuild-from-remote local:DIR or drive:FOLDER`);
}

/** `pogfs fsck VOLUME --rebuild-from-remote [SPEC]`: metadata from the remote, then a repairing check. */
async function rebuild(path: string, flags: FsckFlags): Promise<void> {
  if (liveDaemon(path)) throw new FsckAbort(`${path} is mounted: unmount it first`);
  const spec = rebuildSpec(path, flags.rebuildFromRemote!);
  const given = Object.fromEntries(Object.entries(flags.settings ?? {}).filter(([, v]) => v !== undefined)) as Record<string, string>;
  let settings;
  try {
    settings = readSettings({ ...given, remote: spec }, 'given');
  } catch (err) {
    throw new FsckAbort((err as Error).message);
  }
  const remote = await openVolumeRemote(settings);
  try {
    const progress = progressDisplay(flags);
    let r;
    try {
      r = await rebuildFromRemote(path, spec, remote, given, progress);
    } finally {
      progress.clear();
    }
    const lines = [
      `rebuilt ${path} from ${spec}:`,
      r.setAside ? `  the old metadata database was set aside as ${r.setAside}` : '  there was no metadata database',
      r.generation !== undefined
        ? `  restored metadata generation ${r.generation} (${r.files} files)`
        : '  the remote holds no metadata backup: no file names could be recovered (the block index was rebuilt)',
      `  block index rebuilt from ${r.scan.packs} packs (${r.scan.blocks} blocks)` + (r.scan.unreadable.length ? `; ${r.scan.unreadable.length} packs unreadable: ${r.scan.unreadable.map((u) => `${u.name} (${u.problem})`).join(', ')}` : ''),
      r.unrecoverableBlocks > 0
        ? `  could not recover ${r.unrecoverableBlocks} blocks (in no pack and not local); files hurt: ${r.unrecoverableFiles.join(', ')}`
        : '  every block the files reference is in a pack or in the local store',
    ];
    console.error(lines.join('\n'));
  } catch (err) {
    throw new FsckAbort(`${path}: rebuilding from ${spec} failed: ${(err as Error).message}`);
  } finally {
    await remote.close();
  }
}

/** `pogfs fsck VOLUME [--quick] [--repair] [--json]`: prints the report, sets e2fsck's exit code. */
export async function fsck(target: string, flags: FsckFlags): Promise<void> {
  if (keepsMetaElsewhere(resolve(target))) refuseExternalRepair(resolve(target), flags);
  if (flags.rebuildFromRemote !== undefined && flags.rebuildFromRemote !== false) {
    await rebuild(resolve(target), flags);
    flags = { ...flags, repair: true, rebuildFromRemote: undefined };
  }
  const progress = progressDisplay(flags);
  let report: FsckReport;
  try {
    report = await runFsck(target, flags, progress);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new FsckAbort(`fsck failed: ${(err as Error).message}`);
  }
  console.log(flags.json ? renderJson(report) : renderText(report));
  process.exitCode = report.exitCode;
}
