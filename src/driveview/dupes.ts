/**
 * `pogfs drive dupes`: duplicate files (same md5Checksum and size; Google documents and
 * folders never count) and same-named sibling folders, found in the mirror with no Drive
 * call. Applying the plan merges each folder group into the folder with the most entries
 * (fewest moves; ties: the oldest) by moving children, then moves every extra file to the
 * Drive trash, never deleting anything, and writes a log of each move and trash that
 * `--undo LOG` reverses.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import type { DriveClient } from '../remote/drive-client';
import type { MirrorDb } from './mirror-db';

export type KeepRule = 'newest' | 'oldest' | 'largest' | 'smallest';

export interface DupesPlan {
  files: Array<{ md5: string; size: number; keep: { id: string; path: string }; extras: Array<{ id: string; path: string }> }>;
  folders: Array<{ path: string; keep: { id: string }; merge: Array<{ id: string }> }>;
  bytes_reclaimable: number;
}

/** One line of the apply log. */
export type DupesLogEntry =
  | { action: 'move'; id: string; from: string; to: string }
  | { action: 'trash'; id: string; path: string };

function pathText(mirror: MirrorDb, ino: number): string | undefined {
  const parts = mirror.pathOf(ino);
  return parts ? `/${parts.map((p) => p.toString('utf8')).join('/')}` : undefined;
}

function within(path: string, prefix: string | undefined): boolean {
  if (!prefix || prefix === '/') return true;
  const p = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix;
  return path === p || path.startsWith(`${p}/`);
}

/**
 * The plan. Files of one content are one group (all the same size, so `largest` and
 * `smallest` fall back to the oldest); `under` limits it to a subtree of the view.
 */
export function planDupes(mirror: MirrorDb, keep: KeepRule, under: string | undefined): DupesPlan {
  const plan: DupesPlan = { files: [], folders: [], bytes_reclaimable: 0 };
  for (const g of mirror.duplicateFiles()) {
    const items = g.items
      .map((i) => ({ ...i, path: pathText(mirror, i.ino) }))
      .filter((i): i is typeof i & { path: string } => i.path !== undefined && within(i.path, under));
    if (items.length < 2) continue;
    items.sort((a, b) => {
      const byAge = a.createdMs - b.createdMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
      return keep === 'newest' ? b.modifiedMs - a.modifiedMs || -byAge : byAge;
    });
    const [kept, ...extras] = items;
    plan.files.push({ md5: g.md5, size: g.size, keep: { id: kept.id, path: kept.path }, extras: extras.map((e) => ({ id: e.id, path: e.path })) });
    plan.bytes_reclaimable += g.size * extras.length;
  }
  for (const g of mirror.mergedFolders()) {
    const path = pathText(mirror, g.ino);
    if (path === undefined || !within(path, under)) continue;
    // The most entries stays (fewest moves); ties go to the oldest (the list is oldest first).
    let best = g.folders[0];
    for (const f of g.folders) if (f.children > best.children) best = f;
    plan.folders.push({ path, keep: { id: best.id }, merge: g.folders.filter((f) => f.id !== best.id).map((f) => ({ id: f.id })) });
  }
  return plan;
}

/** Carries the plan out, logging each step to `logPath` before the next one. */
export async function applyDupes(client: DriveClient, mirror: MirrorDb, plan: DupesPlan, logPath: string): Promise<{ moved: number; trashed: number }> {
  let moved = 0;
  let trashed = 0;
  const log = (e: DupesLogEntry) => appendFileSync(logPath, `${JSON.stringify(e)}\n`, { mode: 0o600 });
  for (const g of plan.folders) {
    for (const m of g.merge) {
      for (const child of mirror.childIds(m.id)) {
        await client.updateMetadata(child, {}, { addParents: g.keep.id, removeParents: m.id });
        log({ action: 'move', id: child, from: m.id, to: g.keep.id });
        moved++;
      }
      // The emptied folder goes to the trash too (its children have left it).
      await client.updateMetadata(m.id, { trashed: true });
      log({ action: 'trash', id: m.id, path: g.path });
      trashed++;
    }
  }
  for (const g of plan.files) {
    for (const e of g.extras) {
      await client.updateMetadata(e.id, { trashed: true });
      log({ action: 'trash', id: e.id, path: e.path });
      trashed++;
    }
  }
  return { moved, trashed };
}

/** Reverses a log: untrashes what was trashed and moves back what was moved, last step first. */
export async function undoDupes(client: DriveClient, logPath: string): Promise<{ moved: number; restored: number }> {
  const entries = readFileSync(logPath, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as DupesLogEntry);
  let moved = 0;
  let restored = 0;
  for (const e of entries.reverse()) {
    if (e.action === 'trash') {
      await client.updateMetadata(e.id, { trashed: false });
      restored++;
    } else {
      await client.updateMetadata(e.id, {}, { addParents: e.from, removeParents: e.to });
      moved++;
    }
  }
  return { moved, restored };
}
