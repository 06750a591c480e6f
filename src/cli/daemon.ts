import { rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { collectGarbageLive } from '../gc/block-gc';
import { FsAdapter } from '../fuse/fs-adapter';
import { FuseSession } from '../fuse/session';
import { PogFs } from '../vfs/filesystem';
import { Volume, VolumeFiles } from '../vfs/volume';
import { liveDaemon, writeDaemonRecord } from './daemon-record';
import { keepDaemonProcess } from './daemon-launch';
import { UsageError, userFacingError } from './errors';
import { serveControl, type ControlRequest } from './control-socket';
import { sessionExpiryMs } from './session-expiry';
import { getSystemErrorName } from 'node:util';
import { FsError } from '../posix/errors';
import type { Invalidation } from '../posix/file-system';
import type { ChangeWatch, ExternalChange } from '../meta/engine';
import { openLog, type DaemonLogger } from './log';
import type { LogOptions } from './log-options';
import { mountOverlap, prepareMountpoint } from './mounts';
import { DaemonMetrics, serveMetrics, type MetricsServer } from './metrics-server';
import { attachRemote, detachRemote, startBackups, type AttachedRemote } from './remote-attachment';
import { localRemoteDir } from '../remote/remote-spec';
import { collectRemoteGarbage } from '../gc/remote-gc';
import { collectSharedGarbage, sharedGcGraceMs } from '../gc/shared-gc';
import { notifyReady, notifyStatus, notifyStopping } from './service-notify';

export interface DaemonOptions {
  volume: string;
  mountpoint: string;
  allowOther: boolean;
  syncOnClose: boolean;
  /** Everything reaches the disk within this long (ms). */
  commitIntervalMs: number;
  /** Mount read-only: no writes, no writer lock, no uploads. */
  readOnly: boolean;
  /** Take the remote's writer lock from another holder (with a warning). */
  breakLock: boolean;
  /** Mount over a directory that has entries (hiding them) instead of refusing. */
  allowNonEmpty: boolean;
  /** Where to write the daemon's pid once the mount is ready (systemd Type=forking). */
  pidFile?: string;
  /** Where the log goes: a file, or `-` for stderr (default: pogfs.log in the volume). */
  logFile?: string;
  /** Level and size bound of the log. */
  logOptions: LogOptions;
  /** Serve Prometheus metrics at this address (`--metrics`, parsed). */
  metrics?: { host: string; port: number };
  /** Called once the mount is ready (or with the reason it is not). */
  onReady: (error?: UsageError) => void;
  /** Lines the user should see (stale mount cleaned up, and so on). */
  notice: (line: string) => void;
}

/** A `local:DIR` remote served from under the mount point would also wait on itself. */
function checkRemoteOutsideMount(mountpoint: string, remote: string | undefined): void {
  const dir = localRemoteDir(remote);
  if (dir === undefined) return;
  const overlap = mountOverlap(mountpoint, [{ what: 'remote directory', path: dir }]);
  if (overlap) throw new UsageError(overlap);
}

/** A clone or snapshot request; a refusal says its errno's name (the CLI words it). */
async function treeRequest(fs: PogFs, req: ControlRequest): Promise<{ inodes: number; invalidate: Invalidation }> {
  try {
    if (req.op === 'clone') return await fs.clone(req.path ?? '', req.to ?? '');
    if (req.op === 'snapshot-create') return await fs.createSnapshot(req.name ?? '', req.path ?? '');
    return await fs.removeSnapshot(req.name ?? '');
  } catch (err) {
    if (err instanceof FsError) throw new Error(`${getSystemErrorName(-err.errno)}${err.message.startsWith('errno ') ? '' : `: ${err.message}`}`);
    throw err;
  }
}

/**
 * Makes the mount forget what other mounts of a shared metadata engine change (the engine's
 * watchChanges; nothing for an engine that has no other clients): each change drops the
 * read copies it makes stale in `fs`, then the kernel's entries, attributes and pages.
 * In commit order; the changes that come while one is being applied are applied together
 * next (a burst elsewhere, a `tar x`, names each directory once, not once per file). The
 * kernel's answers are not waited on by any request (its notices run on worker threads),
 * and its refusals (ENOENT for an inode or name it no longer holds) are normal: nothing is
 * said above debug level.
 */
function followChanges(volume: Volume, fs: PogFs, adapter: FsAdapter, log: DaemonLogger): ChangeWatch | undefined {
  const engine = volume.engine;
  if (!engine.watchChanges) return undefined;
  let queued: ExternalChange[] = [];
  let applying = false;
  const apply = async (): Promise<void> => {
    applying = true;
    while (queued.length > 0) {
      const change = mergeChanges(queued);
      queued = [];
      if (change.kind === 'everything') log.debug(`another mount's changes: everything may have changed (${change.reason})`);
      try {
        await adapter.invalidate(await fs.externalChange(change));
      } catch (err) {
        log.debug(`following another mount's change failed: ${(err as Error).message}`);
      }
    }
    applying = false;
  };
  return engine.watchChanges((change) => {
    queued.push(change);
    if (!applying) void apply();
  });
}

/** Several changes as one: every inode and entry they name, or "everything" if one says so. */
function mergeChanges(changes: readonly ExternalChange[]): ExternalChange {
  const inodes = new Set<number>();
  const entries: Array<[number, Buffer]> = [];
  for (const c of changes) {
    if (c.kind === 'everything') return c;
    for (const ino of c.inodes) inodes.add(ino);
    entries.push(...c.entries);
  }
  return { kind: 'names', inodes: [...inodes], entries };
}

/** Runs the filesystem until it is unmounted or told to stop. Resolves after a clean shutdown. */
export async function runDaemon(o: DaemonOptions): Promise<void> {
  const volumePath = resolve(o.volume);
  const mountpoint = resolve(o.mountpoint);
  let volume: Volume;
  const engineLog: { warn(msg: string): void } = { warn: (msg) => process.stderr.write(`pogfs: ${msg}\n`) };
  try {
    prepareMountpoint(mountpoint, [{ what: 'volume', path: volumePath }], o.allowNonEmpty, o.notice);
    const holder = liveDaemon(volumePath);
    if (holder) throw new UsageError(`volume ${volumePath} is already mounted at ${holder.mountpoint} (daemon pid ${holder.pid})`);
    volume = Volume.open(volumePath);
    try {
      checkRemoteOutsideMount(mountpoint, volume.settings.remote);
      // The log opens after the engine (it may live on the volume): until then, stderr.
      // A mount claims a shared metadata database for itself (refused while another holds it).
      await volume.openEngine({ warn: (msg) => engineLog.warn(msg), mountSession: { readOnly: o.readOnly, expiryMs: sessionExpiryMs() } });
    } catch (err) {
      await volume.close();
      throw err;
    }
  } catch (err) {
    o.onReady(userFacingError(err) ?? new UsageError((err as Error).message));
    return;
  }
  let log: DaemonLogger;
  const logTarget = o.logFile ?? join(volumePath, VolumeFiles.log);
  try {
    log = openLog(logTarget, o.logOptions);
    engineLog.warn = (msg) => log.warn(msg);
  } catch (err) {
    await volume.close();
    o.onReady(new UsageError(`cannot open the log file ${logTarget}: ${(err as Error).message}`));
    return;
  }
  const recordPath = join(volumePath, VolumeFiles.daemon);
  let session: FuseSession | undefined;
  let attached: AttachedRemote | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    if (volume.settings.remote) {
      log.info(`attaching the remote ${volume.settings.remote} (its writer lock, then the cache)`);
      notifyStatus(`attaching the remote ${volume.settings.remote}`, log);
      attached = await attachRemote(volume, { readOnly: o.readOnly, breakLock: o.breakLock, log, notice: o.notice });
      log.info(`remote ${attached.remote.description}: cache ${volume.settings.cacheBytes} bytes, ${volume.ledger.dirtyStats().blocks} blocks waiting for upload`);
    }
    const cache = attached?.cache;
    const fs = new PogFs(
      volume,
      {
        syncOnClose: o.syncOnClose,
        commitIntervalMs: o.commitIntervalMs,
        metadataCommitMs: 1000,
        onSecurityXattr: () => session?.setSecurityXattrsPresent(true),
        cache,
        publishBlocks: attached?.shared && cache ? () => cache.publishStored() : undefined,
        republishBlocks: attached?.shared && cache ? (hashes) => cache.republish(hashes) : undefined,
        readaheadBytes: cache?.readaheadBytes ?? volume.settings.readaheadBytes,
        // Only ever called by a request, so once the adapter is serving.
        forgetInKernel: (inval): Promise<void> => adapter.invalidate(inval),
      },
      log,
    );
    if (!o.readOnly) {
      const unfinished = fs.finishTreeOps();
      if (unfinished > 0) log.info(`finished ${unfinished} clone or snapshot operations an earlier crash left under way`);
    }
    if (attached) startBackups(attached, volume, () => fs.reclaimer.hold(), log);
    if (volume.takenAtOpen > 0) log.info(`took ${volume.takenAtOpen} blocks of files closed before an earlier crash into the block store`);
    await fs.settleParked();
    const freed = await fs.recoverUnlinked();
    if (freed > 0) log.info(`freed ${freed} inodes left unlinked by an earlier crash`);
    let metrics: DaemonMetrics | undefined;
    if (o.metrics) {
      const remote = attached;
      metrics = new DaemonMetrics({
        volume: {
          chunkCache: () => volume.store.chunkStats().cache,
          writeBufferBytes: () => fs.writer.bufferedBytes(),
          uploadPending: () => (remote ? volume.ledger.dirtyStats() : { blocks: 0, bytes: 0 }),
          blockStore: () => volume.store.stats(),
        },
        remote: remote && {
          calls: () => remote.remote.counters(),
          requests: () => remote.remote.requestOutcomes?.() ?? [],
          fetch: () => remote.cache.status().fetch,
          reads: () => remote.cache.status().reads,
        },
      });
      metricsServer = await serveMetrics(metrics, o.metrics, (err) => log.error('metrics server', err));
      log.info(`metrics at ${metricsServer.url}`);
    }
    const isRoot = process.getuid?.() === 0;
    // The kernel may cache names, attributes, pages and listings for a minute, and pages
    // across opens: this mount is the volume's only writer, or (a shared metadata engine)
    // the other mounts' changes are followed below and make it forget what they change.
    const adapter: FsAdapter = new FsAdapter(fs, { entryTimeout: 60, attrTimeout: 60, keepCache: true, keepDirCache: true });
    // With the writeback cache the kernel trusts its own size and times of a file it holds
    // over any the filesystem gives it, even after an invalidation: another mount's
    // truncate or write would never show. So a mount that follows other mounts' changes
    // sends writes through at once (and the daemon keeps the times).
    const shared = volume.engine.watchChanges !== undefined;
    session = FuseSession.mount(
      mountpoint,
      adapter,
      {
        fsname: volumePath,
        subtype: 'pogfs',
        allowOther: isRoot || o.allowOther,
        defaultPermissions: true,
        writebackCache: !shared,
        negativeTimeout: 60,
        attrTimeout: 60,
        readOnly: o.readOnly,
      },
      { error: (msg, err) => log.error(msg, err), debug: o.logOptions.level === 'debug' ? (msg) => log.debug(msg) : undefined },
      metrics,
    );
    session.setSecurityXattrsPresent(fs.hasSecurityXattrs);
    // Clones and snapshots tell the kernel of the names they make.
    adapter.attach(session);
    const following = followChanges(volume, fs, adapter, log);
    if (following) await following.ready;
    writeDaemonRecord(recordPath, mountpoint, metricsServer?.url);
    if (o.pidFile) writeFileSync(o.pidFile, `${process.pid}\n`);
    log.info(`mounted ${volumePath} at ${mountpoint}`);

    // The daemon's working directory is its volume: it keeps no user directory busy,
    // and the control socket's path stays short.
    process.chdir(volumePath);
    // gc, backups and pins change what the store and the remote hold: one at a time.
    let maintenance: Promise<unknown> = Promise.resolve();
    const exclusive = <T>(fn: () => Promise<T>): Promise<T> => {
      const run = maintenance.then(fn);
      maintenance = run.catch(() => undefined);
      return run;
    };
    const control = serveControl(
      async (req, progress) => {
        if (req.op === 'status') {
          return { ...fs.status(), mountpoint, readOnly: o.readOnly, remote: attached?.cache.status(), backup: attached?.backup?.lastResult, backupError: attached?.backup?.lastError };
        }
        if (req.op === 'pin' || req.op === 'unpin') {
          if (!attached) throw new Error('this volume has no remote: everything is local already');
          if (attached.shared) throw new Error('pin is not supported yet on a volume whose metadata is in PostgreSQL');
          const ino = await fs.inoOfPath(req.path ?? '');
          const cache = attached.cache;
          // Blocks of files just closed wait parked in the metadata: into the store first, where pin finds them.
          if (req.op === 'pin') await fs.durability.move();
          return req.op === 'pin' ? exclusive(() => cache.pin(ino, progress)) : exclusive(() => cache.unpin(ino));
        }
        if (req.op === 'snapshot-list') return fs.listSnapshots().map((snap) => ({ ...snap, name: snap.name.toString() }));
        if (req.op === 'clone' || req.op === 'snapshot-create' || req.op === 'snapshot-rm') {
          if (o.readOnly) throw new Error('the volume is mounted read-only');
          return exclusive(async () => {
            const r = await treeRequest(fs, req);
            await adapter.invalidate(r.invalidate);
            log.info(`${req.op} ${req.name ?? req.path ?? ''}${req.to === undefined ? '' : ` to ${req.to}`}: ${r.inodes} inodes`);
            return { inodes: r.inodes };
          });
        }
        if (req.op !== 'gc') throw new Error(`unknown request ${JSON.stringify(req.op)}`);
        if (o.readOnly) throw new Error('the volume is mounted read-only: gc changes it');
        const shared = attached?.shared;
        if (attached && shared) {
          // Several machines write the volume: decided in the shared index, not by this store's counts.
          const parts = { remote: attached.remote, cache: attached.cache, index: shared };
          const repackBelow = typeof req.repackBelow === 'number' ? req.repackBelow : undefined;
          return exclusive(async () => {
            await fs.quiesceForGc();
            const remote = await collectSharedGarbage(volume, parts, { dryRun: !!req.dryRun, repackBelow, graceMs: sharedGcGraceMs(), log, progress });
            return { dryRun: !!req.dryRun, remote };
          });
        }
        return exclusive(async () => {
          await fs.quiesceForGc();
          const repackBelow = typeof req.repackBelow === 'number' ? req.repackBelow : undefined;
          const result = await collectGarbageLive(volume, fs.packer, () => fs.liveBlockKeys(), !!req.dryRun, repackBelow, req.recompress === true, progress);
          const remote = attached
            ? await collectRemoteGarbage(volume, { remote: attached.remote, cache: attached.cache, backup: attached.backup }, { dryRun: !!req.dryRun, log, progress })
            : undefined;
          log.info(`gc: removed ${result.removedBlocks} blocks (${result.removedBytes} bytes)${req.dryRun ? ' [dry run]' : ''}`);
          return { ...result, remote };
        });
      },
      (err) => log.error('control request failed', err),
    );
    const active = session;
    keepDaemonProcess(log, () => active.unmount({ lazy: true }));
    notifyReady(`mounted ${volumePath} at ${mountpoint}`, log);
    o.onReady();
    await active.ended;
    following?.stop();
    notifyStopping(log);
    log.info('session ended: committing and closing');
    control.close();
    await maintenance;
    await fs.shutdown();
    if (attached) {
      const a = attached;
      attached = undefined;
      await detachRemote(a, log);
    }
  } catch (err) {
    log.error('daemon failed', err);
    if (session === undefined) o.onReady(new UsageError(`cannot mount ${mountpoint}: ${(err as Error).message}`));
    else throw err;
  } finally {
    await metricsServer?.close();
    if (attached) await detachRemote(attached, log);
    await volume.close();
    rmSync(recordPath, { force: true });
    if (o.pidFile) rmSync(o.pidFile, { force: true });
    log.info('volume closed');
    log.flush();
  }
}
