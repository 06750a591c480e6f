import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BLOCK_HEADER_SIZE, decodeHeader } from '../store/codec';
import { StoreRepair, damagedHashes } from '../store/repair';
import { checkStoreFile, compactStore, storeSpace, type StoreSpace } from '../store/store-files';
import { emptyRepackResult, repackCandidates, type RepackResult, type SuperChunkPacker } from '../store/super-chunk-packer';
import { Volume, VolumeFiles } from '../vfs/volume';
import type { ProgressSink } from '../progress';
import type { WriteTxn } from '../store/store-env';

/**
 * Garbage collection of an unmounted volume's block store: deletes every stored block no
 * block row references (recounted from the index; the reference counts are not trusted),
 * sets the counts of the blocks that stay to their row counts, packs short blocks still
 * waiting for a super-chunk, rewrites super-chunks whose live share fell below the
 * volume's repack threshold (so deleted small files really give their space back), and
 * can compact the LMDB file to give the freed pages back to the file system.
 *
 * Safe against interruption: only blocks no row references are deleted, and nothing else
 * runs on the volume (the caller makes sure no daemon holds it). Compaction writes a copy
 * beside the store, syncs it and renames it over data.mdb: the file is either the old or
 * the new one.
 */

export interface GcOptions {
  dryRun?: boolean;
  compact?: boolean;
  /** Repack super-chunks whose live share is below this (default: the volume's repack-below setting). */
  repackBelow?: number;
  /** Also rewrite super-chunks stored with another codec than the volume's current one. */
  recompress?: boolean;
  /** Deletions per LMDB transaction. */
  batch?: number;
  /** Told how far the scan and the deletes are (a terminal's status line). */
  progress?: ProgressSink;
}

export interface GcResult {
  volume: string;
  dryRun: boolean;
  /** Stored blocks before gc. */
  storedBlocks: number;
  /** Blocks deleted (or, with dryRun, that would be). */
  removedBlocks: number;
  /** Their stored size (headers included). */
  removedBytes: number;
  /** Their decoded size. */
  removedRawBytes: number;
  /** Reference counts of kept blocks set to their row counts. */
  refsCorrected: number;
  /** Reference-count entries of absent, unreferenced blocks removed. */
  staleRefs: number;
  /** Blocks referenced by rows but absent from the store (fsck's business; reported). */
  missingBlocks: number;
  /** Super-chunks rewritten because most of them was dead (with dryRun: the ones that would be). */
  repack: RepackResult;
  /** Page usage of the LMDB file after gc (before compaction). */
  space: StoreSpace;
  /** With compact: the data.mdb size before and after (with dryRun: after is an estimate). */
  compacted?: { beforeBytes: number; afterBytes: number };
}

const COMPACT_DIR = 'blocks.compact';

export async function collectGarbage(path: string, options: GcOptions = {}): Promise<GcResult> {
  const dryRun = !!options.dryRun;
  const batch = options.batch ?? 10000;
  const blocksDir = join(path, VolumeFiles.blocks);
  const file = checkStoreFile(blocksDir);
  if (file.problem) throw new Error(`the block store cannot be read safely: ${file.problem} (run pogfs fsck)`);
  // A compaction interrupted earlier leaves its copy behind: it was never swapped in.
  if (!dryRun) rmSync(join(path, COMPACT_DIR), { recursive: true, force: true });

  const volume = Volume.open(path, { readOnly: dryRun });
  let closed = false;
  try {
    const meta = volume.meta;
    const store = volume.store;
    const rows = new Map<string, number>();
    for (const r of meta.blockRowCounts()) rows.set(r.hash.toString('latin1'), r.n);
    const refs = new Map<string, number | undefined>();
    for (const r of store.scanRefCounts()) refs.set(r.hash.toString('latin1'), r.count);

    const unreferenced: Buffer[] = [];
    const fixRefs: { hash: Buffer; count: number }[] = [];
    let storedBlocks = 0;
    const present = new Set<string>();
    const progress = options.progress;
    const expected = store.stats().blocks;
    progress?.start('gc: scanning blocks');
    for (const hash of store.scanHashes()) {
      storedBlocks++;
      progress?.update(storedBlocks, Math.max(expected, storedBlocks));
      const k = hash.toString('latin1');
      present.add(k);
      const n = rows.get(k) ?? 0;
      if (n === 0) unreferenced.push(hash);
      else if (refs.get(k) !== n) fixRefs.push({ hash, count: n });
    }
    const staleRefs: Buffer[] = [];
    for (const k of refs.keys()) if (!present.has(k) && !rows.has(k)) staleRefs.push(Buffer.from(k, 'latin1'));
    let missingBlocks = 0;
    const remote = volume.settings.remote !== '';
    for (const k of rows.keys()) if (!present.has(k) && !(remote && meta.remote.has(Buffer.from(k, 'latin1')))) missingBlocks++;

    // Sizes of what goes (only those values are read). A block inside a super-chunk
    // also frees the chunk when it was its last one: added once the deletes have run.
    let removedBytes = 0;
    let removedRawBytes = 0;
    let freedStored = 0;
    const sizes = new Map<string, number>();
    for (const hash of unreferenced) {
      const value = store.rawValue(hash);
      if (!value) continue;
      sizes.set(hash.toString('latin1'), value.length);
      removedBytes += value.length;
      try {
        removedRawBytes += decodeHeader(value).rawLength;
      } catch {
        removedRawBytes += Math.max(0, value.length - BLOCK_HEADER_SIZE);
      }
    }

    if (!dryRun) {
      const repair = new StoreRepair(store);
      progress?.start('gc: deleting unreferenced blocks');
      for (let at = 0; at < unreferenced.length; at += batch) {
        progress?.update(at, unreferenced.length);
        const slice = unreferenced.slice(at, at + batch);
        await repair.run((txn) => {
          for (const hash of slice) {
            const gone = repair.dropBlock(txn, hash);
            if (gone) freedStored += gone.stored - (sizes.get(hash.toString('latin1')) ?? 0);
          }
        });
      }
      progress?.update(unreferenced.length, unreferenced.length);
      await repair.run((txn) => {
        for (const { hash, count } of fixRefs) repair.setRefCount(txn, hash, count);
        for (const hash of staleRefs) repair.setRefCount(txn, hash, 0);
        for (const hash of damagedHashes(store)) if (!rows.has(hash.toString('latin1'))) repair.clearDamaged(txn, hash);
        let references = 0;
        for (const n of rows.values()) references += n;
        repair.setTotals(txn, { ...store.stats(), blocks: storedBlocks - unreferenced.length, references });
      });
    }
    removedBytes += freedStored;
    const repackBelow = options.repackBelow ?? volume.settings.repackBelow;
    const repack = await superChunkUpkeep(volume.packer(), store, repackBelow, !!options.recompress, dryRun);

    const space = storeSpace(store);
    const result: GcResult = {
      volume: volume.path,
      dryRun,
      storedBlocks,
      removedBlocks: unreferenced.length,
      removedBytes,
      removedRawBytes,
      refsCorrected: fixRefs.length,
      staleRefs: staleRefs.length,
      missingBlocks,
      repack,
      space,
    };

    if (options.compact) {
      const dataFile = join(blocksDir, 'data.mdb');
      const beforeBytes = statSync(dataFile).size;
      if (dryRun) {
        // What compaction would leave: the pages in use now, less what gc would free.
        const freeable = Math.ceil(removedBytes / space.pageSize) * space.pageSize;
        result.compacted = { beforeBytes, afterBytes: Math.max(0, space.usedBytes - freeable) };
      } else {
        const tmp = join(path, COMPACT_DIR);
        await compactStore(store, tmp);
        await volume.close();
        closed = true;
        const copy = join(tmp, 'data.mdb');
        fsyncPath(copy);
        renameSync(copy, dataFile);
        fsyncPath(blocksDir);
        // The lock file describes readers of the old file; with no process attached it is
        // rebuilt on the next open anyway.
        rmSync(join(blocksDir, 'lock.mdb'), { force: true });
        rmSync(tmp, { recursive: true, force: true });
        result.compacted = { beforeBytes, afterBytes: statSync(dataFile).size };
      }
    }
    return result;
  } finally {
    if (!closed) await volume.close();
  }
}

function fsyncPath(path: string): void {
  if (!existsSync(path)) return;
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

export interface LiveGcResult {
  dryRun: boolean;
  storedBlocks: number;
  removedBlocks: number;
  removedBytes: number;
  removedRawBytes: number;
  /** Unreferenced blocks left alone because a write took them while gc ran. */
  skippedBusy: number;
  repack: RepackResult;
  space: StoreSpace;
}

/**
 * Packs the queue of short blocks, then rewrites the super-chunks whose live share is
 * below `threshold` (and with `recompress` those in another codec than the volume's). A
 * dry run only counts those chunks, their live blocks and their stored bytes.
 */
async function superChunkUpkeep(packer: SuperChunkPacker, store: Volume['store'], threshold: number, recompress: boolean, dryRun: boolean): Promise<RepackResult> {
  if (!dryRun) {
    await packer.flush();
    return threshold > 0 || recompress ? packer.repack(threshold, recompress) : emptyRepackResult();
  }
  const result = emptyRepackResult();
  for (const chunk of repackCandidates(store, threshold, recompress, result)) {
    result.blocksMoved += store.superChunks.info(chunk)?.liveBlocks ?? 0;
    result.bytesBefore += store.superChunks.storedSize(chunk) ?? 0;
  }
  return result;
}

/**
 * Garbage collection of a mounted volume, run by its daemon. The caller has committed
 * every open file first; `liveKeys` tells which blocks open files and the write path still
 * hold without a committed block row (written but not yet committed). Reference counts
 * are not rewritten here: a count above the row count may be a write in flight.
 *
 * A block is deleted only if no committed row names it, nothing live holds it, and its
 * reference count did not change between the scan and the delete (the delete runs in
 * LMDB's single write transaction, which every new reference also goes through): so a
 * write that deduplicates against a block while gc runs always wins. Super-chunks are
 * then repacked by the daemon's own packer, whose swaps check each block in the same way.
 */
export async function collectGarbageLive(
  volume: Volume,
  packer: SuperChunkPacker,
  liveKeys: () => ReadonlySet<string>,
  dryRun: boolean,
  repackBelow = volume.settings.repackBelow,
  recompress = false,
  progress?: ProgressSink,
): Promise<LiveGcResult> {
  const { meta, store } = volume;
  const rows = new Set<string>();
  for (const r of meta.blockRowCounts()) rows.add(r.hash.toString('latin1'));
  const candidates: { hash: Buffer; key: string; refs: number }[] = [];
  let storedBlocks = 0;
  const liveAtScan = liveKeys();
  const expected = store.stats().blocks;
  progress?.start('gc: scanning blocks');
  for (const hash of store.scanHashes()) {
    storedBlocks++;
    progress?.update(storedBlocks, Math.max(expected, storedBlocks));
    const key = hash.toString('latin1');
    if (!rows.has(key) && !liveAtScan.has(key)) candidates.push({ hash, key, refs: store.refCount(hash) });
  }
  let removedBlocks = 0;
  let removedBytes = 0;
  let removedRawBytes = 0;
  let skippedBusy = 0;
  const repair = new StoreRepair(store);
  const remove = (txn?: WriteTxn) => {
    const live = liveKeys();
    if (!dryRun) progress?.start('gc: deleting unreferenced blocks');
    let at = 0;
    for (const c of candidates) {
      if (!dryRun) progress?.update(++at, candidates.length);
      if (store.refCount(c.hash) !== c.refs || live.has(c.key)) {
        skippedBusy++;
        continue;
      }
      if (dryRun) {
        const value = store.rawValue(c.hash);
        if (!value) continue;
        removedBlocks++;
        removedBytes += value.length;
        try {
          removedRawBytes += decodeHeader(value).rawLength;
        } catch {
          removedRawBytes += Math.max(0, value.length - BLOCK_HEADER_SIZE);
        }
        continue;
      }
      if (!txn) continue;
      const gone = repair.dropBlock(txn, c.hash);
      if (!gone) continue;
      removedBlocks++;
      removedBytes += gone.stored;
      removedRawBytes += gone.raw;
    }
  };
  if (dryRun) remove();
  else await repair.run(remove);
  const repack = await superChunkUpkeep(packer, store, repackBelow, recompress, dryRun);
  return { dryRun, storedBlocks, removedBlocks, removedBytes, removedRawBytes, skippedBusy, repack, space: storeSpace(store) };
}
