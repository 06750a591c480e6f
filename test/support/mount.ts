import { execFileSync, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { findMount } from '../../src/fuse/mount-table';
import { tempDir } from './tmp';

/** The compiled CLI: tests drive pogfs exactly as a user would. */
export const CLI = resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');

export function pogfs(args: string[], options: { env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: options.env ?? process.env, timeout: 120_000 });
}

/** Runs pogfs and fails with its output when it exits non-zero. */
export function pogfsOk(args: string[]): string {
  const r = pogfs(args);
  if (r.status !== 0) throw new Error(`pogfs ${args.join(' ')} exited ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export function isMounted(mountpoint: string): boolean {
  return findMount(mountpoint) !== undefined;
}

export interface MountedVolume {
  volume: string;
  mnt: string;
  /** Path inside the mount. */
  p(...parts: string[]): string;
  umount(): void;
  mount(): void;
  /** pid of the running daemon. */
  daemonPid(): number;
}

/** Creates a volume and mounts it; unmounts after the test file, lazily if it must. */
export function mountFresh(initArgs: string[] = []): MountedVolume {
  const dir = tempDir('pogfs-e2e-', () => {
    if (!isMounted(mnt)) return;
    const r = pogfs(['umount', mnt]);
    if (r.status !== 0 || isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', mnt]);
  });
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  pogfsOk(['init', volume, ...initArgs]);
  const m: MountedVolume = {
    volume,
    mnt,
    p: (...parts) => join(mnt, ...parts),
    mount: () => void pogfsOk(['mount', volume, mnt]),
    umount: () => void pogfsOk(['umount', mnt]),
    daemonPid: () => (JSON.parse(readFileSync(join(volume, 'daemon.json'), 'utf8')) as { pid: number }).pid,
  };
  m.mount();
  return m;
}

export function sh(command: string, options: { cwd?: string; uid?: number; gid?: number } = {}): string {
  return execFileSync('/bin/sh', ['-c', command], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options });
}

/** Unmounts `mnt` if it is mounted: through pogfs, else (a killed daemon's dead mount) with fusermount3, else by aborting its connection. */
export function unmountAnyway(mnt: string): void {
  if (!isMounted(mnt)) return;
  if (pogfs(['umount', mnt]).status === 0 && !isMounted(mnt)) return;
  spawnSync('fusermount3', ['-u', '-z', mnt]);
  if (!isMounted(mnt)) return;
  const dev = statSync(mnt, { throwIfNoEntry: false })?.dev;
  if (dev !== undefined) writeFileSync(`/sys/fs/fuse/connections/${dev & 0xff}/abort`, '1');
}
