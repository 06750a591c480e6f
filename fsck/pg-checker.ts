import type { Remote } from '../src/remote/remote';
import { displayName, PathNamer } from '../src/meta/path-namer';
import type { PgEntryRow, PgScan } from '../src/meta/pg-scan';
import { isDir, isReg } from '../src/posix/file-system';
import type { ProgressSink } from '../src/progress';
import type { Volume } from '../src/vfs/volume';
import { comparePackListing } from './remote-check';
import { FindingSet, addStrayRows, type FsckStats } from './report';

/**
 * The checker of a volume whose metadata is in PostgreSQL: the namespace, read through one
 * snapshot of the database (PgScan), checked as checker.ts checks meta.db's, and the
 * blocks it references checked where they live: on a volume with a remote (shared by
 * several machines), in the shared pack index (and with --remote, on the remote); without
 * one, in the volume directory's block store. It changes nothing and takes no lock, so it
 * may run while the volume is mounted, here or on other machines.
 *
 * Not checked here, as they are per machine and rebuilt or evicted on their own: the
 * reference counts and totals of the local block store (a shared volume's is a cache).
 */

export interface PgCheckOptions {
  quick: boolean;
  /** How long a mount session stays live after its last heartbeat (an inode it holds open is not a leak). */
  sessionExpiryMs: number;
  progress?: ProgressSink & { clear?(): void };
}

export interface PgCheckState {
  volume: Volume;
  scan: PgScan;
  blockSize: number;
  findings: FindingSet;
  stats: FsckStats;
  paths: PathNamer;
}

/** Hashes per page when the referenced hashes are compared with the local block store. */
const HASH_PAGE = 10_000;

const short = (hash: Buffer) => hash.toString('hex').slice(0, 16);

/** Names inodes by path from the snapshot's entries (the PathNamer every fsck finding uses). */
function namerOf(entries: PgEntryRow[]): PathNamer {
  const byIno = new Map<number, { parent: number; name: Buffer }[]>();
  for (const e of entries) {
    let list = byIno.get(e.ino);
    if (!list) byIno.set(e.ino, (list = []));
    list.push({ parent: e.parent, name: e.name });
  }
  return new PathNamer({ entriesOf: (ino: number) => byIno.get(ino) ?? [] });
}

const describeInode = (r: { mode: number; size: number }): string => (isDir(r.mode) ? 'directory' : isReg(r.mode) ? `file, ${r.size} bytes` : 'inode');

/** Checks the volume's shared metadata (and its blocks); writes nothing. */
export async function checkPgVolume(volume: Volume, scan: PgScan, options: PgCheckOptions): Promise<PgCheckState> {
  const started = performance.now();
  const findings = new FindingSet();
  const bs = volume.blockSize;
  const progress = options.progress;

  progress?.start('reading the namespace');
  const counts = await scan.counts();
  const paths = namerOf(await scan.entries());

  const root = await scan.root();
  if (!root) findings.add('unreachable', 'the root directory (inode 1) is missing');
  else if (!isDir(root.mode)) findings.add('unreachable', 'inode 1 (the root) is not a directory');

  for (const s of await scan.strayRowOwners()) {
    addStrayRows(findings, s);
  }

  progress?.start('checking the directory tree');
  for (const e of await scan.danglingEntries()) {
    const why =
      e.why === 'no-inode'
        ? `points to inode #${e.ino}, which does not exist`
        : e.why === 'no-parent'
          ? `sits in directory #${e.parent}, which does not exist`
          : `sits in inode #${e.parent}, which is not a directory`;
    const where = e.why === 'no-parent' ? `<missing directory #${e.parent}>/` : paths.dir(e.parent);
    findings.add('dangling-entry', () => `${where}${displayName(e.name)}: ${why}`);
  }
  for (const d of await scan.directoriesLinkedTwice()) {
    findings.add('unreachable', () => (d.ino === 1 ? `${d.links} entries link to the root directory` : `${paths.of(d.ino)}: directory #${d.ino} is named by ${d.links} entries`));
  }
  for (const r of await scan.unreachable()) {
    findings.add('unreachable', `#${r.ino} (${describeInode(r)}, link count ${r.nlink}): not reachable from the root`);
  }
  // A mount of a volume without a remote (one machine) records no opens: while it is
  // live, an unlinked inode may be a file still open there, not a leak.
  const unrecordedOpens = !volume.sharesBlocks && (await scan.liveSessions(options.sessionExpiryMs)) > 0;
  for (const r of unrecordedOpens ? [] : await scan.deadInodes(options.sessionExpiryMs)) {
    findings.add('dead-inode', `#${r.ino} (${describeInode(r)})`, isReg(r.mode) ? r.size : 0);
  }
  for (const m of await scan.linkCountMismatches()) {
    findings.add('wrong-nlink', () => `${paths.of(m.ino)}: link count ${m.nlink}, should be ${m.want}`);
  }

  progress?.start('checking file sizes');
  for (const r of await scan.blockRowsPastSize(bs)) {
    findings.add('size-mismatch', () =>
      isReg(r.mode)
        ? `${paths.of(r.ino)}: block ${r.idx} (bytes ${r.idx * bs}-${r.idx * bs + r.len - 1}) lies past the size ${r.size}`
        : `${paths.of(r.ino)}: not a regular file but holds block ${r.idx}`,
    );
  }
  for (const m of await scan.storedBytesMismatches()) {
    findings.add('size-mismatch', () => `${paths.of(m.ino)}: stored bytes ${m.stored}, its blocks hold ${m.actual}`);
  }

  // --- The blocks the rows reference.
  const describeRows = async (kind: 'missing-block' | 'corrupt-block', hash: Buffer, extra: string): Promise<void> => {
    if (!findings.wants(kind)) return findings.add(kind);
    const list = await scan.blockRowsOf(hash);
    const example = (r: { ino: number; idx: number; len: number }) =>
      `${paths.of(r.ino)}: bytes ${r.idx * bs}-${r.idx * bs + r.len - 1} (block ${r.idx}, ${short(hash)})${extra}`;
    findings.add(kind, example(list[0]));
    for (const r of list.slice(1)) if (findings.wants(kind)) findings.note(kind, example(r));
  };
  const store = volume.store;
  let remoteOnlyBlocks = 0;
  let bytesVerified = 0;
  const verifyStart = performance.now();
  if (volume.sharesBlocks) {
    // Every machine reads a block it lacks from its pack: a hash outside the index is lost to all.
    for (const h of await scan.hashesOutsidePacks()) {
      await describeRows('missing-block', h.hash, h.pack === null ? ' [in no pack]' : ` [its pack #${h.pack} is not in the index]`);
    }
    if (!options.quick) {
      for (let after: Buffer | undefined, page: Buffer[]; (page = await scan.referencedHashes(after, HASH_PAGE)).length > 0; after = page[page.length - 1]) {
        for (const hash of page) if (!store.has(hash)) remoteOnlyBlocks++;
      }
    }
  } else if (!options.quick) {
    // The only copy is this volume directory's block store: each referenced block is read and verified.
    progress?.start('verifying blocks');
    let done = 0;
    for (let after: Buffer | undefined, page: Buffer[]; (page = await scan.referencedHashes(after, HASH_PAGE)).length > 0; after = page[page.length - 1]) {
      for (const hash of page) {
        if (!store.has(hash)) await describeRows('missing-block', hash, '');
        else {
          const data = store.getVerified(hash);
          if (data) bytesVerified += data.length;
          else await describeRows('corrupt-block', hash, ' [bytes do not match their BLAKE3 key, or cannot be decoded]');
        }
        progress?.update(++done, counts.hashes, bytesVerified);
      }
    }
  }
  const verifySeconds = (performance.now() - verifyStart) / 1000;
  progress?.clear?.();

  return {
    volume,
    scan,
    blockSize: bs,
    findings,
    paths,
    stats: {
      inodes: counts.inodes,
      files: counts.files,
      directories: counts.directories,
      entries: counts.entries,
      blockRows: counts.blockRows,
      storedBlocks: store.blockCount(),
      remoteOnlyBlocks,
      bytesVerified,
      verifySeconds,
      seconds: (performance.now() - started) / 1000,
    },
  };
}

/** `--remote`: the shared pack index against the remote's listing (missing-pack, orphan-pack). */
export async function checkSharedPacks(state: PgCheckState, remote: Remote): Promise<void> {
  const { scan, findings, paths } = state;
  const bs = state.blockSize;
  await comparePackListing(findings, remote, await scan.packs(), async (pack) => {
    const live = await scan.liveBlocksOf(pack.id);
    const hurt = new Set<string>();
    for (const hash of live) {
      if (hurt.size > 50) break;
      for (const r of await scan.blockRowsOf(hash)) hurt.add(`${paths.of(r.ino)} bytes ${r.idx * bs}-${r.idx * bs + r.len - 1}`);
    }
    const named = [...hurt].slice(0, 50);
    return `${live.length} live blocks, lost to every machine that does not hold them in its cache${named.length > 0 ? `: ${named.join(', ')}${hurt.size > 50 ? ', and more' : ''}` : ''}`;
  });
}
