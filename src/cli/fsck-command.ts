import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { checkVolume } from '../../fsck/checker';
import { repairVolume } from '../../fsck/repairer';
import { ProgressLine, exitCodeFor, renderJson, renderText, type FsckReport } from '../../fsck/report';
import { SCHEMA_VERSION } from '../meta/schema';
import { checkStoreFile } from '../store/block-store';
import { Volume, VolumeFiles } from '../vfs/volume';
import { liveDaemon } from './daemon';
import { UsageError } from './errors';

export interface FsckFlags {
  quick?: boolean;
  repair?: boolean;
  json?: boolean;
  force?: boolean;
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

/** Runs fsck as `pogfs fsck` does and returns the report (no printing). */
export async function runFsck(target: string, flags: FsckFlags, progress?: ProgressLine): Promise<FsckReport> {
  const path = resolve(target);
  const volume = openForCheck(path, !!flags.repair);
  const started = performance.now();
  try {
    let state;
    try {
      state = checkVolume(volume, { quick: !!flags.quick, progress });
    } catch (err) {
      throw new FsckAbort(`${path}: the check failed: ${(err as Error).message}`);
    } finally {
      progress?.clear();
    }
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
  } finally {
    await volume.close();
  }
}

/** `pogfs fsck VOLUME [--quick] [--repair] [--json]`: prints the report, sets e2fsck's exit code. */
export async function fsck(target: string, flags: FsckFlags): Promise<void> {
  const progress = new ProgressLine();
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
