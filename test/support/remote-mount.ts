import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { liveDaemon } from '../../src/cli/daemon-record';
import type { MountStatus } from '../../src/cli/status-command';
import { isMounted, pogfs, pogfsOk } from './mount';

/** What tests need from a mounted volume with a remote: its status and its files' digests. */

export function mountStatus(mnt: string): MountStatus {
  return JSON.parse(pogfsOk(['status', mnt, '--json'])) as MountStatus;
}

/** Waits (bounded) until every dirty block has gone up. */
export async function waitUploaded(mnt: string, timeoutMs = 120_000): Promise<MountStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = mountStatus(mnt);
    if (s.remote && s.remote.upload.dirtyBlocks === 0 && !s.remote.upload.uploading) return s;
    if (Date.now() > deadline) throw new Error(`uploads did not finish in ${timeoutMs} ms: ${JSON.stringify(s.remote?.upload)}`);
    await sleep(100);
  }
}

export const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Relative path → sha256 of every regular file under `dir`. */
export function treeDigests(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out.set(relative(dir, p), sha256(readFileSync(p)));
    }
  };
  walk(dir);
  return out;
}

/** Unmounts if mounted, lazily when a clean unmount fails (test cleanup). */
export function unmountQuietly(mnt: string): void {
  if (!isMounted(mnt)) return;
  const r = pogfs(['umount', mnt]);
  if (r.status !== 0 || isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', mnt]);
}

/**
 * Waits (bounded) for a volume's daemon to exit after an unmount, and ends it with
 * SIGKILL if it will not, so no daemon of a failed run lives on holding its remote's
 * writer lock. Resolves with the pid it had to kill, if any.
 */
export async function endDaemon(volume: string, timeoutMs: number): Promise<number | undefined> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(100)) {
    if (!liveDaemon(volume)) return undefined;
  }
  const pid = liveDaemon(volume)?.pid;
  if (pid === undefined) return undefined;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone meanwhile
  }
  return pid;
}
