import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, realpathSync, statfsSync, statSync } from 'node:fs';
import { UsageError } from './errors';
import { dirname, basename, join, resolve } from 'node:path';

export interface MountEntry {
  source: string;
  target: string;
  type: string;
}

/** /proc/mounts escapes space, tab, newline and backslash as octal. */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function listMounts(): MountEntry[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => {
      const [source, target, type] = line.split(' ');
      return { source: unescapeMountField(source), target: unescapeMountField(target), type };
    });
}

export function findMount(mountpoint: string): MountEntry | undefined {
  const target = resolve(mountpoint);
  return listMounts()
    .reverse()
    .find((m) => m.target === target);
}

/** The innermost pogfs mount that holds `path` (the mount point itself included), if any. */
export function pogfsMountContaining(path: string): MountEntry | undefined {
  const abs = resolve(path);
  return listMounts()
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

/** Unmounts a FUSE mount; `lazy` detaches it even while busy. Returns an error message or undefined. */
export function fuseUnmount(mountpoint: string, lazy = false): string | undefined {
  const r = spawnSync('fusermount3', lazy ? ['-u', '-z', mountpoint] : ['-u', mountpoint], { encoding: 'utf8' });
  if (r.error) return `cannot run fusermount3 (${r.error.message}); is the fuse3 package installed?`;
  if (r.status !== 0) return (r.stderr || r.stdout || `fusermount3 exited with ${r.status}`).trim();
  return undefined;
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
