import { statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Volume, VolumeFiles } from '../vfs/volume';
import { UsageError } from './errors';
import { findMount, isPogfsMount } from './mounts';
import { formatBytes } from '../format';

export interface VolumeStats {
  volume: string;
  files: number;
  directories: number;
  logicalBytes: number;
  referencedBytes: number;
  uniqueBytes: number;
  storedBytes: number;
  /** The codec setting for new blocks ('lz4' or 'none'). */
  compression: string;
  /** storedBytes / uniqueBytes (1 for an empty store); below 1 when compression pays. */
  compressionRatio: number;
  blocks: number;
  blockReferences: number;
  dedupRatio: number;
  blockStoreFileBytes: number;
}

export function collectStats(target: string): VolumeStats {
  let path = resolve(target);
  const m = findMount(path);
  if (m) {
    if (!isPogfsMount(m)) throw new UsageError(`${path} is a ${m.type} mount, not pogfs`);
    path = m.source;
  }
  const v = Volume.open(path, { readOnly: true });
  try {
    const totals = v.meta.totals();
    const referencedBytes = (v.meta.db.prepare('SELECT coalesce(sum(len), 0) AS n FROM blocks').get() as { n: number }).n;
    const s = v.store.stats();
    let fileBytes = 0;
    try {
      fileBytes = statSync(join(v.path, VolumeFiles.blocks, 'data.mdb')).size;
    } catch {
      fileBytes = 0;
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
      compressionRatio: s.uniqueBytes > 0 ? s.storedBytes / s.uniqueBytes : 1,
      blocks: s.blocks,
      blockReferences: totals.blockRefs,
      dedupRatio: s.uniqueBytes > 0 ? referencedBytes / s.uniqueBytes : 1,
      blockStoreFileBytes: fileBytes,
    };
  } finally {
    void v.close();
  }
}

export function stats(target: string, json: boolean): void {
  const s = collectStats(target);
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
    ['dedup ratio', `${s.dedupRatio.toFixed(2)}x`],
    ['blocks', `${s.blocks} (${s.blockReferences} references)`],
    ['block store file', formatBytes(s.blockStoreFileBytes)],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) console.log(`${k.padEnd(w)}  ${v}`);
}
