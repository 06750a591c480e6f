import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { downloadNewestMetadata, indexPacks, type PackScan } from '../src/cache/restore';
import type { ProgressSink } from '../src/progress';
import { GENERATION_KEY } from '../src/cache/meta-backup';
import { MetaDb, newInode } from '../src/meta/meta-db';
import type { Remote } from '../src/remote/remote';
import { BlockStore } from '../src/store/block-store';
import { HASH_ALGORITHM } from '../src/store/hash';
import { StoreRepair } from '../src/store/repair';
import { DEFAULT_BLOCK_SIZE, Volume, VolumeFiles } from '../src/vfs/volume';
import { formatSettings, readSettings } from '../src/vfs/volume-settings';
import { now } from '../src/vfs/time';
import { PathNamer } from '../src/meta/path-namer';

/**
 * `pogfs fsck VOLUME --rebuild-from-remote`: for a volume whose metadata database is lost
 * or damaged. The old database (if any) is set aside; the newest metadata generation on
 * the remote takes its place (the directory tree as of that backup); the block index is
 * then rebuilt from every pack's own index, which also covers packs uploaded after that
 * backup; reference counts are recounted; and what cannot be recovered is reported: files
 * whose blocks are in no pack and not in the local store.
 */

export interface RebuildResult {
  volume: string;
  remote: string;
  /** The metadata generation restored, or undefined when the remote had none (no file names could be recovered). */
  generation?: number;
  /** Where the old database was set aside. */
  setAside?: string;
  scan: PackScan;
  files: number;
  /** Blocks files reference that neither a pack nor the local store holds. */
  unrecoverableBlocks: number;
  /** Those files, by path (up to 100). */
  unrecoverableFiles: string[];
}

export async function rebuildFromRemote(path: string, spec: string, remote: Remote, settings: Record<string, string>, progress?: ProgressSink): Promise<RebuildResult> {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  const metaPath = join(path, VolumeFiles.meta);
  let setAside: string | undefined;
  if (existsSync(metaPath)) {
    setAside = `${metaPath}.lost-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    renameSync(metaPath, setAside);
    for (const ext of ['-wal', '-shm']) if (existsSync(metaPath + ext)) renameSync(metaPath + ext, setAside + ext);
  }
  let generation: number | undefined;
  try {
    generation = (await downloadNewestMetadata(remote, metaPath)).generation;
  } catch (err) {
    if ((err as { code?: string }).code !== 'not-found') throw err;
    // No backup at all: an empty tree, so at least the block index can be rebuilt.
    const t = now();
    MetaDb.create(metaPath, {
      blockSize: DEFAULT_BLOCK_SIZE,
      hashAlgorithm: HASH_ALGORITHM,
      root: newInode({ mode: 0o040755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, nlink: 2 }, t),
    }).close();
  }
  const meta = MetaDb.open(metaPath);
  let scan: PackScan;
  try {
    meta.setSettings(formatSettings(readSettings({ ...meta.settings(), ...settings, remote: spec })));
    if (generation !== undefined) meta.durableTransaction(() => meta.remote.setState(GENERATION_KEY, String(generation)));
    scan = await indexPacks(remote, meta, { all: true, progress });
  } finally {
    meta.close();
  }
  // Reference counts follow the restored rows (fsck --repair recounts the rest).
  const store = BlockStore.open(join(path, VolumeFiles.blocks));
  await store.close();

  const v = Volume.open(path);
  try {
    const rows = [...v.meta.blockRowCounts()];
    let references = 0;
    const repair = new StoreRepair(v.store);
    await repair.run((txn) => {
      for (const r of rows) {
        repair.setRefCount(txn, r.hash, r.n);
        references += r.n;
      }
      repair.setTotals(txn, { ...v.store.stats(), references });
    });
    const lost = rows.filter((r) => !v.store.has(r.hash) && !v.meta.remote.has(r.hash));
    const names = new PathNamer(v.meta);
    const files = new Set<string>();
    for (const r of lost) {
      for (const row of v.meta.blockRowsOf(r.hash)) {
        if (files.size >= 100) break;
        files.add(names.of(row.ino));
      }
    }
    return {
      volume: path,
      remote: spec,
      generation,
      setAside,
      scan,
      files: v.meta.totals().files,
      unrecoverableBlocks: lost.length,
      unrecoverableFiles: [...files],
    };
  } finally {
    await v.close();
  }
}
