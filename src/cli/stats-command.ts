import { statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Volume, VolumeFiles } from '../vfs/volume';
import { GENERATION_KEY } from '../cache/meta-backup';
import type { MountStatus } from './status-command';
import { callControl } from './control-socket';
import { liveDaemon } from './daemon-record';
import { UsageError } from './errors';
import { findMount, isPogfsMount } from './mounts';
import { formatBytes, formatRows } from '../format';
import type { CodecMix, KindCount } from '../store/block-store';
import { SNAPSHOTS_SCHEMA } from '../meta/schema';

export interface VolumeStats {
  volume: string;
  files: number;
  directories: number;
  logicalBytes: number;
  referencedBytes: number;
  uniqueBytes: number;
  storedBytes: number;
  /** The codec setting for new blocks ('none', 'lz4' or 'zstd:LEVEL'). */
  compression: string;
  /** What the local store holds by codec (raw, lz4, zstd): loose blocks and super-chunks. */
  codecs: CodecMix;
  /** storedBytes / uniqueBytes (1 for an empty store); below 1 when compression pays. */
  compressionRatio: number;
  blocks: number;
  blockReferences: number;
  dedupRatio: number;
  blockStoreFileBytes: number;
  /** Super-chunks stored, and short blocks still waiting to be packed. */
  superChunks: { enabled: boolean; chunks: number; queuedBlocks: number };
  /** The chunk cache setting; on a mounted volume, also its use and hit counts. */
  chunkCache: { capacityBytes: number; bytes?: number; chunks?: number; hits?: number; misses?: number };
  /** Where the volume is mounted, when it is. */
  mountpoint?: string;
  /** Read-only snapshots, each with the bytes only it references (what removing it could free). */
  snapshots: { name: string; created: string; files: number; exclusiveBytes: number }[];
  /** With a remote: what it holds, what waits for upload, and (mounted) the calls made. */
  remote?: {
    spec: string;
    packs: number;
    packBytes: number;
    /** Distinct blocks the files reference, local or not, and their bytes. */
    uniqueBlocks: number;
    uniqueBytes: number;
    dirtyBlocks: number;
    dirtyBytes: number;
    cacheBytes: number;
    /** Stored bytes held locally (the cache's use). */
    localBytes: number;
    backupGeneration: number;
    calls?: Record<string, number>;
    backpressure?: boolean;
  };
}

export async function collectStats(target: string): Promise<VolumeStats> {
  let path = resolve(target);
  const m = findMount(path);
  if (m) {
    if (!isPogfsMount(m)) throw new UsageError(`${path} is a ${m.type} mount, not pogfs`);
    path = m.source;
  }
  const holder = liveDaemon(path);
  const status = holder ? await daemonStatus(path) : undefined;
  const v = Volume.open(path, { readOnly: true });
  try {
    const chunk = v.store.chunkStats();
    const live = status
      ? { bytes: status.chunkCache.bytes, chunks: status.chunkCache.chunks, hits: status.chunkCache.hits, misses: status.chunkCache.misses }
      : {};
    const totals = v.meta.totals();
    const referencedBytes = v.meta.referencedBytes();
    const s = v.store.stats();
    let fileBytes = 0;
    try {
      fileBytes = statSync(join(v.path, VolumeFiles.blocks, 'data.mdb')).size;
    } catch {
      fileBytes = 0;
    }
    let remote: VolumeStats['remote'];
    let unique = s.uniqueBytes;
    if (v.settings.remote) {
      const u = v.meta.uniqueBlocks();
      const packs = v.meta.remote.totals();
      const dirty = v.ledger.dirtyStats();
      unique = u.bytes;
      remote = {
        spec: v.settings.remote,
        packs: packs.packs,
        packBytes: packs.bytes,
        uniqueBlocks: u.n,
        uniqueBytes: u.bytes,
        dirtyBlocks: dirty.blocks,
        dirtyBytes: dirty.bytes,
        cacheBytes: v.settings.cacheBytes,
        localBytes: s.storedBytes,
        backupGeneration: Number(v.meta.remote.state(GENERATION_KEY) ?? '0'),
        calls: status?.remote?.calls,
        backpressure: status?.remote?.backpressure,
      };
    }
    return {
      volume: v.path,
      files: totals.files,
      directories: totals.directories,
      logicalBytes: totals.logicalBytes,
      referencedBytes,
      uniqueBytes: s.uniqueBytes,
      storedBytes: s.storedBytes,
      compression: v.compression,
      codecs: v.store.codecMix(),
      compressionRatio: s.uniqueBytes > 0 ? s.storedBytes / s.uniqueBytes : 1,
      blocks: s.blocks,
      blockReferences: totals.blockRefs,
      // With a remote the local store holds only part: the ratio is over every block the files use.
      dedupRatio: unique > 0 ? referencedBytes / unique : 1,
      blockStoreFileBytes: fileBytes,
      superChunks: { enabled: v.settings.superchunks, chunks: chunk.chunks, queuedBlocks: chunk.queuedBlocks },
      chunkCache: { capacityBytes: v.settings.chunkCacheBytes, ...live },
      mountpoint: holder?.mountpoint,
      snapshots: snapshotsOf(v),
      remote,
    };
  } finally {
    await v.close();
  }
}

/** The volume's snapshots (none before schema 5: a read-only open does not migrate). */
export function snapshotsOf(v: Volume): VolumeStats['snapshots'] {
  if (v.meta.schemaVersion() < SNAPSHOTS_SCHEMA) return [];
  return v.meta.clone.snapshots().map((s) => ({
    name: s.name.toString(),
    created: new Date(s.createdNs / 1e6).toISOString(),
    files: s.files,
    exclusiveBytes: s.exclusiveBytes,
  }));
}

/** "loose: lz4 120 (1.2 MiB of 3.0 MiB), raw 4 (...); super-chunks: zstd 3 (...)". */
function formatMix(mix: CodecMix): string {
  const part = (label: string, counts: Record<string, KindCount>) => {
    const kinds = Object.entries(counts).sort((a, b) => b[1].storedBytes - a[1].storedBytes);
    if (kinds.length === 0) return `${label}: none`;
    return `${label}: ${kinds.map(([k, c]) => `${k} ${c.values} (${formatBytes(c.storedBytes)} of ${formatBytes(c.rawBytes)})`).join(', ')}`;
  };
  return `${part('loose blocks', mix.loose)}; ${part('super-chunks', mix.superChunks)} holding ${mix.locators} blocks`;
}

/** The daemon's in-memory figures, when one holds the volume (none if it does not answer). */
async function daemonStatus(path: string): Promise<MountStatus | undefined> {
  try {
    return await callControl<MountStatus>(path, { op: 'status' });
  } catch {
    return undefined;
  }
}

export async function stats(target: string, json: boolean): Promise<void> {
  const s = await collectStats(target);
  if (json) {
    console.log(JSON.stringify(s, null, 2));
    return;
  }
  const rows: [string, string][] = [
    ['volume', s.volume],
    ['files', String(s.files)],
    ['directories', String(s.directories)],
    ['logical bytes', `${formatBytes(s.logicalBytes)} (${s.logicalBytes})`],
    ['referenced bytes', `${formatBytes(s.referencedBytes)} (${s.referencedBytes}; holes excluded)`],
    ['unique bytes', `${formatBytes(s.uniqueBytes)} (${s.uniqueBytes})`],
    ['stored bytes', `${formatBytes(s.storedBytes)} (${s.storedBytes}; headers included)`],
    ['compression', `${s.compression} for new blocks; stored/unique ${s.compressionRatio.toFixed(3)}`],
    ['codecs', formatMix(s.codecs)],
    ['dedup ratio', `${s.dedupRatio.toFixed(2)}x`],
    ['blocks', `${s.blocks} (${s.blockReferences} references)`],
    ['super-chunks', `${s.superChunks.enabled ? 'on' : 'off'} for new files; ${s.superChunks.chunks} stored, ${s.superChunks.queuedBlocks} short blocks waiting to be packed`],
    [
      'chunk cache',
      `${formatBytes(s.chunkCache.capacityBytes)}` +
        (s.chunkCache.bytes !== undefined
          ? `; ${formatBytes(s.chunkCache.bytes)} in use (${s.chunkCache.chunks} chunks), ${s.chunkCache.hits} hits, ${s.chunkCache.misses} misses`
          : ' (use and hit counts show while mounted)'),
    ],
    ['block store file', formatBytes(s.blockStoreFileBytes)],
  ];
  if (s.mountpoint) rows.splice(1, 0, ['mounted at', s.mountpoint]);
  for (const snap of s.snapshots) rows.push([`snapshot ${snap.name}`, `${snap.files} files, ${formatBytes(snap.exclusiveBytes)} held by it alone (taken ${snap.created})`]);
  const r = s.remote;
  if (r) {
    rows.push(
      ['remote', `${r.spec}: ${r.packs} packs, ${formatBytes(r.packBytes)}; metadata generation ${r.backupGeneration}`],
      ['all unique blocks', `${r.uniqueBlocks} (${formatBytes(r.uniqueBytes)}); the lines above count the local cache only`],
      ['local cache', `${formatBytes(r.localBytes)} of ${formatBytes(r.cacheBytes)}`],
      ['not uploaded', `${r.dirtyBlocks} blocks (${formatBytes(r.dirtyBytes)})${r.backpressure ? '; writers are being slowed until uploads catch up' : ''}`],
    );
    if (r.calls) rows.push(['remote calls', Object.entries(r.calls).map(([k, n]) => `${k} ${n}`).join(', ') || 'none']);
  }
  console.log(formatRows(rows));
}
