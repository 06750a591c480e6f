/**
 * `pogfs drive mount | refresh | dupes`, and `stats`/`status` of a mounted Drive view.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { STATE_FILES } from '../driveview/drive-view';
import { applyDupes, planDupes, undoDupes, type KeepRule } from '../driveview/dupes';
import { MirrorDb } from '../driveview/mirror-db';
import { formatBytes, formatRows } from '../format';
import { DRIVE_FULL_SCOPE, defaultCredentialsPath } from '../remote/credentials';
import { openDriveClient } from '../remote/open-remote';
import { callControl } from './control-socket';
import type { DriveViewStatus } from './drive-daemon';
import type { UploadStatus } from '../driveview/uploader';
import { UsageError } from './errors';
import { daemonReporter, launchDaemon, type DaemonFlags } from './daemon-launch';
import { logArgv, logSettings } from './log-options';
import { parseMetricsAddress } from './metrics-address';
import { mountOverlap, pogfsMountContaining } from './mounts';
import { progressDisplay } from './progress-output';

export interface DriveMountFlags extends DaemonFlags {
  root?: string;
  sharedDrive?: string;
  stateDir?: string;
  cacheSize?: number;
  pollInterval?: number;
  credentials?: string;
  driveApiUrl?: string;
  driveTokenUrl?: string;
  chunkSize?: number;
  readahead?: number;
  catchUpWait?: number;
  rw?: boolean;
  uploadDelay?: number;
  stagingSize?: number;
}

const DEFAULT_CACHE_BYTES = 10 * 1024 ** 3;
const DEFAULT_POLL_SECONDS = 60;
const DEFAULT_CATCH_UP_SECONDS = 10;
const DEFAULT_UPLOAD_DELAY_SECONDS = 5;
const DEFAULT_STAGING_BYTES = 50 * 1024 ** 3;

/** `$XDG_DATA_HOME/pogfs/drive/<account>-<root>`: the account is a hash of the credentials' identity, so no call is needed to find it. */
export function defaultStateDir(flags: DriveMountFlags): string {
  const base = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  const credentials = resolve(flags.credentials ?? defaultCredentialsPath());
  let identity = credentials;
  try {
    const json = JSON.parse(readFileSync(credentials, 'utf8')) as { refresh_token?: string; client_email?: string };
    identity = json.refresh_token ?? json.client_email ?? credentials;
  } catch {
    // A bare token file, or none yet: the path stands for the account.
  }
  const account = createHash('sha256').update(`${flags.driveApiUrl ?? ''}\n${identity}`).digest('hex').slice(0, 12);
  const root = (flags.sharedDrive ? `shared-${flags.sharedDrive}` : flags.root ?? 'root').replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 80);
  return join(base, 'pogfs', 'drive', `${account}-${root}`);
}

export async function driveMount(mountpoint: string, flags: DriveMountFlags): Promise<void> {
  if (flags.root && flags.sharedDrive) throw new UsageError('give --root or --shared-drive, not both (a shared drive is mounted from its top)');
  const stateDir = resolve(flags.stateDir ?? defaultStateDir(flags));
  const pollInterval = flags.pollInterval ?? DEFAULT_POLL_SECONDS;
  if (!(pollInterval >= 0)) throw new UsageError(`--poll-interval must be a number of seconds (0: only on refresh), not ${pollInterval}`);
  // Checked here, before anything is started, so a typo is one line and exit 2.
  const metrics = flags.metrics === undefined ? undefined : parseMetricsAddress(flags.metrics);
  const { logFile, logOptions } = logSettings(flags);
  if (flags.foreground) {
    const { runDriveDaemon } = await import('./drive-daemon');
    const report = daemonReporter(flags.ipcReady);
    let lastProgress = 0;
    const startedAt = Date.now();
    const scan = scanProgress(flags);
    await runDriveDaemon({
      mountpoint,
      stateDir,
      rootId: flags.root ?? 'root',
      sharedDriveId: flags.sharedDrive,
      cacheBytes: flags.cacheSize ?? DEFAULT_CACHE_BYTES,
      pollIntervalSec: pollInterval,
      catchUpWaitSec: flags.catchUpWait ?? DEFAULT_CATCH_UP_SECONDS,
      credentials: flags.credentials,
      driveApiUrl: flags.driveApiUrl,
      driveTokenUrl: flags.driveTokenUrl,
      logFile,
      logOptions,
      metrics,
      allowNonEmpty: !!flags.allowNonEmpty,
      chunkSize: flags.chunkSize,
      maxReadaheadBytes: flags.readahead,
      writes: flags.rw ? { settleSec: flags.uploadDelay ?? DEFAULT_UPLOAD_DELAY_SECONDS, stagingBytes: flags.stagingSize ?? DEFAULT_STAGING_BYTES } : undefined,
      notice: report.notice,
      progress: (items) => {
        const now = Date.now();
        if (now - lastProgress < 500) return;
        lastProgress = now;
        if (report.send) report.send({ progress: items, elapsedMs: now - startedAt });
        else scan.show(items, now - startedAt);
      },
      onReady: report.onReady,
    });
    scan.end();
    report.finish();
    return;
  }
  // A state directory under the mount point would be hidden by it, and the daemon would wait on itself.
  const overlap = mountOverlap(mountpoint, [{ what: 'state directory', path: stateDir }]);
  if (overlap) throw new UsageError(overlap);
  const argv = [process.argv[1], 'drive', 'mount', resolve(mountpoint), '--foreground', '--ipc-ready', '--state-dir', stateDir, '--poll-interval', String(pollInterval)];
  if (flags.root) argv.push('--root', flags.root);
  if (flags.sharedDrive) argv.push('--shared-drive', flags.sharedDrive);
  if (flags.cacheSize !== undefined) argv.push('--cache-size', String(flags.cacheSize));
  if (flags.credentials) argv.push('--credentials', resolve(flags.credentials));
  if (flags.driveApiUrl) argv.push('--drive-api-url', flags.driveApiUrl);
  if (flags.driveTokenUrl) argv.push('--drive-token-url', flags.driveTokenUrl);
  if (flags.allowNonEmpty) argv.push('--allow-non-empty');
  if (flags.metrics !== undefined) argv.push('--metrics', flags.metrics);
  argv.push(...logArgv(logFile, logOptions));
  if (flags.chunkSize) argv.push('--chunk-size', String(flags.chunkSize));
  if (flags.readahead) argv.push('--readahead', String(flags.readahead));
  if (flags.catchUpWait !== undefined) argv.push('--catch-up-wait', String(flags.catchUpWait));
  if (flags.rw) argv.push('--rw');
  if (flags.uploadDelay !== undefined) argv.push('--upload-delay', String(flags.uploadDelay));
  if (flags.stagingSize !== undefined) argv.push('--staging-size', String(flags.stagingSize));
  const scan = scanProgress(flags);
  await launchDaemon(argv, {
    what: 'Drive view daemon',
    mountpoint,
    log: logFile ?? join(stateDir, STATE_FILES.log),
    onProgress: (m) => scan.show(m.progress ?? 0, m.elapsedMs ?? 0),
  });
  scan.end();
}

/**
 * The first scan's progress (items listed so far; the total is not known): a counting
 * line on a terminal; with --progress, the commands' progress output (JSON lines on
 * stderr with --json, a line even when stderr is not a terminal without).
 */
function scanProgress(flags: DriveMountFlags): { show(items: number, elapsedMs: number): void; end(): void } {
  if (flags.progress) {
    const display = progressDisplay(flags);
    display.start('scanning the Drive');
    return { show: (items) => display.update(items, 0), end: () => display.clear() };
  }
  let shown = false;
  return {
    show: (items, elapsedMs) => {
      if (!process.stderr.isTTY) return;
      shown = true;
      const rate = elapsedMs > 0 ? Math.round((items * 1000) / elapsedMs) : 0;
      process.stderr.write(`\rpogfs: scanning the Drive: ${items} items (${rate}/s)   `);
    },
    end: () => {
      if (shown) process.stderr.write('\n');
    },
  };
}

/** The state directory of a mounted Drive view holding `target`, or undefined if it is not one. */
export function driveViewOf(target: string): { stateDir: string; mountpoint: string } | undefined {
  const m = pogfsMountContaining(resolve(target));
  if (!m || !existsSync(join(m.source, STATE_FILES.view))) return undefined;
  return { stateDir: m.source, mountpoint: m.target };
}

function mountedView(target: string): { stateDir: string; mountpoint: string } {
  const v = driveViewOf(target);
  if (!v) throw new UsageError(`${resolve(target)} is not a mounted Drive view (mount one with: pogfs drive mount MOUNTPOINT)`);
  return v;
}

export async function driveRefresh(mountpoint: string): Promise<void> {
  const v = mountedView(mountpoint);
  let r: { ok: boolean; changes: number; calls: number; error?: string };
  try {
    r = await callControl(v.stateDir, { op: 'refresh' });
  } catch (err) {
    throw new UsageError(`${v.mountpoint}: ${(err as Error).message}`, 1);
  }
  if (!r.ok) throw new UsageError(`${v.mountpoint}: the changes poll failed: ${r.error ?? 'unknown error'}; the last known tree is still served`, 1);
  console.error(`pogfs: ${r.changes} changes applied (${r.calls} Drive calls)`);
}

/** `pogfs drive sync MOUNTPOINT`: returns once everything written through a --rw view is on Drive. */
export async function driveSync(mountpoint: string): Promise<void> {
  const v = mountedView(mountpoint);
  let r: { ok: boolean; error?: string; uploads: UploadStatus };
  try {
    r = await callControl(v.stateDir, { op: 'sync' }, Infinity);
  } catch (err) {
    throw new UsageError(`${v.mountpoint}: ${(err as Error).message}`, 1);
  }
  if (r === undefined || r === null) throw new UsageError(`${v.mountpoint} is a read-only Drive view: nothing to sync`, 1);
  if (!r.ok) throw new UsageError(`${v.mountpoint}: not everything is on Drive: ${r.error ?? 'unknown error'}; ${r.uploads.pendingOps} operations stay staged (${formatBytes(r.uploads.pendingBytes)})`, 1);
  console.error(`pogfs: everything written to ${v.mountpoint} is on Drive`);
}

export async function driveStatusOf(target: string): Promise<DriveViewStatus> {
  const v = mountedView(target);
  try {
    return await callControl<DriveViewStatus>(v.stateDir, { op: 'status' });
  } catch (err) {
    throw new UsageError(`${v.mountpoint}: ${(err as Error).message}`, 1);
  }
}

/** `pogfs stats` and `pogfs status` of a Drive view (the same figures; stats adds the per-program table). */
export async function driveStatus(target: string, json: boolean, withPrograms: boolean): Promise<void> {
  const s = await driveStatusOf(target);
  if (json) {
    console.log(JSON.stringify(s, null, 2));
    return;
  }
  const calls = Object.entries(s.calls).filter(([k]) => !k.startsWith('bytes.'));
  const rows: [string, string][] = [
    ['Drive view', `${s.mountpoint} (${s.uploads ? 'read-write' : 'read-only'}) of ${s.sharedDrive ? `shared drive ${s.sharedDrive}` : s.root === 'root' ? 'My Drive' : `folder ${s.root}`}`],
    ['items', `${s.items} (${s.folders} folders, ${s.files} files, ${formatBytes(s.bytes)})`],
    ['Drive calls since mount', calls.map(([k, n]) => `${k} ${n}`).join(', ') || 'none'],
    ['downloaded', `${formatBytes(s.downloads.bytes)} in ${s.downloads.downloads} ranged reads${s.downloads.refused ? `; ${s.downloads.refused} files refused by Drive` : ''}${s.downloads.md5Mismatches ? `; ${s.downloads.md5Mismatches} md5 mismatches` : ''}`],
    ['chunk cache', `${formatBytes(s.cache.bytes)} of ${formatBytes(s.cache.capacityBytes)} in ${s.cache.chunks} chunks; hit ratio ${(s.cache.hitRatio * 100).toFixed(1)}% (${s.cache.hits} hits, ${s.cache.misses} misses)`],
    ['changes token', s.pageTokenAgeSeconds === undefined ? 'none' : `${Math.round(s.pageTokenAgeSeconds)} s old`],
    ['last poll', s.lastPoll ? `${s.lastPoll.at}: ${s.lastPoll.ok ? `${s.lastPoll.changes} changes` : `FAILED: ${s.lastPoll.error ?? ''}`}` : 'none since mount'],
    ['open files', String(s.openFiles)],
  ];
  const u = s.uploads;
  if (u) {
    const rate = u.rateBytesPerSec > 0 ? `, ${formatBytes(u.rateBytesPerSec)}/s${u.etaSeconds !== undefined ? `, ETA ${u.etaSeconds} s` : ''}` : '';
    rows.push(['pending uploads', `${u.pendingFiles} files, ${formatBytes(u.pendingBytes)}; ${u.pendingOps} operations${rate}${u.stopped ? `; STOPPED: ${u.stopped}` : ''}${u.failing ? `; FAILING: ${u.failing}` : ''}`]);
    rows.push(['staging', `${formatBytes(u.stagedBytes)} of ${formatBytes(u.stagingLimitBytes)}; uploaded since mount: ${u.uploadedFiles} files, ${formatBytes(u.uploadedBytes)}`]);
  }
  if (withPrograms) {
    for (const [program, bytes] of Object.entries(s.downloads.byProgram).sort((a, b) => b[1] - a[1])) rows.push([`  downloaded by ${program}`, formatBytes(bytes)]);
    for (const [path, bytes] of Object.entries(s.downloads.byFile).sort((a, b) => b[1] - a[1]).slice(0, 5)) rows.push([`  downloaded of ${path}`, formatBytes(bytes)]);
  }
  console.log(formatRows(rows));
}

export interface DupesFlags {
  stateDir?: string;
  keep?: KeepRule;
  apply?: boolean;
  json?: boolean;
  undo?: string;
  credentials?: string;
  driveApiUrl?: string;
  driveTokenUrl?: string;
}

/** `pogfs drive dupes [MOUNTPOINT | --state-dir DIR] [PATH]`. */
export async function driveDupes(args: string[], flags: DupesFlags): Promise<void> {
  if (flags.undo) {
    const client = await openClient(flags);
    try {
      const r = await undoDupes(client, resolve(flags.undo));
      console.error(`pogfs: restored ${r.restored} items from the trash and moved ${r.moved} back`);
    } catch (err) {
      throw scopeError(err);
    } finally {
      await client.close();
    }
    return;
  }
  let stateDir: string;
  let under: string | undefined;
  let mountpoint: string | undefined;
  if (flags.stateDir) {
    stateDir = resolve(flags.stateDir);
    if (args.length > 1) throw new UsageError('with --state-dir, dupes takes at most a PATH inside the view');
    under = args[0];
  } else {
    if (args.length === 0) throw new UsageError('dupes needs a mounted Drive view (MOUNTPOINT) or --state-dir DIR');
    const v = mountedView(args[0]);
    stateDir = v.stateDir;
    mountpoint = v.mountpoint;
    if (args.length > 2) throw new UsageError('dupes takes MOUNTPOINT [PATH]');
    under = args[1];
  }
  if (!existsSync(join(stateDir, STATE_FILES.mirror))) throw new UsageError(`${stateDir} holds no Drive view state (mount the Drive once with pogfs drive mount)`);
  if (under !== undefined) {
    // A path inside the mount (absolute or relative to the mount point) or already a view path.
    const abs = mountpoint && (isAbsolute(under) || existsSync(resolve(under))) ? resolve(under) : undefined;
    under = abs && mountpoint && (abs === mountpoint || abs.startsWith(`${mountpoint}/`)) ? `/${relative(mountpoint, abs)}` : `/${under.replace(/^\/+/, '')}`;
  }
  const mirror = new MirrorDb(join(stateDir, STATE_FILES.mirror));
  try {
    const plan = planDupes(mirror, flags.keep ?? 'oldest', under);
    if (!flags.apply) {
      printPlan(plan, !!flags.json);
      return;
    }
    const logPath = join(stateDir, `dupes-${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
    const client = await openClient(flags);
    try {
      const r = await applyDupes(client, mirror, plan, logPath);
      if (flags.json) console.log(JSON.stringify({ ...plan, log: logPath }, null, 2));
      else {
        printPlan(plan, false);
        console.log(`moved ${r.moved} items and trashed ${r.trashed}; undo with: pogfs drive dupes --undo ${logPath}`);
      }
    } catch (err) {
      throw scopeError(err);
    } finally {
      await client.close();
    }
  } finally {
    mirror.close();
  }
}

async function openClient(flags: DupesFlags) {
  try {
    return await openDriveClient({ credentialsPath: flags.credentials, driveRootUrl: flags.driveApiUrl, tokenUrl: flags.driveTokenUrl }, [DRIVE_FULL_SCOPE]);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function scopeError(err: unknown): Error {
  const msg = (err as Error).message;
  if (/HTTP 403 (insufficientPermissions|insufficientFilePermissions|forbidden)|insufficient/i.test(msg)) {
    return new UsageError(`Drive refused the change (${msg}): the saved token cannot change your files; run \`pogfs auth --scope full\``, 1);
  }
  return new UsageError(msg, 1);
}

function printPlan(plan: ReturnType<typeof planDupes>, json: boolean): void {
  if (json) {
    console.log(JSON.stringify(plan, null, 2));
    return;
  }
  for (const g of plan.files) {
    console.log(`${g.md5} ${formatBytes(g.size)}: keep ${g.keep.path}`);
    for (const e of g.extras) console.log(`  trash ${e.path}`);
  }
  for (const g of plan.folders) console.log(`folder ${g.path}: keep ${g.keep.id}, merge ${g.merge.map((m) => m.id).join(', ')}`);
  console.log(`${plan.files.length} duplicate file groups, ${plan.folders.length} merged folder groups; ${formatBytes(plan.bytes_reclaimable)} reclaimable`);
}
