import { realpathSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { formatBytes, formatRows } from '../format';
import { callControl } from './control-socket';
import { UsageError } from './errors';
import { findMount, isPogfsMount, pogfsMountContaining, type MountEntry } from './mounts';

/** Exit code when the daemon refused (the destination exists, the source does not, a snapshot is read-only). */
export const REFUSED_EXIT = 1;

/** `path` with its directory's symlinks resolved and its last part kept as given (a symlink stays itself). */
function canonical(path: string): string {
  const abs = resolve(path);
  if (abs === '/') return abs;
  try {
    return join(realpathSync(dirname(abs)), basename(abs));
  } catch {
    return abs;
  }
}

/** The pogfs mount at `mountpoint` exactly. */
function mountAt(mountpoint: string): MountEntry {
  const target = resolve(mountpoint);
  const m = findMount(target);
  if (!m || m.target !== target) throw new UsageError(`${target} is not a mount point`);
  if (!isPogfsMount(m)) throw new UsageError(`${target} is not a pogfs mount (it is ${m.type})`);
  return m;
}

/** The daemon's answer to a refused request ("EEXIST", "ENOENT: why") in words about the paths involved. */
function refusal(what: string, err: Error, paths: { exists?: string; missing?: string }): UsageError {
  const [code, ...rest] = err.message.split(': ');
  const why = rest.join(': ');
  const words: Record<string, string> = {
    EEXIST: why || `${paths.exists ?? 'the destination'} already exists`,
    ENOENT: `${paths.missing ?? 'a path'} does not exist`,
    ENOTDIR: 'a component of a path is not a directory',
    EROFS: 'snapshots are read-only (and so is .snapshots)',
    EINVAL: why || 'invalid argument',
    ENOSPC: 'no space left on the volume\'s disk',
    EOPNOTSUPP: why || 'not supported on this volume',
  };
  const text = words[code];
  if (text === undefined) return new UsageError(`${what}: ${err.message}`, REFUSED_EXIT);
  return new UsageError(`${what}: ${text} (${code})`, REFUSED_EXIT);
}

async function ask<T>(m: MountEntry, req: Parameters<typeof callControl>[1], what: string, paths: { exists?: string; missing?: string }): Promise<T> {
  try {
    return await callControl<T>(m.source, req, Infinity);
  } catch (err) {
    if (/^E[A-Z]+(: |$)/.test((err as Error).message)) throw refusal(what, err as Error, paths);
    throw new UsageError(`${what}: ${(err as Error).message}`, REFUSED_EXIT);
  }
}

/** `pogfs clone SRC DST`: a copy-on-write copy made by the daemon of the mount holding both. */
export async function clone(src: string, dst: string, json: boolean): Promise<void> {
  const from = canonical(src);
  const to = canonical(dst);
  const m = pogfsMountContaining(from);
  if (!m) throw new UsageError(`${from} is not inside a mounted pogfs volume`);
  const mDst = pogfsMountContaining(dirname(to));
  if (!mDst || mDst.target !== m.target || to === m.target) throw new UsageError(`${to} must be a new name inside the same pogfs mount as ${from} (${m.target})`);
  const started = performance.now();
  const r = await ask<{ inodes: number }>(m, { op: 'clone', path: relative(m.target, from), to: relative(m.target, to) }, `clone ${from} ${to}`, { exists: to, missing: from });
  const seconds = (performance.now() - started) / 1000;
  if (json) console.log(JSON.stringify({ source: from, destination: to, inodes: r.inodes, seconds }, null, 2));
  else console.log(`cloned ${from} to ${to}: ${r.inodes} inodes in ${seconds.toFixed(2)} s (no block data copied)`);
}

export async function snapshotCreate(mountpoint: string, name: string, path: string | undefined, json: boolean): Promise<void> {
  const m = mountAt(mountpoint);
  let rel = '';
  if (path !== undefined) {
    const abs = canonical(path);
    if (pogfsMountContaining(abs)?.target !== m.target) throw new UsageError(`${abs} is not inside ${m.target}`);
    rel = relative(m.target, abs);
  }
  const where = join(m.target, '.snapshots', name);
  const r = await ask<{ inodes: number }>(m, { op: 'snapshot-create', name, path: rel }, `snapshot create ${name}`, { exists: where, missing: path ?? m.target });
  if (json) console.log(JSON.stringify({ snapshot: name, path: where, inodes: r.inodes }, null, 2));
  else console.log(`snapshot ${name} of ${rel === '' ? m.target : join(m.target, rel)} at ${where}: ${r.inodes} inodes, read-only`);
}

interface ListedSnapshot {
  name: string;
  source: string;
  createdNs: number;
  files: number;
  exclusiveBytes: number;
}

export async function snapshotList(mountpoint: string, json: boolean): Promise<void> {
  const m = mountAt(mountpoint);
  const list = await ask<ListedSnapshot[]>(m, { op: 'snapshot-list' }, 'snapshot list', {});
  const rows = list.map((s) => ({ name: s.name, created: new Date(s.createdNs / 1e6).toISOString(), source: `/${s.source}`, files: s.files, exclusiveBytes: s.exclusiveBytes }));
  if (json) {
    console.log(JSON.stringify(rows, null, 2));
    return;
  }
  if (rows.length === 0) {
    console.log(`no snapshots in ${m.target}`);
    return;
  }
  console.log(formatRows(rows.map((s) => [s.name, `${s.created}  ${s.files} files  ${formatBytes(s.exclusiveBytes)} exclusive  of ${s.source}`])));
}

export async function snapshotRemove(mountpoint: string, name: string): Promise<void> {
  const m = mountAt(mountpoint);
  await ask<{ inodes: number }>(m, { op: 'snapshot-rm', name }, `snapshot rm ${name}`, { missing: join(m.target, '.snapshots', name) });
  console.log(`removed snapshot ${name}`);
}
