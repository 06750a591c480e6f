import { formatBytes, mbPerSecond } from '../src/format';
/**
 * What `pogfs fsck` found and did: the finding types, the exit code they make, and their
 * text and JSON renderings.
 */

export type FindingKind =
  | 'metadata-corrupt'
  | 'missing-block'
  | 'corrupt-block'
  | 'corrupt-superchunk'
  | 'chunk-bookkeeping'
  | 'orphan-superchunk'
  | 'wrong-refcount'
  | 'excess-refcount'
  | 'orphan-block'
  | 'wrong-nlink'
  | 'dangling-entry'
  | 'unreachable'
  | 'dead-inode'
  | 'size-mismatch'
  | 'stray-rows'
  | 'bad-totals'
  | 'missing-pack'
  | 'orphan-pack'
  | 'known-damaged'
  | 'parked-blocks'
  | 'unfinished-tree-op';

/**
 * - `error`: the volume is inconsistent (or has lost data);
 * - `leak`: space a crash left behind (orphan blocks, dead inodes): harmless, still a finding;
 * - `notice`: not an error: blocks an earlier repair recorded as lost ("known damaged").
 */
export type Severity = 'error' | 'leak' | 'notice';

/** What each check looks for, in report order. */
export const CHECKS: readonly { kind: FindingKind; severity: Severity; title: string }[] = [
  { kind: 'metadata-corrupt', severity: 'error', title: 'the metadata database fails SQLite\'s own check' },
  { kind: 'unfinished-tree-op', severity: 'error', title: 'clones or snapshot removals a crash left under way (the next mount or --repair finishes them; until then they may cause findings below)' },
  { kind: 'missing-block', severity: 'error', title: 'blocks referenced by files but absent from the block store' },
  { kind: 'corrupt-block', severity: 'error', title: 'stored blocks whose bytes do not match their BLAKE3 key (or whose header is invalid)' },
  { kind: 'corrupt-superchunk', severity: 'error', title: 'super-chunks that are missing, do not decompress, or are shorter than their blocks (every file with a block inside is named)' },
  { kind: 'chunk-bookkeeping', severity: 'error', title: 'super-chunk live counts that disagree with the blocks pointing into them' },
  { kind: 'orphan-superchunk', severity: 'leak', title: 'super-chunks no block points into' },
  { kind: 'wrong-refcount', severity: 'error', title: 'reference counts below the number of block rows (a later delete could lose data), or malformed' },
  { kind: 'excess-refcount', severity: 'leak', title: 'reference counts above the number of block rows (left by a crash: the block would outlive its files)' },
  { kind: 'orphan-block', severity: 'leak', title: 'stored blocks no block row references' },
  { kind: 'parked-blocks', severity: 'notice', title: 'blocks of files closed just before a crash, still parked in the metadata (the next mount moves them into the block store)' },
  { kind: 'wrong-nlink', severity: 'error', title: 'inodes whose link count differs from the entries naming them' },
  { kind: 'dangling-entry', severity: 'error', title: 'directory entries pointing to a missing inode or sitting in a missing directory' },
  { kind: 'unreachable', severity: 'error', title: 'inodes not reachable from the root, directory cycles, directories linked twice' },
  { kind: 'dead-inode', severity: 'leak', title: 'inodes with no links left behind by a crash' },
  { kind: 'size-mismatch', severity: 'error', title: 'files whose blocks extend past their size (or whose stored-bytes count is wrong)' },
  { kind: 'stray-rows', severity: 'error', title: 'block, symlink or xattr rows of inodes that do not exist' },
  { kind: 'bad-totals', severity: 'error', title: 'block store running totals that disagree with a recount' },
  { kind: 'missing-pack', severity: 'error', title: 'packs the index names that the remote does not have (files whose blocks lived only there are named)' },
  { kind: 'orphan-pack', severity: 'leak', title: 'packs on the remote that the index does not know (left by a crash between upload and commit)' },
  { kind: 'known-damaged', severity: 'notice', title: 'blocks lost earlier and recorded by a repair: reads of these ranges return EIO' },
];

export const MAX_EXAMPLES = 10;

export interface Finding {
  kind: FindingKind;
  severity: Severity;
  title: string;
  /** How many things are wrong (blocks, inodes, entries, ... as the examples say). */
  count: number;
  /** Bytes involved, where that means something (orphaned or lost data). */
  bytes?: number;
  /** Up to MAX_EXAMPLES lines naming what is affected, files by path. */
  examples: string[];
  /** With --repair: how many were repaired. */
  repaired?: number;
  /** With --repair: what was done. */
  action?: string;
}

export interface FsckStats {
  inodes: number;
  files: number;
  directories: number;
  entries: number;
  blockRows: number;
  storedBlocks: number;
  /** Bytes of stored values read and hashed (0 with --quick). */
  /** Blocks files reference that only the remote holds (evicted from the local cache). */
  remoteOnlyBlocks: number;
  bytesVerified: number;
  /** Seconds spent reading and hashing block values. */
  verifySeconds: number;
  seconds: number;
}

export interface FsckReport {
  volume: string;
  mode: 'full' | 'quick';
  repair: boolean;
  /** Non-empty findings, in CHECKS order. */
  findings: Finding[];
  stats: FsckStats;
  /** e2fsck's convention: 0 clean, 1 errors corrected, 4 errors left uncorrected. */
  exitCode: 0 | 1 | 4;
}

export class FindingSet {
  private readonly byKind = new Map<FindingKind, Finding>();

  /** Counts one more problem of `kind`; `example` is kept while fewer than MAX_EXAMPLES are. */
  add(kind: FindingKind, example?: string | (() => string), bytes = 0): void {
    const f = this.get(kind);
    f.count += 1;
    if (bytes) f.bytes = (f.bytes ?? 0) + bytes;
    if (example !== undefined && f.examples.length < MAX_EXAMPLES) f.examples.push(typeof example === 'function' ? example() : example);
  }

  /** Adds an example line without counting a problem (more detail on one already counted). */
  note(kind: FindingKind, example: string): void {
    const f = this.get(kind);
    if (f.examples.length < MAX_EXAMPLES) f.examples.push(example);
  }

  wants(kind: FindingKind): boolean {
    return (this.byKind.get(kind)?.examples.length ?? 0) < MAX_EXAMPLES;
  }

  count(kind: FindingKind): number {
    return this.byKind.get(kind)?.count ?? 0;
  }

  setRepaired(kind: FindingKind, repaired: number, action: string): void {
    const f = this.byKind.get(kind);
    if (!f || f.count === 0) return;
    f.repaired = repaired;
    f.action = action;
  }

  list(): Finding[] {
    return CHECKS.map((c) => this.byKind.get(c.kind)).filter((f): f is Finding => f !== undefined && f.count > 0);
  }

  private get(kind: FindingKind): Finding {
    let f = this.byKind.get(kind);
    if (!f) {
      const c = CHECKS.find((x) => x.kind === kind)!;
      f = { kind, severity: c.severity, title: c.title, count: 0, examples: [] };
      this.byKind.set(kind, f);
    }
    return f;
  }
}

/** Exit code for a set of findings: notices never count; with --repair, 1 if all were repaired. */
/** The stray-rows finding of an inode that does not exist but owns rows: one wording for every engine's checker. */
export function addStrayRows(findings: FindingSet, s: { ino: number; blocks: number; symlinks: number; xattrs: number }): void {
  const what = [
    s.blocks ? `${s.blocks} block row${s.blocks > 1 ? 's' : ''}` : '',
    s.symlinks ? 'a symlink target' : '',
    s.xattrs ? `${s.xattrs} xattr${s.xattrs > 1 ? 's' : ''}` : '',
  ].filter(Boolean);
  findings.add('stray-rows', `inode #${s.ino} does not exist but owns ${what.join(', ')}`);
}

export function exitCodeFor(findings: Finding[], repair: boolean): 0 | 1 | 4 {
  const problems = findings.filter((f) => f.severity !== 'notice' && f.count > 0);
  if (problems.length === 0) return 0;
  if (!repair) return 4;
  return problems.every((f) => (f.repaired ?? 0) >= f.count) ? 1 : 4;
}


export function renderText(r: FsckReport): string {
  const out: string[] = [];
  const s = r.stats;
  out.push(`pogfs fsck ${r.volume} (${r.mode} check${r.repair ? ', repair' : ''})`);
  out.push(
    `${s.inodes} inodes (${s.files} files, ${s.directories} directories), ${s.entries} entries, ` +
      `${s.blockRows} block rows, ${s.storedBlocks} stored blocks${s.remoteOnlyBlocks ? `, ${s.remoteOnlyBlocks} more on the remote only` : ''}`,
  );
  for (const f of r.findings) {
    const bytes = f.bytes ? ` (${formatBytes(f.bytes)})` : '';
    const tag = f.severity === 'leak' ? ' [leak: harmless]' : f.severity === 'notice' ? ' [notice]' : '';
    out.push(`${f.kind}: ${f.count}${bytes}${tag} - ${f.title}`);
    for (const e of f.examples) out.push(`    ${e}`);
    if (f.count > f.examples.length && f.examples.length > 0) out.push(`    ... (${f.count - f.examples.length} more)`);
    if (r.repair && f.action) out.push(`  repaired ${f.repaired ?? 0} of ${f.count}: ${f.action}`);
  }
  if (r.mode === 'full') {
    out.push(
      `verified ${formatBytes(s.bytesVerified)} of block data in ${s.verifySeconds.toFixed(2)} s ` +
        `(${mbPerSecond(s.bytesVerified, s.verifySeconds).toFixed(0)} MB/s); total ${s.seconds.toFixed(2)} s`,
    );
  } else out.push(`quick check (block bytes not verified) in ${s.seconds.toFixed(2)} s`);
  const problems = r.findings.filter((f) => f.severity !== 'notice');
  if (problems.length === 0) out.push('clean: no problems found');
  else if (r.exitCode === 1) out.push('all problems found were repaired');
  else if (r.repair) out.push('some problems could not be repaired');
  else out.push(`${problems.length} kind${problems.length > 1 ? 's' : ''} of problem found; nothing was changed (run with --repair to fix them)`);
  return out.join('\n');
}

export function renderJson(r: FsckReport): string {
  return JSON.stringify(
    { ...r, stats: { ...r.stats, mbPerSecond: Number(mbPerSecond(r.stats.bytesVerified, r.stats.verifySeconds).toFixed(1)) } },
    null,
    2,
  );
}
