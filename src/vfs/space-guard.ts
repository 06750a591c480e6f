import { statfsSync } from 'node:fs';
import { E, FsError } from '../posix/errors';

/** What the guard needs to know of the disk the volume lives on. */
export interface SpaceSource {
  /** The volume directory (statfs of its file system). */
  path: string;
  /** Bytes inside the block store's file that later writes reuse (freed pages). */
  storeFreeBytes(): number;
  /** Bytes written through the mount but not yet stored (they will need room). */
  bufferedBytes(): number;
}

/** A fresh statfs at least this often while writes come in... */
const REFRESH_MS = 50;
/** ...or after this many bytes were admitted since the last one. */
const REFRESH_BYTES = 4 * 1024 * 1024;
/** LMDB stores a value in whole pages, with B-tree pages beside: room a block takes beyond its bytes. */
const STORE_OVERHEAD = 1.05;

export interface SpaceNow {
  /** Bytes of the file system's size. */
  totalBytes: number;
  /** Bytes free for new data: the file system's free space plus the store's free pages. */
  availableBytes: number;
  /** Bytes kept back for metadata (deletes, renames, commits of what is accepted). */
  reserveBytes: number;
}

/**
 * Keeps a volume from running its disk dry. A full disk must not stop SQLite or LMDB
 * from committing what was already accepted, nor a user from deleting files to make
 * room (SQLite rolls a whole transaction back when it cannot grow its log, and the
 * daemon's view of the tree would then be wrong). So, as ext4 keeps reserved blocks,
 * new data is refused with ENOSPC once the free space, less what is buffered, would
 * fall under a reserve; new names are refused under half of it; deleting, renaming and
 * truncating are never refused. The one place that decides when the disk is "full".
 */
export class SpaceGuard {
  private checkedAt = 0;
  private admittedSince = 0;
  private last: SpaceNow = { totalBytes: 0, availableBytes: Number.MAX_SAFE_INTEGER, reserveBytes: 0 };

  constructor(private readonly source: SpaceSource) {}

  /** The reserve for a file system of `totalBytes`: 5%, at least 8 MiB, at most 512 MiB. */
  static reserveFor(totalBytes: number): number {
    return Math.round(Math.min(512 * 1024 * 1024, Math.max(8 * 1024 * 1024, totalBytes * 0.05)));
  }

  /** The disk now (statfs and the store's free pages, read fresh). */
  measure(): SpaceNow {
    const fs = statfsSync(this.source.path);
    const totalBytes = fs.blocks * fs.bsize;
    this.last = {
      totalBytes,
      availableBytes: fs.bavail * fs.bsize + this.source.storeFreeBytes(),
      reserveBytes: SpaceGuard.reserveFor(totalBytes),
    };
    this.checkedAt = Date.now();
    this.admittedSince = 0;
    return this.last;
  }

  private current(): SpaceNow {
    if (Date.now() - this.checkedAt >= REFRESH_MS || this.admittedSince >= REFRESH_BYTES) return this.measure();
    return this.last;
  }

  /** Bytes a writer may still add before ENOSPC (what statfs reports as available). */
  writableBytes(): number {
    const s = this.current();
    return Math.max(0, s.availableBytes - this.admittedSince - this.source.bufferedBytes() * STORE_OVERHEAD - s.reserveBytes);
  }

  /** Throws ENOSPC unless `bytes` of new file data fit above the reserve. */
  admitData(bytes: number): void {
    if (bytes * STORE_OVERHEAD > this.writableBytes()) {
      // A decision near the edge is made on a fresh reading, not a cached one.
      this.measure();
      if (bytes * STORE_OVERHEAD > this.writableBytes()) throw new FsError(E.ENOSPC, 'no space left on the volume\'s disk');
    }
    this.admittedSince += bytes * STORE_OVERHEAD;
  }

  /** Throws ENOSPC when even new names (inodes, entries, xattrs) would eat into the reserve's last half. */
  admitMetadata(): void {
    const s = this.current();
    if (s.availableBytes - this.source.bufferedBytes() * STORE_OVERHEAD < s.reserveBytes / 2) {
      const fresh = this.measure();
      if (fresh.availableBytes - this.source.bufferedBytes() * STORE_OVERHEAD < fresh.reserveBytes / 2) {
        throw new FsError(E.ENOSPC, 'no space left on the volume\'s disk');
      }
    }
  }

  /**
   * The errno a failed commit should carry: ENOSPC when the disk is full (SQLite's
   * SQLITE_FULL, LMDB's failed page writes, ENOSPC from a write), the error itself
   * otherwise. LMDB reports a write that found no room as a bare I/O error, so the
   * disk's state decides, not the message.
   */
  classify(err: unknown): unknown {
    if (err instanceof FsError) return err;
    const e = err as { code?: unknown; errno?: unknown; message?: unknown } | undefined;
    const code = typeof e?.code === 'string' ? e.code : '';
    const full = code === 'ENOSPC' || code === 'SQLITE_FULL' || code === 'EDQUOT' || /MDB_MAP_FULL|No space left/i.test(String(e?.message ?? ''));
    if (full) return new FsError(E.ENOSPC, String(e?.message ?? 'no space left'));
    try {
      const s = this.measure();
      if (s.availableBytes < s.reserveBytes) return new FsError(E.ENOSPC, `${String(e?.message ?? err)} (the volume's disk is full)`);
    } catch {
      // statfs failing says nothing about space: keep the original error.
    }
    return err;
  }
}
