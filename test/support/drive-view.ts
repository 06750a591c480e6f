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
      resolve({ code, stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8') });
    });
  });
}

/** A token file for the emulator (mode 0600); read-only unless given the full scope (a --rw view). */
export function writeToken(emu: DriveEmulator, path: string, scope = 'https://www.googleapis.com/auth/drive.readonly'): string {
  const token = emu.issueAccessToken(7 * 24 * 3600, scope);
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

export interface PlantedDrive {
  /** Items files.list returns (not trashed), Google documents included. */
  listed: number;
  /** Entries the view shows under the root: directories (merged pairs once), files, shortcuts. */
  shown: number;
  /** Planted content duplicates: each a group of ids with one md5 and size. */
  contentGroups: string[][];
  /** Planted same-named sibling folders (pairs). */
  folderPairs: string[][];
  /** Files of `probeSize` bytes, for read tests. */
  probes: string[];
  probeSize: number;
}

/**
 * A synthetic Drive put straight into the emulator: `folders` folders (shows with seasons
 * inside; 1 in 40 shows named twice), `files` files spread over them with duplicate names,
 * `/` in names, Google documents, shortcuts, trashed items and planted content duplicates.
 */
export function plantDrive(emu: DriveEmulator, files: number, folders: number, probes = 1000): PlantedDrive {
  const FOLDER = 'application/vnd.google-apps.folder';
  const shows = Math.max(1, Math.floor(folders / 10));
  const showItems = [];
  const folderPairs: number[][] = [];
  for (let i = 0; i < shows; i++) showItems.push({ name: `Show ${String(i).padStart(4, '0')}`, mimeType: FOLDER });
  // Same-named sibling shows: every 40th show has a twin.
  for (let i = 0; i < shows; i += 40) {
    folderPairs.push([i, showItems.length]);
    showItems.push({ name: showItems[i].name, mimeType: FOLDER });
  }
  const showIds = emu.seedItems(showItems);
  const seasonItems = [];
  // Seasons go into the first of twin shows only (a twin's seasons would merge in turn).
  for (let i = 0; showIds.length + seasonItems.length < folders; i++) seasonItems.push({ name: `Season ${Math.floor(i / shows) + 1}`, parent: showIds[i % shows], mimeType: FOLDER });
  const folderIds = [...showIds, ...emu.seedItems(seasonItems)];
  const fileItems = [];
  const groups: number[][] = [];
  let trashed = 0;
  const probeSize = 128 * 1024;
  for (let i = 0; i < files; i++) {
    const parent = folderIds[i % folderIds.length];
    // Every 500th file has the name of the one before it in the same folder.
    const nameIndex = i % 500 === 499 ? i - folderIds.length : i;
    let name = `Episode ${nameIndex}.mkv`;
    if (i % 997 === 3) name = `AC/DC ${i}.mkv`;
    const isTrashed = i % 400 === 7;
    if (isTrashed) trashed++;
    const isProbe = i % Math.max(1, Math.floor(files / probes)) === 5 && !isTrashed;
    fileItems.push({ name, parent, size: isProbe ? probeSize : 1024 + (i % 2048), contentSeed: i, trashed: isTrashed, probe: isProbe });
  }
  // Planted content duplicates: pairs of neighbours with one seed and size.
  for (let g = 0; g * 600 + 12 < files; g++) {
    const a = g * 600 + 11;
    if (fileItems[a].trashed || fileItems[a + 1].trashed || fileItems[a].probe || fileItems[a + 1].probe) continue;
    for (const k of [a, a + 1]) Object.assign(fileItems[k], { contentSeed: 5_000_000 + g, size: 3000 });
    groups.push([a, a + 1]);
  }
  const fileIds = emu.seedItems(fileItems.map(({ probe: _probe, ...item }) => item));
  const docs = Math.floor(files / 300);
  emu.seedItems(Array.from({ length: docs }, (_, i) => ({ name: `Notes ${i}`, parent: folderIds[i % folderIds.length], mimeType: 'application/vnd.google-apps.document' })));
  const shortcuts = Math.floor(files / 1000);
  emu.seedItems(Array.from({ length: shortcuts }, (_, i) => ({ name: `link ${i}`, parent: folderIds[(i * 7) % folderIds.length], mimeType: 'application/vnd.google-apps.shortcut', shortcutTargetId: fileIds[(i * 13) % files] })));
  const shownFolders = folderIds.length - folderPairs.length;
  return {
    listed: folderIds.length + files - trashed + docs + shortcuts,
    shown: shownFolders + files - trashed + shortcuts,
    contentGroups: groups.map((g) => g.map((k) => fileIds[k])),
    folderPairs: folderPairs.map((p) => p.map((k) => showIds[k])),
    probes: fileItems.flatMap((f, k) => (f.probe ? [fileIds[k]] : [])),
    probeSize,
  };
}
