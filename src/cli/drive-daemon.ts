/**
 * The daemon of `pogfs drive mount`: opens the state directory, scans the Drive the first
 * time (or catches up with one changes poll), mounts the read-only view, polls the changes
 * feed every --poll-interval seconds and answers `drive refresh`, `status` and `stats` on
 * the control socket in the state directory. `pogfs umount` ends it like a volume's daemon
 * (same daemon record, same fuse.pogfs mount type).
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DriveView, STATE_FILES } from '../driveview/drive-view';
import type { Invalidation } from '../driveview/mirror-db';
import { countPendingOps } from '../driveview/journal-db';
import type { UploadStatus } from '../driveview/uploader';
import { DriveViewFs } from '../driveview/drive-view-fs';
import { FsAdapter } from '../fuse/fs-adapter';
import { FuseSession } from '../fuse/session';
import { DRIVE_FULL_SCOPE, DRIVE_READONLY_SCOPE } from '../remote/credentials';
import { openDriveClient } from '../remote/open-remote';
import { serveControl } from './control-socket';
import { liveDaemon, writeDaemonRecord } from './daemon-record';
import { keepDaemonProcess } from './daemon-launch';
import { UsageError } from './errors';
import { openLog, type DaemonLogger } from './log';
import type { LogOptions } from './log-options';
import { DaemonMetrics, serveMetrics, type MetricsServer } from './metrics-server';
import { prepareMountpoint } from './mounts';
import { notifyReady, notifyStatus, notifyStopping } from './service-notify';

export interface DriveMountOptions {
  mountpoint: string;
  /** Mount over a directory that has entries (hiding them) instead of refusing. */
  allowNonEmpty: boolean;
  stateDir: string;
  rootId: string;
  sharedDriveId: string | undefined;
  cacheBytes: number;
  pollIntervalSec: number;
  credentials: string | undefined;
  driveApiUrl: string | undefined;
  driveTokenUrl: string | undefined;
  /** Where the log goes: a file, or `-` for stderr (default: pogfs.log in the state directory). */
  logFile?: string;
  /** Level and size bound of the log. */
  logOptions: LogOptions;
  /** Serve Prometheus metrics at this address (`--metrics`, parsed). */
  metrics?: { host: string; port: number };
  /** How long a later mount waits for its catch-up poll before serving the stored tree anyway. */
  catchUpWaitSec: number;
  /** `--rw`: writes are staged and uploaded; undefined: read-only. */
  writes?: { settleSec: number; stagingBytes: number };
  /** Reader tuning (tests, bench): chunk size and read-ahead. */
  chunkSize?: number;
  maxReadaheadBytes?: number;
  onReady: (error?: UsageError) => void;
  notice: (line: string) => void;
  /** Scan progress: items listed so far. */
  progress?: (items: number) => void;
}

/** What the daemon answers to `status` (and `stats`) on its control socket. */
export interface DriveViewStatus extends ReturnType<DriveView['status']> {
  kind: 'drive-view';
  mountpoint: string;
  stateDir: string;
  root: string;
  sharedDrive: string | undefined;
  mountedAt: string;
  pollIntervalSec: number;
  /** Drive calls since the mount, by method (and bytes.down). */
  calls: Record<string, number>;
  /** With --rw: what is not yet on Drive. */
  uploads?: UploadStatus;
}

function describeRoot(rootId: string, sharedDriveId: string | undefined): string {
  return sharedDriveId ? `shared drive ${sharedDriveId}` : rootId === 'root' ? 'My Drive' : `folder ${rootId}`;
}

/** Drive operations of a writable view at once. */
const UPLOAD_CONCURRENCY = 4;

export async function runDriveDaemon(o: DriveMountOptions): Promise<void> {
  const mountpoint = resolve(o.mountpoint);
  const stateDir = resolve(o.stateDir);
  try {
    prepareMountpoint(mountpoint, [{ what: 'state directory', path: stateDir }], o.allowNonEmpty, o.notice);
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const holder = liveDaemon(stateDir);
    if (holder) throw new UsageError(`the Drive view in ${stateDir} is already mounted at ${holder.mountpoint} (daemon pid ${holder.pid}); unmount it first with: pogfs umount ${holder.mountpoint}`);
    // One state directory mirrors one root: another root there would show the old tree.
    const wanted = describeRoot(o.rootId, o.sharedDriveId);
    const viewFile = join(stateDir, STATE_FILES.view);
    if (existsSync(viewFile)) {
      let had: { root?: string; sharedDrive?: string | null } = {};
      try {
        had = JSON.parse(readFileSync(viewFile, 'utf8')) as typeof had;
      } catch {
        // unreadable: rewritten below
      }
      const was = describeRoot(had.root ?? 'root', had.sharedDrive ?? undefined);
      if (had.root !== undefined && was !== wanted) throw new UsageError(`${stateDir} holds the view of ${was}, not of ${wanted}: give another --state-dir (or leave it out)`);
    }
  } catch (err) {
    o.onReady(err instanceof UsageError ? err : new UsageError((err as Error).message));
    return;
  }
  let log: DaemonLogger;
  const logTarget = o.logFile ?? join(stateDir, STATE_FILES.log);
  try {
    log = openLog(logTarget, o.logOptions);
  } catch (err) {
    o.onReady(new UsageError(`cannot open the log file ${logTarget}: ${(err as Error).message}`));
    return;
  }
  const recordPath = join(stateDir, STATE_FILES.daemon);
  writeFileSync(join(stateDir, STATE_FILES.view), JSON.stringify({ root: o.rootId, sharedDrive: o.sharedDriveId ?? null }) + '\n', { mode: 0o600 });
  let view: DriveView | undefined;
  let session: FuseSession | undefined;
  let timer: NodeJS.Timeout | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    let client;
    try {
      client = await openDriveClient(
        { credentialsPath: o.credentials, driveRootUrl: o.driveApiUrl, tokenUrl: o.driveTokenUrl },
        [o.writes ? DRIVE_FULL_SCOPE : DRIVE_READONLY_SCOPE],
      );
    } catch (err) {
      const msg = (err as Error).message;
      o.onReady(new UsageError(/pogfs auth/.test(msg) ? msg.replace('`pogfs auth`', '`pogfs auth --scope readonly`') : msg));
      return;
    }
    view = new DriveView(client, {
      stateDir,
      target: { rootId: o.rootId, sharedDriveId: o.sharedDriveId },
      cacheBytes: o.cacheBytes,
      reader: { ...(o.chunkSize ? { chunkSize: o.chunkSize } : {}), ...(o.maxReadaheadBytes ? { maxReadaheadBytes: o.maxReadaheadBytes } : {}) },
      log,
    });
    // Local changes are kept by the feed from the first poll on (a mount without --rw keeps
    // what an earlier --rw mount left for the next one to upload).
    const leftPending = o.writes ? 0 : countPendingOps(view.mirror.db);
    if (o.writes || leftPending > 0) view.keepLocalChanges(o.writes ? o.writes.stagingBytes : Number.MAX_SAFE_INTEGER);
    const firstScan = !view.sync.bootstrapped;
    const started = Date.now();
    // A later mount waits for its catch-up poll only so long: with Drive down, the stored tree is served and the poll goes on behind it.
    let lateCatchUp: Promise<Invalidation> | undefined;
    try {
      let statusAt = 0;
      const starting = view.start((items) => {
        o.progress?.(items);
        if (Date.now() - statusAt < 1000) return;
        statusAt = Date.now();
        notifyStatus(`scanning the Drive: ${items} items`, log);
      });
      if (firstScan) await starting;
      else {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<'late'>((resolve) => (timer = setTimeout(resolve, o.catchUpWaitSec * 1000, 'late')));
        const first = await Promise.race([starting, late]);
        clearTimeout(timer);
        if (first === 'late') {
          lateCatchUp = starting;
          log.warn(`the catch-up poll has not answered in ${o.catchUpWaitSec} s: serving the stored tree meanwhile`);
        }
      }
    } catch (err) {
      const msg = (err as Error).message;
      log.error('the first scan of the Drive failed', err);
      o.onReady(new UsageError(`cannot scan the Drive: ${msg}${/403|insufficient|scope/i.test(msg) ? '; run `pogfs auth --scope readonly` (the view reads all your files)' : ''}`, 1));
      return;
    }
    const counts = view.mirror.itemCount();
    log.info(`${firstScan ? 'scanned' : 'caught up with'} the Drive: ${counts.items} items in ${Date.now() - started} ms; calls ${JSON.stringify(client.counters())}`);

    let metrics: DaemonMetrics | undefined;
    if (o.metrics) {
      const [v, c] = [view, client];
      metrics = new DaemonMetrics({
        driveView: { chunkCache: () => v.cache.stats(), downloads: () => v.reader.stats },
        remote: { calls: () => c.counters(), requests: () => c.requestOutcomes() },
      });
      metricsServer = await serveMetrics(metrics, o.metrics, (err) => log.error('metrics server', err));
      log.info(`metrics at ${metricsServer.url}`);
    }
    // Names, attributes and pages are cached for an hour: each poll invalidates exactly
    // what changed, and pages stay cached across opens for the same reason.
    if (leftPending > 0) log.warn(`${leftPending} changes made through a --rw mount are not on Drive yet: mount with --rw to upload them`);
    const writing = o.writes && view.enableWrites({ settleMs: o.writes.settleSec * 1000, concurrency: UPLOAD_CONCURRENCY, stagingLimitBytes: o.writes.stagingBytes });
    let leavePending = false;
    const ops = new FsAdapter(new DriveViewFs(view, { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, writeBack: writing ? writing.writeBack : undefined, log }), {
      entryTimeout: 3600,
      attrTimeout: 3600,
      // Writable: pages of a file written here must not outlive a change of it.
      keepCache: !writing,
      keepDirCache: false,
    });
    const isRoot = process.getuid?.() === 0;
    session = FuseSession.mount(
      mountpoint,
      ops,
      {
        fsname: stateDir,
        subtype: 'pogfs',
        allowOther: isRoot,
        defaultPermissions: true,
        writebackCache: false,
        readOnly: !writing,
        negativeTimeout: 3600,
        attrTimeout: 3600,
      },
      { error: (msg, err) => log.error(msg, err), debug: o.logOptions.level === 'debug' ? (msg) => log.debug(msg) : undefined },
      metrics,
    );
    ops.attach(session);
    if (writing) writing.uploader.onInvalidate = (inval) => void ops.invalidate(inval).catch((err: unknown) => log.error('invalidating after a change found on Drive', err));
    lateCatchUp?.then((inval) => ops.invalidate(inval)).catch((err: unknown) => log.error('catch-up poll failed', err));
    const record = writeDaemonRecord(recordPath, mountpoint, metricsServer?.url);
    log.info(`mounted the Drive view of ${o.sharedDriveId ? `shared drive ${o.sharedDriveId}` : o.rootId} at ${mountpoint}`);
    process.chdir(stateDir);

    const v = view;
    const refresh = async () => {
      const r = await v.poll();
      await ops.invalidate(r.inval);
      if (r.changes > 0) log.info(`poll: ${r.changes} changes applied`);
      return { at: r.at, ok: r.ok, changes: r.changes, calls: r.calls, ...(r.error ? { error: r.error } : {}) };
    };
    const schedule = () => {
      if (o.pollIntervalSec <= 0) return;
      timer = setTimeout(() => {
        refresh()
          .catch((err: unknown) => log.error('poll failed', err))
          .finally(schedule);
      }, o.pollIntervalSec * 1000);
      timer.unref();
    };
    schedule();
    const mountedAt = record.started;
    const control = serveControl(
      async (req) => {
        if (req.op === 'status') {
          const s: DriveViewStatus = {
            kind: 'drive-view',
            mountpoint,
            stateDir,
            root: o.rootId,
            sharedDrive: o.sharedDriveId,
            mountedAt,
            pollIntervalSec: o.pollIntervalSec,
            calls: client.counters(),
            ...v.status(),
            ...(writing ? { uploads: writing.uploader.status() } : {}),
          };
          return s;
        }
        if (req.op === 'refresh') return refresh();
        if (req.op === 'sync' && writing) return { ...(await writing.uploader.whenDone()), uploads: writing.uploader.status() };
        if (req.op === 'leave-pending' && writing) {
          leavePending = req.leave !== false;
          return writing.uploader.status();
        }
        throw new Error(`a Drive view does not do ${JSON.stringify(req.op)}`);
      },
      (err) => log.error('control request failed', err),
    );
    const active = session;
    keepDaemonProcess(log, () => active.unmount({ lazy: true }));
    notifyReady(`mounted the Drive view of ${describeRoot(o.rootId, o.sharedDriveId)} at ${mountpoint}: ${counts.items} items`, log);
    o.onReady();
    await active.ended;
    notifyStopping(log);
    log.info('session ended');
    if (writing) {
      const left = writing.uploader.status();
      if (left.pendingOps > 0 && !leavePending) {
        log.info(`unmounted: uploading what is pending (${left.pendingOps} operations, ${left.pendingBytes} bytes) before exiting`);
        const r = await writing.uploader.whenDone();
        if (!r.ok) log.error(`pending changes stay staged for the next mount: ${r.error}`);
      } else if (left.pendingOps > 0) log.info(`unmounted with --no-wait: ${left.pendingOps} pending operations stay staged for the next mount`);
      await writing.uploader.close();
    }
    clearTimeout(timer);
    control.close();
    await client.close();
  } catch (err) {
    log.error('daemon failed', err);
    if (session === undefined) o.onReady(new UsageError(`cannot mount ${mountpoint}: ${(err as Error).message}`));
    else throw err;
  } finally {
    clearTimeout(timer);
    await metricsServer?.close();
    view?.close();
    rmSync(recordPath, { force: true });
    log.info('state closed');
    log.flush();
  }
}
