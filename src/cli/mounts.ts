import { readdirSync, realpathSync, statfsSync, statSync } from 'node:fs';
import { findMount, fuseUnmount, readMountTable, type MountEntry } from '../fuse/mount-table';
import { UsageError } from './errors';
import { dirname, basename, join, resolve } from 'node:path';

// The mount table and fusermount3 belong to the FUSE layer; these are what the commands use of them.
export { findMount, fuseUnmount, type MountEntry } from '../fuse/mount-table';

/** The innermost pogfs mount that holds `path` (the mount point itself included), if any. */
export function pogfsMountContaining(path: string): MountEntry | undefined {
  const abs = resolve(path);
  return readMountTable()
    .filter((m) => isPogfsMount(m) && (abs === m.target || abs.startsWith(m.target.endsWith('/') ? m.target : `${m.target}/`)))
    .sort((a, b) => b.target.length - a.target.length)[0];
}

export function isPogfsMount(m: MountEntry): boolean {
  return m.type === 'fuse.pogfs';
}

/**
 * True when the path is a FUSE mount whose daemon is gone ("Transport endpoint is not
 * connected"). statfs, not stat: the kernel answers stat from cached attributes without
 * asking the (dead) daemon, but always sends statfs.
 */
export function isStaleMount(mountpoint: string): boolean {
  try {
    statfsSync(mountpoint);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOTCONN';
  }
}

/** The real path of `path`, or of its nearest existing ancestor with the rest appended (for paths not created yet). */
function realPathOf(path: string): string {
  const abs = resolve(path);
  try {
    return realpathSync(abs);
  } catch {
    const parent = dirname(abs);
    return parent === abs ? abs : join(realPathOf(parent), basename(abs));
  }
}

function isWithin(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith('/') ? outer : `${outer}/`);
}

/**
 * Why the daemon would serve its own files through its own mount, or undefined. A
 * volume (or cache or remote directory) under the mount point would be hidden by the
 * mount, and the daemon would wait on itself in the kernel for ever; so would a mount
 * point inside the volume. `dirs` name what each directory is, for the message.
 */
export function mountOverlap(mountpoint: string, dirs: readonly { what: string; path: string }[]): string | undefined {
  const mnt = realPathOf(mountpoint);
  for (const d of dirs) {
    const dir = realPathOf(d.path);
    if (mnt === dir) return `mount point ${mnt} is the ${d.what} itself: choose another (empty) directory as the mount point`;
    if (isWithin(mnt, dir)) return `mount point ${mnt} is inside the ${d.what} ${dir}: choose a mount point outside it`;
    if (isWithin(dir, mnt)) return `the ${d.what} ${dir} is inside mount point ${mnt}: the mount would hide it; choose a mount point outside it`;
  }
  return undefined;
}

/**
 * Checks the mount point, cleaning up a mount left by a daemon that died. The overlap
 * check comes first: anything else done to a mount point inside the volume could
 * already wait on a mount of this very daemon. `dirs` are the daemon's own directories.
 */
export function prepareMountpoint(mountpoint: string, dirs: readonly { what: string; path: string }[], allowNonEmpty: boolean, notice: (line: string) => void): void {
  const overlap = mountOverlap(mountpoint, dirs);
  if (overlap) throw new UsageError(overlap);
  if (isStaleMount(mountpoint)) {
    const err = fuseUnmount(mountpoint, true);
    if (err) throw new UsageError(`${mountpoint} is a dead FUSE mount and cleaning it up failed: ${err}`);
    notice(`pogfs: cleaned up a stale mount at ${mountpoint} (its daemon had died)`);
  }
  let st;
  try {
    st = statSync(mountpoint);
  } catch {
    throw new UsageError(`mount point ${mountpoint} does not exist (create it with: mkdir -p ${mountpoint})`);
  }
  if (!st.isDirectory()) throw new UsageError(`mount point ${mountpoint} is not a directory`);
  const existing = findMount(mountpoint);
  if (existing) throw new UsageError(`mount point ${mountpoint} is busy: ${existing.source} (${existing.type}) is mounted there`);
  if (!allowNonEmpty) {
    const entries = readdirSync(mountpoint).length;
    if (entries > 0) {
      throw new UsageError(`mount point ${mountpoint} is not empty (${entries} entries the mount would hide): use an empty directory, or pass --allow-non-empty`);
    }
  }
}
