import { resolve } from 'node:path';
import type { CacheStatus } from '../cache/remote-cache';
import type { BackupResult } from '../cache/meta-backup';
import type { DaemonStatus } from '../vfs/filesystem';
import { formatBytes, formatRows } from '../format';
import { callControl } from './control-socket';
import { UsageError } from './errors';
import { pogfsMountContaining } from './mounts';

export interface MountStatus extends DaemonStatus {
  mountpoint: string;
  readOnly: boolean;
  remote?: CacheStatus;
  backup?: BackupResult;
  backupError?: string;
}

/** What a mounted volume's daemon reports about itself. */
export async function mountStatus(target: string): Promise<MountStatus> {
  const m = pogfsMountContaining(resolve(target));
  if (!m) throw new UsageError(`${resolve(target)} is not a mounted pogfs volume`);
  try {
    return await callControl<MountStatus>(m.source, { op: 'status' });
  } catch (err) {
    throw new UsageError(`${m.target}: ${(err as Error).message}`, 1);
  }
}

function duration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return 'unknown';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

/** `pogfs status MOUNTPOINT`. */
export async function status(target: string, json: boolean): Promise<void> {
  const s = await mountStatus(target);
  if (json) {
    console.log(JSON.stringify(s, null, 2));
    return;
  }
  const rows: [string, string][] = [
    ['mounted at', `${s.mountpoint}${s.readOnly ? ' (read-only)' : ''}`],
    ['open files', String(s.openFiles)],
    ['chunk cache', `${formatBytes(s.chunkCache.bytes)} of ${formatBytes(s.chunkCache.capacityBytes)}, ${s.chunkCache.hits} hits, ${s.chunkCache.misses} misses`],
  ];
  const r = s.remote;
  if (!r) rows.push(['remote', 'none (every block is local)']);
  else {
    const u = r.upload;
    rows.push(
      ['remote', r.remote],
      ['cache', `${formatBytes(r.localBytes)} of ${formatBytes(r.cacheBytes)} used locally; ${formatBytes(r.evictedBytes)} evicted since mount`],
      ['dirty', `${formatBytes(u.dirtyBytes)} in ${u.dirtyBlocks} blocks not uploaded yet${r.backpressure ? '; writers are being slowed until uploads catch up' : ''}`],
      [
        'upload',
        `${u.packsUploaded} packs, ${formatBytes(u.bytesUploaded)} since mount` +
          (u.rateBytesPerSec > 0 ? `; ${formatBytes(u.rateBytesPerSec)}/s, done in ${duration(u.etaSeconds)}` : '') +
          (u.uploading ? ' (uploading)' : '') +
          (u.lastError ? `; last error: ${u.lastError}` : ''),
      ],
      ['fetched', `${r.fetch.blocks} blocks, ${formatBytes(r.fetch.bytes)} in ${r.fetch.reads} reads${r.fetch.corrupt ? `; ${r.fetch.corrupt} corrupt downloads` : ''}`],
      ['pinned', formatBytes(r.pinnedBytes)],
      ['throttled writes', String(r.throttledWrites)],
      ['metadata backup', s.backup ? `generation ${s.backup.generation}, ${formatBytes(s.backup.compressedBytes)}` : s.backupError ? `failed: ${s.backupError}` : 'none since mount'],
      ['remote calls', Object.entries(r.calls).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'],
    );
  }
  console.log(formatRows(rows));
}
