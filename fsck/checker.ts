import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { BlockStoreStats } from '../src/store/block-store';
import { blockMatches, decodeVerified, verifiedMember } from '../src/store/block-verify';
import { BLOCK_HEADER_SIZE, decodeBlock, decodeHeader, decodeLocator, isLocator, type Locator } from '../src/store/codec';
import { HASH_LENGTH } from '../src/store/hash';
import { damagedHashes } from '../src/store/repair';
import type { ChunkInfo } from '../src/store/super-chunks';
import { VolumeFiles, type Volume } from '../src/vfs/volume';
import { FindingSet, addStrayRows, type FsckStats } from './report';
import type { ProgressSink } from '../src/progress';
import { PathNamer, displayName } from '../src/meta/path-namer';
import { ROOT_INO, isDir, isReg } from '../src/posix/file-system';

/**
 * The checker: reads a closed volume's metadata (SQLite) and block store (LMDB) directly
 * and finds what is inconsistent, naming files by path. It changes nothing; what it learns
 * (and the repair plan for the directory tree) is handed to the repairer.
 *
 * Cost: one pass over each SQLite table (reference counts with one GROUP BY over the hash
 * index), one streaming pass over the LMDB values (getRange, no per-key gets) that hashes
 * every block (--quick walks the keys only and reads no block data).
 */

export const LOST_FOUND = 'lost+found';

export interface InodeInfo {
  mode: number;
  nlink: number;
  size: number;
}

/** A stored block as the scan saw it (sizes are -1 after a quick scan, which reads no values). */
export interface StoredBlock {
  stored: number;
  raw: number;
  /** Why the value is bad (header invalid, BLAKE3 mismatch); undefined when good or not verified. */
  problem?: string;
}

export interface DropEntry {
  parent: number;
  name: Buffer;
  ino: number;
  why: string;
}

/** What repairing the directory tree means, decided here so the check can report it. */
export interface TreePlan {
  /** Inode 1 is absent: the repair recreates an empty root directory. */
  rootMissing: boolean;
  /** Inode 1 exists but is not a directory: nothing can be attached to it. */
  rootBroken: boolean;
  /** nlink 0 and named by nothing: freed. */
  dead: number[];
  /** Inode numbers owning block/symlink/xattr rows but no inode row: rows deleted. */
  strayOwners: number[];
  /** Entries removed: dangling ones, second links to directories, links closing cycles. */
  dropEntries: DropEntry[];
  /** Inodes attached under /lost+found as #<ino>, in order. */
  tops: number[];
}

export interface CheckOptions {
  quick: boolean;
  /** Progress of the long phases; cleared (a status line erased) once the blocks are verified. */
  progress?: ProgressSink & { clear?(): void };
}

/** Everything a check learned: findings for the report and state for the repairer. */
export interface CheckState {
  volume: Volume;
  quick: boolean;
  blockSize: number;
  inodes: Map<number, InodeInfo>;
  /** Stored blocks by digest (latin1 string of the 32 bytes). */
  stored: Map<string, StoredBlock>;
  /** Reference counts by digest; undefined for a malformed entry. */
  refs: Map<string, number | undefined>;
  /** Block rows per digest, over all rows. */
  rows: Map<string, number>;
  /** Blocks an earlier repair recorded as lost. */
  damaged: Set<string>;
  /** Digests referenced by rows but absent from the store (and not known damaged). */
  missing: string[];
  /** Digests whose stored value is bad (blocks inside a bad super-chunk included). */
  corrupt: string[];
  /** Blocks stored inside super-chunks: digest → where. */
  locators: Map<string, Locator>;
  /** Stored super-chunks by id: stored size, and why the chunk is bad (undefined when good or not verified). */
  chunks: Map<number, { stored: number; problem?: string }>;
  /** Super-chunk bookkeeping as stored (undefined: malformed). */
  chunkInfo: Map<number, ChunkInfo | undefined>;
  plan: TreePlan;
  findings: FindingSet;
  stats: FsckStats;
  /** Totals recounted from the store (bytes are -1 after a quick scan). */
  recount: BlockStoreStats;
  /** Names files by path. */
  paths: PathNamer;
}

const key = (hash: Buffer) => hash.toString('latin1');
/** Files named in one corrupt-superchunk example (a chunk holds at most a few hundred blocks). */
const MAX_FILES_PER_CHUNK = 1000;
export const hashOf = (k: string) => Buffer.from(k, 'latin1');
const short = (k: string) => hashOf(k).toString('hex').slice(0, 16);

/** Checks a volume; writes nothing. */
export function checkVolume(volume: Volume, options: CheckOptions): CheckState {
  const started = performance.now();
  const meta = volume.meta;
  const store = volume.store;
  const progress = options.progress;
  const bs = volume.blockSize;
  const findings = new FindingSet();
  const paths = new PathNamer(volume.meta);

  // --- SQLite's own check first: if the file is damaged, the rest may read garbage.
  let problems: string[];
  try {
    problems = meta.quickCheck();
  } catch (err) {
    throw new Error(`the metadata database is damaged (${(err as Error).message}); restore meta.db from a backup or rebuild it with sqlite3 .recover`);
  }
  for (const problem of problems) findings.add('metadata-corrupt', problem);
  if (problems.length > 0) {
    // Queries over a damaged file fail or mislead: report that alone.
    return {
      volume,
      quick: options.quick,
      blockSize: bs,
      inodes: new Map(),
      stored: new Map(),
      refs: new Map(),
      rows: new Map(),
      damaged: new Set(),
      missing: [],
      corrupt: [],
      locators: new Map(),
      chunks: new Map(),
      chunkInfo: new Map(),
      plan: { rootMissing: false, rootBroken: false, dead: [], strayOwners: [], dropEntries: [], tops: [] },
      findings,
      recount: { blocks: -1, uniqueBytes: -1, storedBytes: -1, references: -1 },
      paths,
      stats: { inodes: 0, files: 0, directories: 0, entries: 0, blockRows: 0, storedBlocks: 0, remoteOnlyBlocks: 0, bytesVerified: 0, verifySeconds: 0, seconds: 0 },
    };
  }

  // --- Inodes.
  progress?.start('reading inodes');
  const inodes = new Map<number, InodeInfo>();
  let files = 0;
  let directories = 0;
  for (const r of meta.allInodes()) {
    inodes.set(r.ino, { mode: r.mode, nlink: r.nlink, size: r.size });
    if (isReg(r.mode)) files++;
    else if (isDir(r.mode)) directories++;
  }

  // --- Rows owned by inodes that do not exist.
  const strayOwners: number[] = [];
  for (const s of meta.strayRowOwners()) {
    strayOwners.push(s.ino);
    addStrayRows(findings, s);
  }

  // --- The directory tree.
  progress?.start('reading directory entries');
  const plan = planTree(volume, inodes, strayOwners, findings, paths);
  const entries = plan.entryCount;

  // --- Block rows per digest: one GROUP BY over the hash index.
  progress?.start('counting block references');
  const rows = new Map<string, number>();
  let blockRows = 0;
  for (const r of meta.blockRowCounts()) {
    rows.set(key(r.hash), r.n);
    blockRows += r.n;
  }

  // --- Reference counts.
  const refs = new Map<string, number | undefined>();
  for (const r of store.scanRefCounts()) refs.set(key(r.hash), r.count);

  // --- The stored blocks: one streaming pass (values hashed unless --quick).
  const stored = new Map<string, StoredBlock>();
  const corrupt: string[] = [];
  const locators = new Map<string, Locator>();
  const total = store.blockCount();
  let bytesVerified = 0;
  const verifyStart = performance.now();
  let done = 0;
  if (options.quick) {
    progress?.start('listing blocks');
    for (const hash of store.scanHashes()) {
      const k = key(hash);
      const s: StoredBlock = { stored: -1, raw: -1 };
      if (hash.length !== HASH_LENGTH) {
        s.problem = `key of ${hash.length} bytes, not ${HASH_LENGTH}`;
        corrupt.push(k);
      }
      stored.set(k, s);
      progress?.update(++done, total);
    }
  } else {
    progress?.start('verifying blocks');
    const stopPrefetch = prefetch(join(volume.path, VolumeFiles.blocks, 'data.mdb'));
    try {
      for (const { hash, value } of store.scanValues()) {
        const k = key(hash);
        const s: StoredBlock = { stored: value.length, raw: Math.max(0, value.length - BLOCK_HEADER_SIZE) };
        try {
          if (hash.length !== HASH_LENGTH) throw new Error(`key of ${hash.length} bytes, not ${HASH_LENGTH}`);
          s.raw = decodeHeader(value).rawLength;
          if (isLocator(value)) {
            // Verified below, a chunk at a time.
            locators.set(k, decodeLocator(value));
          } else {
            // The key is the hash of the decoded bytes: LZ4 and zstd values are decompressed first.
            decodeVerified(value, hash);
          }
        } catch (err) {
          s.problem = (err as Error).message;
          corrupt.push(k);
        }
        stored.set(k, s);
        bytesVerified += value.length;
        progress?.update(++done, total, bytesVerified);
      }
    } finally {
      stopPrefetch();
    }
  }

  // --- Super-chunks: each decoded once, every block inside checked against its key.
  const chunks = new Map<number, { stored: number; problem?: string }>();
  const chunkInfo = new Map<number, ChunkInfo | undefined>();
  for (const { chunk, info } of store.superChunks.scanInfo()) chunkInfo.set(chunk, info);
  const members = new Map<number, string[]>();
  for (const [k, loc] of locators) {
    let list = members.get(loc.chunk);
    if (!list) members.set(loc.chunk, (list = []));
    list.push(k);
  }
  const badChunk = (chunk: number, problem: string, inside: string[]) => {
    for (const k of inside) {
      const s = stored.get(k)!;
      if (s.problem) continue;
      s.problem = `in super-chunk ${chunk}, which ${problem}`;
      corrupt.push(k);
    }
  };
  if (options.quick) {
    progress?.start('listing super-chunks');
    for (const { chunk, value } of store.superChunks.scan()) chunks.set(chunk, { stored: value.length });
  } else {
    progress?.start('verifying super-chunks');
    for (const { chunk, value } of store.superChunks.scan()) {
      const c: { stored: number; problem?: string } = { stored: value.length };
      chunks.set(chunk, c);
      bytesVerified += value.length;
      const inside = members.get(chunk) ?? [];
      let data: Buffer;
      try {
        data = decodeBlock(value);
      } catch (err) {
        c.problem = `does not decompress (${(err as Error).message})`;
        badChunk(chunk, 'does not decompress', inside);
        continue;
      }
      for (const k of inside) {
        const loc = locators.get(k)!;
        const s = stored.get(k)!;
        if (loc.offset + loc.length > data.length) {
          c.problem ??= `is ${data.length} bytes, shorter than its blocks say`;
          s.problem = `past the end of super-chunk ${chunk} (${data.length} bytes)`;
          corrupt.push(k);
        } else if (!verifiedMember(data, hashOf(k), loc.offset, loc.length)) {
          s.problem = `bytes do not match their BLAKE3 key (in super-chunk ${chunk})`;
          corrupt.push(k);
        }
      }
      progress?.update(chunks.size, chunkInfo.size, bytesVerified);
    }
    for (const [chunk, inside] of members) {
      if (chunks.has(chunk)) continue;
      chunks.set(chunk, { stored: 0, problem: 'is missing' });
      badChunk(chunk, 'is missing', inside);
    }
  }
  const verifySeconds = (performance.now() - verifyStart) / 1000;
  progress?.clear?.();

  const damaged = new Set(damagedHashes(store).map(key));

  // --- Blocks of files closed just before a crash, parked in the metadata and not yet
  // taken by the store (the next read-write open takes them): present, and counted.
  const parked = meta.parkedBlocksAfter(store.parkedSeq());
  for (const p of parked) {
    const k = key(p.hash);
    refs.set(k, (refs.get(k) ?? 0) + 1);
    if (!p.data || stored.has(k)) continue;
    if (blockMatches(p.data, p.hash)) stored.set(k, { stored: p.data.length, raw: p.data.length });
    else {
      stored.set(k, { stored: p.data.length, raw: p.data.length, problem: 'parked bytes do not match their hash' });
      corrupt.push(k);
    }
  }
  if (parked.length > 0) findings.add('parked-blocks', `${parked.length} blocks of files closed before a crash wait in the metadata; the next mount (or fsck --repair) moves them into the block store`);

  // --- Block findings.
  const rowExample = (k: string, r: { ino: number; idx: number; len: number }) =>
    `${paths.of(r.ino)}: bytes ${r.idx * bs}-${r.idx * bs + r.len - 1} (block ${r.idx}, ${short(k)})`;
  const describeRows = (kind: 'missing-block' | 'corrupt-block' | 'known-damaged', k: string, extra = '') => {
    if (!findings.wants(kind)) return findings.add(kind);
    const list = meta.blockRowsOf(hashOf(k));
    if (list.length === 0) return findings.add(kind, `${short(k)}: referenced by no file${extra}`);
    findings.add(kind, rowExample(k, list[0]) + extra);
    for (const r of list.slice(1)) if (findings.wants(kind)) findings.note(kind, rowExample(k, r) + extra);
  };

  const missing: string[] = [];
  // With a remote, a block absent here but named by a pack lives on the remote: not missing.
  const hasRemote = volume.settings.remote !== '';
  let remoteOnly = 0;
  for (const k of rows.keys()) {
    if (stored.has(k)) continue;
    if (hasRemote && meta.remote.has(hashOf(k))) {
      remoteOnly++;
      continue;
    }
    if (damaged.has(k)) describeRows('known-damaged', k);
    else {
      missing.push(k);
      describeRows('missing-block', k);
    }
  }
  for (const k of corrupt) {
    // Blocks of a bad super-chunk are named under the chunk's own finding.
    if (/^in super-chunk \d+, which /.test(stored.get(k)!.problem ?? '')) continue;
    describeRows('corrupt-block', k, ` [${stored.get(k)!.problem}]`);
  }
  const describeChunk = (chunk: number, problem: string, inside: string[]): string => {
    // Every file it hurts, by path (the finding's point: what to restore).
    const hurt: string[] = [];
    for (const k of inside) for (const r of meta.blockRowsOf(hashOf(k))) hurt.push(`${paths.of(r.ino)} bytes ${r.idx * bs}-${r.idx * bs + r.len - 1}`);
    const listed = hurt.slice(0, MAX_FILES_PER_CHUNK);
    const more = hurt.length > listed.length ? `; and ${hurt.length - listed.length} more` : '';
    return `super-chunk ${chunk} ${problem}: ${inside.length} block${inside.length === 1 ? '' : 's'}, ${hurt.length} file range${hurt.length === 1 ? '' : 's'} hurt: ${listed.join(', ') || 'none'}${more}`;
  };

  for (const [chunk, c] of chunks) {
    if (!c.problem) continue;
    const inside = members.get(chunk) ?? [];
    findings.add('corrupt-superchunk', () => describeChunk(chunk, c.problem!, inside), c.stored);
  }
  // --- Super-chunk bookkeeping: live counts against the locators pointing in.
  for (const [chunk, c] of chunks) {
    const inside = members.get(chunk) ?? [];
    if (!options.quick && inside.length === 0 && !c.problem) {
      findings.add('orphan-superchunk', `super-chunk ${chunk}: ${c.stored} bytes stored, no block points into it`, c.stored);
      continue;
    }
    if (options.quick) continue; // locators were not read
    const info = chunkInfo.get(chunk);
    const liveBytes = inside.reduce((n, k) => n + locators.get(k)!.length, 0);
    if (!info || info.liveBlocks !== inside.length || info.liveBytes !== liveBytes) {
      findings.add(
        'chunk-bookkeeping',
        info
          ? `super-chunk ${chunk}: recorded ${info.liveBlocks} blocks (${info.liveBytes} bytes), ${inside.length} point into it (${liveBytes} bytes)`
          : `super-chunk ${chunk}: no live count recorded, ${inside.length} blocks point into it`,
      );
    }
  }
  for (const [chunk] of chunkInfo) {
    if (!chunks.has(chunk)) findings.add('chunk-bookkeeping', `super-chunk ${chunk}: counted, but not stored`);
  }

  let sumRefs = 0;
  for (const [k, count] of refs) {
    if (count !== undefined) sumRefs += count;
    const n = rows.get(k) ?? 0;
    if (count === n) continue;
    if (n === 0 && stored.has(k)) continue; // an orphan: reported as such below
    // Too high is what a crash leaves (references are taken before the metadata commits);
    // too low would let a block go while files still use it.
    const kind = count !== undefined && count > n && stored.has(k) ? 'excess-refcount' : 'wrong-refcount';
    findings.add(kind, () => {
      const where = n > 0 ? ` (${paths.of(meta.blockRowsOf(hashOf(k))[0]?.ino ?? 0)})` : stored.has(k) ? '' : ', block absent';
      return `${short(k)}: reference count ${count ?? 'malformed'}, block rows ${n}${where}`;
    });
  }
  for (const [k, n] of rows) {
    if (refs.has(k)) continue;
    findings.add('wrong-refcount', () => `${short(k)}: no reference count, block rows ${n} (${paths.of(meta.blockRowsOf(hashOf(k))[0]?.ino ?? 0)})`);
  }

  for (const [k, s] of stored) {
    if (rows.has(k) || s.problem) continue;
    findings.add('orphan-block', `${short(k)}${s.stored >= 0 ? `: ${s.stored} bytes stored` : ''}`, Math.max(0, s.stored));
  }

  // --- Sizes.
  const dead = new Set(plan.dead);
  for (const r of meta.blockRowsPastSize(bs)) {
    if (dead.has(r.ino)) continue;
    findings.add('size-mismatch', () =>
      isReg(r.mode)
        ? `${paths.of(r.ino)}: block ${r.idx} (bytes ${r.idx * bs}-${r.idx * bs + r.len - 1}) lies past the size ${r.size}`
        : `${paths.of(r.ino)}: not a regular file but holds block ${r.idx}`,
    );
  }
  for (const m of meta.storedBytesMismatches()) {
    if (dead.has(m.ino)) continue;
    findings.add('size-mismatch', () => `${paths.of(m.ino)}: stored bytes ${m.stored}, its blocks hold ${m.actual}`);
  }

  // --- Totals.
  const recount: BlockStoreStats = { blocks: stored.size, uniqueBytes: -1, storedBytes: -1, references: sumRefs };
  if (!options.quick) {
    recount.uniqueBytes = 0;
    recount.storedBytes = 0;
    for (const s of stored.values()) {
      recount.uniqueBytes += s.raw;
      recount.storedBytes += s.stored;
    }
    for (const c of chunks.values()) recount.storedBytes += c.stored;
  }
  const totals = store.stats();
  for (const field of ['blocks', 'uniqueBytes', 'storedBytes', 'references'] as const) {
    // Parked blocks count above but not yet in the store's totals: those add up once it takes them.
    if (parked.length > 0) break;
    if (recount[field] < 0 || totals[field] === recount[field]) continue;
    findings.add('bad-totals', `${field}: recorded ${totals[field]}, recounted ${recount[field]}`);
  }

  return {
    volume,
    quick: options.quick,
    blockSize: bs,
    inodes,
    stored,
    refs,
    rows,
    damaged,
    missing,
    corrupt,
    locators,
    chunks,
    chunkInfo,
    plan,
    findings,
    recount,
    paths,
    stats: {
      inodes: inodes.size,
      files,
      directories,
      entries,
      blockRows,
      storedBlocks: stored.size,
      remoteOnlyBlocks: remoteOnly,
      bytesVerified,
      verifySeconds,
      seconds: (performance.now() - started) / 1000,
    },
  };
}

/**
 * Works out the directory tree: which inodes are dead, which entries dangle, what the root
 * reaches, how unreachable inodes go back under /lost+found (cycles broken), and so which
 * link counts are wrong. Reports dangling-entry, unreachable, dead-inode and wrong-nlink.
 */
function planTree(
  volume: Volume,
  inodes: Map<number, InodeInfo>,
  strayOwners: number[],
  findings: FindingSet,
  paths: PathNamer,
): TreePlan & { entryCount: number } {
  const meta = volume.meta;
  // Entries as parallel arrays (names are fetched again only for the few that are dropped).
  const parentOf: number[] = [];
  const inoOf: number[] = [];
  for (const e of meta.allEntries()) {
    parentOf.push(e.parent);
    inoOf.push(e.ino);
  }
  const n = parentOf.length;
  const nameOf = (i: number): Buffer => {
    const names = meta.namesOf(parentOf[i], inoOf[i]);
    // Several entries of one directory may name the same inode: take them in order.
    // Entries come ordered by (parent, name), so the earlier ones of this directory sit just before.
    let nth = 0;
    for (let j = i - 1; j >= 0 && parentOf[j] === parentOf[i]; j--) if (inoOf[j] === inoOf[i]) nth++;
    return names[Math.min(nth, names.length - 1)];
  };

  const root = inodes.get(ROOT_INO);
  const rootMissing = root === undefined;
  const rootBroken = root !== undefined && !isDir(root.mode);
  if (rootMissing) findings.add('unreachable', 'the root directory (inode 1) is missing: it will be recreated and everything put under /lost+found');
  if (rootBroken) findings.add('unreachable', 'inode 1 (the root) is not a directory: cannot be repaired');

  // Dead inodes: nlink 0 and named by no usable entry. Freeing a dead directory orphans
  // what it holds, which may make more inodes dead: iterate to a fixed point.
  const dead = new Set<number>();
  const usable = (i: number): boolean => {
    const p = inodes.get(parentOf[i]);
    return p !== undefined && isDir(p.mode) && !dead.has(parentOf[i]) && inodes.has(inoOf[i]) && !dead.has(inoOf[i]);
  };
  for (;;) {
    const links = new Map<number, number>();
    for (let i = 0; i < n; i++) if (usable(i)) links.set(inoOf[i], (links.get(inoOf[i]) ?? 0) + 1);
    let grew = false;
    for (const [ino, info] of inodes) {
      if (ino !== ROOT_INO && info.nlink === 0 && !dead.has(ino) && !links.has(ino)) {
        dead.add(ino);
        grew = true;
      }
    }
    if (!grew) break;
  }
  for (const ino of dead) {
    const info = inodes.get(ino)!;
    const kind = isDir(info.mode) ? 'directory' : isReg(info.mode) ? `file, ${info.size} bytes` : 'inode';
    findings.add('dead-inode', `#${ino} (${kind})`, isReg(info.mode) ? info.size : 0);
  }

  // Dangling entries.
  const dropped = new Uint8Array(n);
  const dropEntries: DropEntry[] = [];
  const drop = (i: number, why: string, kind: 'dangling-entry' | 'unreachable', count = true) => {
    dropped[i] = 1;
    const name = nameOf(i);
    dropEntries.push({ parent: parentOf[i], name, ino: inoOf[i], why });
    const text = () => `${inodes.has(parentOf[i]) ? paths.dir(parentOf[i]) : `<missing directory #${parentOf[i]}>/`}${displayName(name)}: ${why}`;
    if (count) findings.add(kind, text);
    else if (findings.wants(kind)) findings.note(kind, text());
  };
  for (let i = 0; i < n; i++) {
    const p = inodes.get(parentOf[i]);
    if (!inodes.has(inoOf[i])) drop(i, `points to inode #${inoOf[i]}, which does not exist`, 'dangling-entry');
    else if (!p) drop(i, `sits in directory #${parentOf[i]}, which does not exist`, 'dangling-entry');
    else if (!isDir(p.mode)) drop(i, `sits in inode #${parentOf[i]}, which is not a directory`, 'dangling-entry');
    else if (dead.has(parentOf[i])) drop(i, `sits in dead directory #${parentOf[i]}`, 'dangling-entry');
  }

  // Children of each directory over usable entries.
  const children = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    if (dropped[i]) continue;
    let list = children.get(parentOf[i]);
    if (!list) children.set(parentOf[i], (list = []));
    list.push(i);
  }

  // What the root reaches. A directory reached a second time is linked twice (or closes a
  // cycle): that entry goes.
  const reached = new Set<number>();
  const walk = (start: number): number => {
    let count = 0;
    const queue = [start];
    reached.add(start);
    while (queue.length > 0) {
      const dir = queue.pop()!;
      for (const i of children.get(dir) ?? []) {
        if (dropped[i]) continue;
        const c = inoOf[i];
        const info = inodes.get(c)!;
        if (isDir(info.mode)) {
          if (reached.has(c)) {
            drop(i, c === ROOT_INO ? 'a link to the root directory' : `a second link to directory #${c}`, 'unreachable');
            continue;
          }
          queue.push(c);
        }
        if (!reached.has(c)) count++;
        reached.add(c);
      }
    }
    return count;
  };
  if (root && !rootBroken) walk(ROOT_INO);

  // Unreachable inodes go under /lost+found: first the directories nothing usable names
  // (the tops of detached trees), then directories held only by a cycle (the entries
  // closing it are dropped), then anything else left (files named by nothing).
  const tops: number[] = [];
  const live = [...inodes.keys()].filter((ino) => ino !== ROOT_INO && !dead.has(ino)).sort((a, b) => a - b);
  const unreachedDirs = live.filter((ino) => !reached.has(ino) && isDir(inodes.get(ino)!.mode));
  const incoming = new Map<number, number[]>();
  if (unreachedDirs.length > 0) {
    const wanted = new Set(unreachedDirs);
    for (let i = 0; i < n; i++) {
      if (dropped[i] || !wanted.has(inoOf[i])) continue;
      let list = incoming.get(inoOf[i]);
      if (!list) incoming.set(inoOf[i], (list = []));
      list.push(i);
    }
  }
  const attach = (ino: number, why: string) => {
    tops.push(ino);
    const info = inodes.get(ino)!;
    if (isDir(info.mode)) {
      const inside = walk(ino);
      findings.add('unreachable', () => `#${ino} (directory, ${inside} inodes inside): ${why}`);
      for (let k = 0; k < inside; k++) findings.add('unreachable');
    } else {
      reached.add(ino);
      findings.add('unreachable', `#${ino} (${isReg(info.mode) ? `file, ${info.size} bytes` : 'inode'}, link count ${info.nlink}): ${why}`);
    }
  };
  for (const ino of unreachedDirs) {
    if (reached.has(ino)) continue;
    if ((incoming.get(ino) ?? []).every((i) => dropped[i])) attach(ino, 'named by no entry');
  }
  for (const ino of unreachedDirs) {
    if (reached.has(ino)) continue;
    for (const i of incoming.get(ino) ?? []) if (!dropped[i]) drop(i, `closes a directory cycle through #${ino}`, 'unreachable', false);
    attach(ino, 'in a directory cycle');
  }
  for (const ino of live) if (!reached.has(ino)) attach(ino, 'named by no entry');

  // Link counts as they will be once entries are dropped and tops attached (the new
  // /lost+found's own effect on the root excluded).
  const links = new Map<number, number>();
  const subdirs = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    if (dropped[i]) continue;
    links.set(inoOf[i], (links.get(inoOf[i]) ?? 0) + 1);
    if (isDir(inodes.get(inoOf[i])!.mode)) subdirs.set(parentOf[i], (subdirs.get(parentOf[i]) ?? 0) + 1);
  }
  for (const ino of tops) links.set(ino, (links.get(ino) ?? 0) + 1);
  for (const [ino, info] of inodes) {
    if (dead.has(ino)) continue;
    const want = isDir(info.mode) ? 2 + (subdirs.get(ino) ?? 0) : (links.get(ino) ?? 0);
    if (info.nlink === want) continue;
    findings.add('wrong-nlink', () => `${paths.of(ino)}: link count ${info.nlink}, should be ${want}`);
  }

  return { rootMissing, rootBroken, dead: [...dead], strayOwners, dropEntries, tops, entryCount: n };
}

/**
 * Reads a file front to back on another thread, to get it into the page cache ahead of a
 * scan that visits it in key order (which, for LMDB values, is a random order on disk):
 * the disk then streams while this thread hashes. Skipped when the file would not fit in
 * the memory available (it would only push itself out again). Returns a stop function.
 */
function prefetch(path: string): () => void {
  let size = 0;
  try {
    size = statSync(path).size;
  } catch {
    return () => undefined;
  }
  if (size < 64 * 1024 * 1024 || size > freemem() / 2 || mostlyCached(path, size)) return () => undefined;
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(
    `const { openSync, readSync, closeSync } = require('node:fs');
     const { workerData } = require('node:worker_threads');
     const stop = new Int32Array(workerData.stop);
     const fd = openSync(workerData.path, 'r');
     const buf = Buffer.allocUnsafe(1 << 20);
     try {
       for (let at = 0; Atomics.load(stop, 0) === 0; at += buf.length) {
         if (readSync(fd, buf, 0, buf.length, at) <= 0) break;
       }
     } finally { closeSync(fd); }`,
    { eval: true, workerData: { path, stop: stop.buffer } },
  );
  worker.on('error', () => undefined);
  worker.unref();
  return () => {
    Atomics.store(stop, 0, 1);
  };
}

/**
 * Whether a file seems to be in the page cache already, from a sample of page reads (a
 * cached page comes back in microseconds, one from disk in a hundred or more).
 */
function mostlyCached(path: string, size: number): boolean {
  const fd = openSync(path, 'r');
  try {
    const page = Buffer.allocUnsafe(4096);
    const times: number[] = [];
    for (let i = 0; i < 24; i++) {
      const at = Math.floor((Math.random() * size) / 4096) * 4096;
      const t0 = process.hrtime.bigint();
      readSync(fd, page, 0, page.length, at);
      times.push(Number(process.hrtime.bigint() - t0));
    }
    times.sort((a, b) => a - b);
    return times[Math.floor(times.length * 0.75)] < 30_000; // 3 in 4 under 30 µs
  } catch {
    return false;
  } finally {
    closeSync(fd);
  }
}
