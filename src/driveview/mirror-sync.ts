/**
 * Keeps the mirror in step with Drive: one scan (getStartPageToken first, then files.list
 * in pages of 1000 with a fields mask, then the changes since that token), and after that
 * only the changes feed. Every page of changes is applied in one SQLite transaction
 * together with the page token that follows it, so a crash never loses or repeats a change
 * (repeating one would be harmless anyway: upserts are idempotent).
 */
import type { drive_v3 } from '@googleapis/drive';
import type { DriveClient } from '../remote/drive-client';
import { RemoteError } from '../remote/remote';
import { type Invalidation, type MirrorDb, type MirrorItem } from './mirror-db';

/** Only what the view needs (Drive sends nothing else). */
export const ITEM_FIELDS = 'id,name,mimeType,parents,size,md5Checksum,headRevisionId,createdTime,modifiedTime,trashed,shortcutDetails(targetId),driveId';
export const LIST_FIELDS = `nextPageToken,files(${ITEM_FIELDS})`;
export const CHANGES_FIELDS = `nextPageToken,newStartPageToken,changes(changeType,removed,fileId,driveId,file(${ITEM_FIELDS}))`;

/** Bounds: a million pages is more than any Drive; a listing restarted this often is given up. */
const MAX_PAGES = 1_000_000;
const MAX_LIST_RESTARTS = 3;

export interface SyncTarget {
  /** The folder shown at the root: 'root' (My Drive), a folder id, or a shared drive's id. */
  rootId: string;
  /** Set when the mount is a shared drive (listing with corpora=drive). */
  sharedDriveId: string | undefined;
}

/**
 * What a writable view decides about a change of an item it has local changes of. `keep`
 * answers true to leave the mirror as it is (it shows the item as it will be on Drive once
 * the journal is replayed: the feed would show an older state); false to apply Drive's
 * version, after setting the local one aside if both changed (a conflict). `drive` is
 * undefined when the item was trashed or deleted on Drive.
 */
export interface LocalChanges {
  keep(id: string, drive: MirrorItem | undefined, inval: Invalidation): boolean;
}

export interface PollResult {
  at: string;
  ok: boolean;
  changes: number;
  calls: number;
  error?: string;
  /** Drive refused the changes token: the Drive was scanned again (the old tree served meanwhile). */
  rescanned?: boolean;
}

export interface ScanProgress {
  (items: number): void;
}

export class MirrorSync {
  /** The changes replayed at the end of the last scan. */
  lastReplay: PollResult | undefined;
  /** A writable view: its say over changes of items with local changes still to send. */
  local: LocalChanges | undefined;

  constructor(
    private readonly client: DriveClient,
    private readonly mirror: MirrorDb,
    private readonly target: SyncTarget,
  ) {}

  get bootstrapped(): boolean {
    return this.mirror.getState('page_token') !== undefined;
  }

  /**
   * The first scan. The start token is taken before the listing, so whatever changes while
   * the listing runs is in the changes replayed after it.
   */
  async bootstrap(progress?: ScanProgress): Promise<Invalidation> {
    const rootId = await this.resolveRoot();
    const token = await this.client.startPageToken(this.target.sharedDriveId);
    const scan = Number(this.mirror.getState('scan') ?? '0') + 1;
    const local: Invalidation = { entries: [], inodes: [] };
    for (let restart = 0; ; restart++) {
      try {
        await this.listAll(scan, progress, local);
        break;
      } catch (e) {
        // A page token Drive no longer accepts: the listing starts over (upserts make that safe).
        if (restart >= MAX_LIST_RESTARTS || !isBadPageToken(e)) throw e;
      }
    }
    const inval = local;
    this.mirror.transaction(() => {
      // A rescan of a known Drive looks at every directory again; the first scan starts from the root.
      const dirty = new Set<number>([1, ...this.mirror.directoryInos()]);
      this.mirror.setRoot(rootId);
      this.mirror.removeUnscanned(scan, dirty);
      this.mirror.setState('scan', String(scan));
      this.mirror.rename(dirty, inval);
      // Not yet `page_token`: a crash before the replay below scans again.
      this.mirror.setState('scan_token', token);
    });
    const replay = await this.poll(token);
    this.lastReplay = replay;
    if (!replay.ok) throw new Error(replay.error);
    inval.entries.push(...replay.inval.entries);
    inval.inodes.push(...replay.inval.inodes);
    return inval;
  }

  private async resolveRoot(): Promise<string> {
    if (this.target.sharedDriveId) return this.target.sharedDriveId;
    if (this.target.rootId !== 'root') return this.target.rootId;
    const known = this.mirror.getState('root_id');
    if (known) return known;
    // 'root' is an alias: the listing names parents by their real id.
    return (await this.client.getFile('root')).id;
  }

  /** `local`: what a writable view's say over items with local changes makes the kernel forget. */
  private async listAll(scan: number, progress: ScanProgress | undefined, local: Invalidation): Promise<number> {
    let pageToken: string | undefined;
    let count = 0;
    for (let page = 0; page < MAX_PAGES; page++) {
      const data = await this.client.listFilesPage({ q: 'trashed = false', fields: LIST_FIELDS, pageToken, driveId: this.target.sharedDriveId });
      const files = data.files ?? [];
      this.mirror.transaction(() => {
        const dirty = new Set<number>();
        const unused: Invalidation = { entries: [], inodes: [] };
        for (const f of files) {
          const item = toItem(f);
          // An item with local changes still to send keeps its row (the scan only notes it was seen).
          if (item && this.local?.keep(item.id, item, local)) this.mirror.markScanned(item.id, scan);
          else if (item) this.mirror.upsertItem(item, scan, dirty, unused);
        }
      });
      count += files.length;
      progress?.(count);
      // Pages can be short or empty before the end: only a missing token ends the listing.
      pageToken = data.nextPageToken ?? undefined;
      if (!pageToken) return count;
    }
    throw new RemoteError('Drive files.list: too many pages', 'io');
  }

  /**
   * Applies the changes feed from the stored token (or `from`), one transaction per page,
   * and returns what the kernel must forget. A failure leaves the mirror as it was after
   * the last page applied: the tree keeps being served.
   */
  async poll(from?: string): Promise<PollResult & { inval: Invalidation }> {
    const inval: Invalidation = { entries: [], inodes: [] };
    let token = from ?? this.mirror.getState('page_token');
    const at = new Date().toISOString();
    let changes = 0;
    let calls = 0;
    if (!token) return { at, ok: false, changes, calls, error: 'no changes token: the Drive was never scanned', inval };
    try {
      for (let page = 0; page < MAX_PAGES; page++) {
        calls++;
        const data = await this.client.listChangesPage({ pageToken: token, fields: CHANGES_FIELDS, driveId: this.target.sharedDriveId });
        const list = data.changes ?? [];
        const next = data.nextPageToken ?? data.newStartPageToken ?? undefined;
        if (!next) throw new RemoteError('Drive changes.list answered without a next token', 'io');
        this.mirror.transaction(() => {
          const dirty = new Set<number>();
          for (const c of list) changes += this.applyChange(c, dirty, inval);
          this.mirror.rename(dirty, inval);
          this.mirror.setState('page_token', next);
          this.mirror.setState('page_token_time', new Date().toISOString());
        });
        token = next;
        if (!data.nextPageToken) break;
      }
      return { at, ok: true, changes, calls, inval };
    } catch (e) {
      const msg = (e as Error).message;
      if (isBadPageToken(e) && from === undefined) {
        // The token expired or was refused: scan again. The tree stays served while the
        // listing runs (it only upserts items); the names are brought up to date at its end.
        try {
          const again = await this.bootstrap();
          return { at, ok: true, changes, calls, inval: again, rescanned: true };
        } catch (e2) {
          return { at, ok: false, changes, calls, error: `the changes token was refused and scanning the Drive again failed: ${(e2 as Error).message}`, inval };
        }
      }
      return { at, ok: false, changes, calls, error: msg, inval };
    }
  }

  /**
   * One item as Drive has it now (undefined: gone), read outside the feed, applied like a
   * change from the feed (a writable view's say included); returns what the kernel must forget.
   */
  applyItem(id: string, file: drive_v3.Schema$File | undefined): Invalidation {
    const inval: Invalidation = { entries: [], inodes: [] };
    this.mirror.transaction(() => {
      const dirty = new Set<number>();
      this.applyChange({ fileId: id, file, removed: file === undefined }, dirty, inval);
      this.mirror.rename(dirty, inval);
    });
    return inval;
  }

  private applyChange(c: drive_v3.Schema$Change, dirty: Set<number>, inval: Invalidation): number {
    if (c.changeType === 'drive') return 0;
    const id = c.fileId ?? c.file?.id;
    if (!id) return 0;
    // On a My Drive mount, shared-drive items are somebody else's tree.
    if (!this.target.sharedDriveId && (c.driveId || c.file?.driveId)) return 0;
    const file = c.removed || !c.file || c.file.trashed ? undefined : c.file;
    if (this.local?.keep(id, file && toItem(file), inval)) return 0;
    if (!file) {
      this.mirror.removeItem(id, dirty);
      return 1;
    }
    const item = toItem(file);
    if (!item) return 0;
    const scan = Number(this.mirror.getState('scan') ?? '0');
    this.mirror.upsertItem(item, scan, dirty, inval);
    return 1;
  }
}

function toItem(f: drive_v3.Schema$File): MirrorItem | undefined {
  if (!f.id) return undefined;
  const created = Date.parse(f.createdTime ?? '') || 0;
  const modified = Date.parse(f.modifiedTime ?? '') || created;
  return {
    id: f.id,
    parent: f.parents?.[0] ?? undefined,
    name: f.name ?? '',
    mime: f.mimeType ?? 'application/octet-stream',
    size: f.size === undefined || f.size === null ? 0 : Number(f.size),
    md5: f.md5Checksum ?? undefined,
    headRev: f.headRevisionId ?? undefined,
    createdMs: created,
    modifiedMs: modified,
    target: f.shortcutDetails?.targetId ?? undefined,
  };
}

function isBadPageToken(e: unknown): boolean {
  const m = (e as Error)?.message ?? '';
  return /HTTP (400|404|410)/.test(m) && /pageToken|page token|Invalid Value|invalid/i.test(m);
}
