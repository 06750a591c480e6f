/**
 * Helpers for Drive view tests: the emulator runs in the test process, so every pogfs
 * command and every file access of the mount is asynchronous (a synchronous one would stop
 * the emulator the daemon is waiting for).
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { liveDaemon } from '../../src/cli/daemon-record';
import type { DriveViewStatus } from '../../src/cli/drive-daemon';
import type { DriveEmulator } from './drive-emulator';
import { CLI, isMounted } from './mount';

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI without blocking this process. */
export function pogfsAsync(args: string[], timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

export async function pogfsAsyncOk(args: string[], timeoutMs?: number): Promise<string> {
  const r = await pogfsAsync(args, timeoutMs);
  if (r.code !== 0) throw new Error(`pogfs ${args.join(' ')} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Runs a shell command without blocking this process. */
export function shAsync(command: string, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile('/bin/sh', ['-c', command], { encoding: 'buffer', timeout: timeoutMs, maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout: stdout.toString('latin1'), stderr: stderr.toString('utf8') });
    });
  });
}

/** A token file for the emulator (mode 0600). */
export function writeToken(emu: DriveEmulator, path: string): string {
  const token = emu.issueAccessToken(7 * 24 * 3600, 'https://www.googleapis.com/auth/drive.readonly');
  writeFileSync(path, `${JSON.stringify({ access_token: token })}\n`, { mode: 0o600 });
  return path;
}

export function driveFlags(emu: DriveEmulator, credentials: string): string[] {
  return ['--credentials', credentials, '--drive-api-url', emu.rootUrl, '--drive-token-url', emu.tokenUrl];
}

/** Drive calls by method between two counts (OAuth left out). */
export function callsBetween(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, n] of Object.entries(after)) {
    const d = n - (before[k] ?? 0);
    if (d > 0 && !k.startsWith('oauth.')) out[k] = d;
  }
  return out;
}

export const total = (calls: Record<string, number>): number => Object.values(calls).reduce((a, b) => a + b, 0);

export async function viewStatus(mnt: string): Promise<DriveViewStatus> {
  return JSON.parse(await pogfsAsyncOk(['status', mnt, '--json'])) as DriveViewStatus;
}

/** Test cleanup: unmounts (lazily if it must) and waits (bounded) for the daemon to go; kills it past that. */
export async function releaseView(mnt: string, stateDir: string): Promise<void> {
  if (isMounted(mnt)) {
    const r = await pogfsAsync(['umount', mnt], 30_000);
    if (r.code !== 0 || isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', mnt]);
  }
  for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(50)) if (!liveDaemon(stateDir)) return;
  const pid = liveDaemon(stateDir)?.pid;
  if (pid !== undefined) process.kill(pid, 'SIGKILL');
}

export function logTail(stateDir: string): string {
  const p = join(stateDir, 'pogfs.log');
  return existsSync(p) ? readFileSync(p, 'utf8').trimEnd().split('\n').slice(-15).join('\n') : '(no log)';
}
