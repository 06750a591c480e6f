/**
 * Replays the writable view's journal on Drive, in the background: folders and new files
 * with `files.create` (marked with an appProperties key holding the operation's id, so a
 * create that reached Drive before a crash is found instead of repeated), new content with
 * `files.update` media (the file keeps its id), renames and moves with `files.update`
 * name/addParents/removeParents, deletions by moving to the trash (never deleting).
 *
 * Order: operations on one item run in the order they were made; an operation waits for
 * the creation of a folder it names and for earlier operations moving things in or out of
 * the item. A file is uploaded once it has been closed and left alone for the settle delay.
 * After an upload, Drive's md5 must match the bytes sent; then the bytes become ordinary
 * cached chunks (keyed by content, as the reader would fetch them) and the staged copy goes,
 * unless the file changed meanwhile.
 */
import type { drive_v3 } from '@googleapis/drive';
import type { DriveClient, UploadSessionStore, UploadSource } from '../remote/drive-client';
import { RemoteError } from '../remote/remote';
import { contentKey, type DiskChunkCache } from './chunk-cache';
import type { JournalDb, PendingOp } from './journal-db';
import { FOLDER_MIME, LOCAL_ID_PREFIX, type Invalidation, type MirrorDb } from './mirror-db';
import { ITEM_FIELDS } from './mirror-sync';
import type { UploadSnapshot, WriteBack } from './write-back';

/** The appProperties key a create carries: the journal entry's id. */
export const OP_PROPERTY = 'pogfsOp';

export interface UploaderSettings {
  /** A closed file is uploaded after being left alone this long. */
  settleMs: number;
  /** Operations on Drive at once. */
  concurrency: number;
  /** The chunk reader's chunk size (uploaded bytes are cached under its keys). */
  chunkSize: number;
}

export interface UploaderLog {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string, err?: unknown): void;
}

export interface UploadStatus {
  /** Operations not yet on Drive (uploads, folders, renames, deletions, times). */
  pendingOps: number;
  /** Files whose content is waiting for (or in) an upload, and their bytes. */
  pendingFiles: number;
  pendingBytes: number;
  stagedBytes: number;
  stagingLimitBytes: number;
  running: number;
  uploadedFiles: number;
  uploadedBytes: number;
  /** Upload rate over the last minute of uploading, bytes per second (0 when idle). */
  rateBytesPerSec: number;
  etaSeconds: number | undefined;
  /** Uploads stopped (Drive's storage quota or daily upload limit): the data stays staged. */
  stopped: string | undefined;
  /** An operation that keeps failing, and why. */
  failing: string | undefined;
}

/** After this many failures in a row an operation counts as one that cannot be done (drive sync fails). */
const FAILURES_REPORTED = 3;
const RETRY_MAX_MS = 5 * 60_000;
const RATE_WINDOW_MS = 60_000;

const LIST_CREATED_FIELDS = `nextPageToken,files(${ITEM_FIELDS},appProperties)`;

export class Uploader {
  private readonly running = new Map<number, PendingOp>();
  private readonly runningItems = new Map<string, number>();
  private readonly failures = new Map<number, { count: number; next: number; error: string }>();
  private readonly waiters = new Set<() => void>();
  private readonly recent: Array<{ at: number; bytes: number }> = [];
  private timer: NodeJS.Timeout | undefined;
  private scheduled = false;
  private closed = false;
  private stopped: string | undefined;
  /** drive sync or the unmount: closed files go now, without their settle delay. */
  private hurry = false;
  private uploadedFiles = 0;
  private uploadedBytes = 0;
  /** Uploads not sent because Drive has other new content (or lost the file): what Drive has, by operation. */
  private readonly changedOnDrive = new Map<number, drive_v3.Schema$File | undefined>();
  /** What the kernel must forget after a change the uploader found on Drive (the daemon hands it to the mount). */
  onInvalidate: (inval: Invalidation) => void = () => undefined;

  constructor(
    private readonly client: DriveClient,
    private readonly mirror: MirrorDb,
    private readonly journal: JournalDb,
    private readonly writeBack: WriteBack,
    private readonly cache: DiskChunkCache,
    private readonly settings: UploaderSettings,
    private readonly log: UploaderLog,
    /** Applies an item as Drive has it now, like a change from the feed (conflicts decided as there). */
    private readonly applyDriveItem: (id: string, file: drive_v3.Schema$File | undefined) => Invalidation,
  ) {
    writeBack.onChange = () => this.kick();
    writeBack.inFlight = (item) => this.runningItems.has(item);
  }

  /** Looks at the journal soon (coalesced). */
  kick(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  /** Stops starting operations and waits for the running ones. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    while (this.running.size > 0) await new Promise<void>((resolve) => this.waiters.add(resolve));
  }

  /**
   * Waits until everything journaled is on Drive. Answers the reason instead when uploads
   * are stopped or an operation keeps failing.
   */
  async whenDone(): Promise<{ ok: true } | { ok: false; error: string }> {
    this.hurry = true;
    this.kick();
    try {
      for (;;) {
        if (this.stopped) return { ok: false, error: this.stopped };
        const failing = this.failingReason();
        if (failing) return { ok: false, error: failing };
        if (this.running.size === 0 && this.journal.count() === 0) return { ok: true };
        if (this.closed) return { ok: false, error: 'the uploader was closed' };
        await new Promise<void>((resolve) => {
          this.waiters.add(resolve);
          // A file still open for writing settles only when closed: look again now and then.
          setTimeout(resolve, 1000).unref();
        });
      }
    } finally {
      this.hurry = false;
    }
  }

  status(): UploadStatus {
    const now = Date.now();
    while (this.recent.length > 0 && now - this.recent[0].at > RATE_WINDOW_MS) this.recent.shift();
    const windowBytes = this.recent.reduce((a, r) => a + r.bytes, 0);
    const since = this.recent.length > 0 ? Math.max(1000, now - this.recent[0].at) : 0;
    const rate = since > 0 ? (windowBytes * 1000) / since : 0;
    const files = new Set<string>();
    let bytes = 0;
    const ops = this.journal.pending();
    for (const op of ops) {
      if (op.kind !== 'upload' || files.has(op.item)) continue;
      files.add(op.item);
      bytes += this.writeBack.stagedOf(op.item)?.size ?? 0;
    }
    return {
      pendingOps: ops.length,
      pendingFiles: files.size,
      pendingBytes: bytes,
      stagedBytes: this.writeBack.stagedBytes(),
      stagingLimitBytes: this.writeBack.stagingLimit(),
      running: this.running.size,
      uploadedFiles: this.uploadedFiles,
      uploadedBytes: this.uploadedBytes,
      rateBytesPerSec: Math.round(rate),
      etaSeconds: rate > 0 ? Math.ceil(bytes / rate) : undefined,
      stopped: this.stopped,
      failing: this.failingReason(),
    };
  }

  private failingReason(): string | undefined {
    for (const f of this.failures.values()) if (f.count >= FAILURES_REPORTED) return f.error;
    return undefined;
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
    this.waiters.clear();
  }

  /** Starts what may run now, within the concurrency bound; sets a timer for what waits on time. */
  private pump(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.closed || this.stopped) {
      this.wake();
      return;
    }
    const now = Date.now();
    let wakeAt = Infinity;
    const items = new Set<string>();
    const folders = new Set<string>();
    for (const op of this.journal.pending()) {
      const refs = [op.parent, op.oldParent].filter((r): r is string => r !== undefined);
      const creates = op.kind === 'mkdir' || (op.kind === 'upload' && op.parent !== undefined);
      let blocked =
        this.running.has(op.seq) ||
        items.has(op.item) ||
        // Waits for earlier operations moving things in or out of it; a create has nothing to wait for
        // (what a rescue re-parents into a folder it makes is journaled before the folder).
        (!creates && folders.has(op.item)) ||
        refs.some((r) => items.has(r) || r.startsWith(LOCAL_ID_PREFIX)) ||
        (op.item.startsWith(LOCAL_ID_PREFIX) && !creates);
      const failed = this.failures.get(op.seq);
      if (!blocked && failed && failed.next > now) {
        blocked = true;
        wakeAt = Math.min(wakeAt, failed.next);
      }
      if (!blocked && op.kind === 'upload') {
        const s = this.writeBack.stagedOf(op.item);
        if (s && s.writers > 0) blocked = true; // its close kicks us
        else if (s && !this.hurry && now - s.changedAt < this.settings.settleMs) {
          blocked = true;
          wakeAt = Math.min(wakeAt, s.changedAt + this.settings.settleMs);
        }
      }
      if (!blocked && this.running.size < this.settings.concurrency) this.run(op);
      items.add(op.item);
      for (const r of refs) folders.add(r);
    }
    if (wakeAt < Infinity) {
      this.timer = setTimeout(() => this.pump(), Math.max(10, wakeAt - now));
      this.timer.unref();
    }
    this.wake();
  }

  private run(op: PendingOp): void {
    this.running.set(op.seq, op);
    this.runningItems.set(op.item, (this.runningItems.get(op.item) ?? 0) + 1);
    let item = op.item;
    const renamed = (newId: string) => {
      this.release(item);
      item = newId;
      this.runningItems.set(item, (this.runningItems.get(item) ?? 0) + 1);
    };
    this.execute(op, renamed)
      .then(
        () => this.failures.delete(op.seq),
        (err: unknown) => this.failed(op, err),
      )
      .finally(() => {
        this.running.delete(op.seq);
        this.release(item);
        if (this.changedOnDrive.has(op.seq)) {
          // No longer in flight: the feed's rule sets the local version aside as a conflict copy.
          const file = this.changedOnDrive.get(op.seq);
          this.changedOnDrive.delete(op.seq);
          try {
            this.onInvalidate(this.applyDriveItem(item, file));
          } catch (err) {
            this.log.error(`applying what Drive has of ${this.describe(op)}`, err);
          }
          // Not set aside after all: retried with backoff, not in a loop of reads.
          if (this.journal.pendingFor(item).some((o) => o.seq === op.seq)) this.failed(op, new Error('Drive has other content than the version changed here, and the local version could not be set aside'));
        }
        this.kick();
        this.wake();
      });
  }

  private release(item: string): void {
    const n = (this.runningItems.get(item) ?? 1) - 1;
    if (n <= 0) this.runningItems.delete(item);
    else this.runningItems.set(item, n);
  }

  private failed(op: PendingOp, err: unknown): void {
    const msg = (err as Error)?.message ?? String(err);
    if (op.kind === 'upload') this.writeBack.requeue(op.item);
    if (/insufficientPermissions|insufficientFilePermissions|insufficient authentication scopes/i.test(msg)) {
      // Retrying cannot help: the token was saved for reading only.
      const why = `${msg}: the saved token cannot change your files; run \`pogfs auth --scope full\` and mount again (what is written stays staged)`;
      if (!this.stopped) this.log.error(`uploads stopped: ${why}`);
      this.stopped = why;
      return;
    }
    if ((err instanceof RemoteError && err.code === 'quota') || /storageQuotaExceeded|uploadLimitExceeded/.test(msg)) {
      if (!this.stopped) this.log.error(`uploads stopped: ${msg}; what is written stays staged and is uploaded by the next mount (or after pogfs drive sync, once there is room)`);
      this.stopped = msg;
      return;
    }
    const f = this.failures.get(op.seq) ?? { count: 0, next: 0, error: '' };
    f.count++;
    f.next = Date.now() + Math.min(RETRY_MAX_MS, 1000 * 2 ** f.count);
    f.error = `${op.kind} of ${this.describe(op)}: ${msg}`;
    this.failures.set(op.seq, f);
    this.log.warn(`${f.error} (attempt ${f.count}; tried again in ${Math.round((f.next - Date.now()) / 1000)} s)`);
  }

  private describe(op: PendingOp): string {
    const row = this.mirror.item(op.item);
    return row ? `"${row.name}" (${op.item})` : op.name ? `"${op.name}" (${op.item})` : op.item;
  }

  // ---- the operations ---------------------------------------------------------------------

  private async execute(op: PendingOp, renamed: (newId: string) => void): Promise<void> {
    switch (op.kind) {
      case 'mkdir': {
        const f = await this.createOnce(op, { name: op.name, mimeType: FOLDER_MIME, parents: [op.parent!], modifiedTime: iso(op.modifiedMs ?? Date.now()) }, undefined);
        this.mirror.transaction(() => {
          this.created(op.item, f);
          this.journal.done(op.seq);
        });
        renamed(f.id!);
        return;
      }
      case 'upload': {
        const taken = await this.writeBack.takeForUpload(op.item);
        if (!taken) {
          // Deleted before its upload: nothing to send (a trash follows if Drive had it).
          this.journal.done(op.seq);
          return;
        }
        try {
          await this.upload(op, taken, renamed);
        } finally {
          taken.close();
        }
        return;
      }
      case 'move': {
        const move = op.oldParent && op.parent && op.oldParent !== op.parent ? { addParents: op.parent, removeParents: op.oldParent } : undefined;
        await this.tolerateGone(op, () => this.client.updateItem(op.item, { name: op.name }, undefined, 'id', move));
        this.journal.done(op.seq);
        return;
      }
      case 'trash':
        // To the trash, never deleted: a mistake can be undone on Drive.
        await this.tolerateGone(op, () => this.client.updateItem(op.item, { trashed: true }, undefined, 'id'));
        this.journal.done(op.seq);
        return;
      case 'mtime':
        await this.tolerateGone(op, () => this.client.updateItem(op.item, { modifiedTime: iso(op.modifiedMs ?? Date.now()) }, undefined, 'id'));
        this.journal.done(op.seq);
        return;
    }
  }

  private async upload(op: PendingOp, taken: UploadSnapshot, renamed: (newId: string) => void): Promise<void> {
    const { md5, source } = taken;
    const modifiedTime = iso(taken.modifiedMs);
    const isNew = op.item.startsWith(LOCAL_ID_PREFIX);
    if (!isNew) {
      const drive = await this.changedSinceBase(op.item, md5, source.size);
      if (drive !== false) {
        this.log.info(`${this.describe(op)} has ${drive ? 'new content' : 'been deleted'} on Drive since the version changed here: not overwritten`);
        this.writeBack.requeue(op.item);
        this.writeBack.revisionsSeenInFlight(op.item); // decided here, not to be warned about later
        this.changedOnDrive.set(op.seq, drive);
        return;
      }
    }
    const session = this.sessionFor(op, source.size, md5);
    const f = isNew
      ? await this.createOnce(op, { name: op.name, mimeType: 'application/octet-stream', parents: [op.parent!], modifiedTime }, { source, md5, session })
      : await this.client.updateItem(op.item, { modifiedTime }, source, ITEM_FIELDS, undefined, session);
    if (!isNew) {
      // Drive has no conditional update: new content put there during the upload itself is under ours now.
      const others = [...this.writeBack.revisionsSeenInFlight(op.item)].filter((rev) => rev !== f.headRevisionId);
      if (others.length > 0) {
        this.log.warn(`${this.describe(op)} got new content on Drive (revision ${others.join(', ')}) while the local version was uploading: the local version replaced it; Drive keeps it in the file's revisions`);
      }
    }
    if (f.md5Checksum !== md5) throw new Error(`Drive holds md5 ${f.md5Checksum ?? 'none'} after the upload, the bytes sent have ${md5} (changed while uploading?)`);
    // The bytes become cached chunks before the staged copy may go (reads never miss both).
    await this.cacheContent(op.item, taken.generation, md5, source);
    const id = f.id!;
    this.mirror.transaction(() => {
      if (isNew) this.created(op.item, f);
      if (this.writeBack.uploaded(id, taken.generation)) {
        this.mirror.setItemContent(id, { size: source.size, md5, headRev: f.headRevisionId ?? undefined, modifiedMs: taken.modifiedMs });
      } else {
        // Changed again meanwhile: still staged, but Drive's revision is ours (the feed must not take it for another's).
        const row = this.mirror.item(id);
        if (row) this.mirror.setItemContent(id, { size: row.size, md5: undefined, headRev: f.headRevisionId ?? undefined, modifiedMs: row.modifiedMs });
      }
      this.journal.done(op.seq);
    });
    if (isNew) renamed(id);
    this.uploadedFiles++;
    this.uploadedBytes += source.size;
    this.recent.push({ at: Date.now(), bytes: source.size });
    this.log.info(`uploaded ${this.describe({ ...op, item: id })}: ${source.size} bytes, md5 ${md5}`);
  }

  /**
   * The resumable session this upload keeps in the journal: one opened before a restart is
   * offered back only for the same bytes (size and md5 of the staged file), never for others.
   */
  private sessionFor(op: PendingOp, size: number, md5: string): UploadSessionStore {
    const kept = this.journal.uploadSession(op.seq);
    const same = kept !== undefined && kept.size === size && kept.md5 === md5;
    if (kept && !same) this.log.info(`${this.describe(op)} changed since its upload was cut off: a new upload session, not the old one`);
    return {
      uri: same ? kept.uri : undefined,
      opened: (uri) => this.journal.setUploadSession(op.seq, { uri, size, md5 }),
    };
  }

  /**
   * Drive has no conditional update: new content put there since the version a local change
   * was made on would be overwritten (kept only in Drive's revisions), and the changes feed may
   * not have shown it yet. So the head revision is read just before sending (the window left is
   * the upload itself). Answers false when Drive still has that version, else what Drive has
   * now (undefined: deleted or in the trash).
   */
  /**
   * Drive's version of the item when it has new content since the base of the local change
   * (undefined: deleted or trashed there; false: unchanged, or already holding exactly the
   * bytes to send - our own upload finished before a crash).
   */
  private async changedSinceBase(id: string, md5: string, size: number): Promise<drive_v3.Schema$File | undefined | false> {
    const base = this.mirror.item(id)?.headRev;
    let now: drive_v3.Schema$File;
    try {
      now = await this.client.getItem(id, ITEM_FIELDS);
    } catch (err) {
      if (err instanceof RemoteError && err.code === 'not-found') return undefined;
      throw err;
    }
    if (now.trashed) return undefined;
    if (now.md5Checksum === md5 && Number(now.size) === size) return false;
    return base !== undefined && now.headRevisionId && now.headRevisionId !== base ? now : false;
  }

  /** A create, unless an earlier attempt (before a crash, or one whose answer was lost) already made it. */
  private async createOnce(op: PendingOp, metadata: drive_v3.Schema$File, data: { source: UploadSource; md5: string; session: UploadSessionStore } | undefined): Promise<drive_v3.Schema$File> {
    const find = () => this.findCreated(op);
    if (op.attempted) {
      const found = await find();
      if (found) {
        this.log.info(`found ${this.describe(op)} already created on Drive (before a restart): not created again`);
        // Its content may be older than what is staged now: an upload must compare md5, which the caller does.
        if (data === undefined || found.md5Checksum === data.md5) return found;
        // A session kept for the create is not one for this update: a new one (kept in its place).
        return this.client.updateItem(found.id!, { modifiedTime: metadata.modifiedTime }, data.source, ITEM_FIELDS, undefined, { uri: undefined, opened: data.session.opened });
      }
    }
    this.journal.markAttempted(op.seq);
    return this.client.createItem(
      { ...metadata, appProperties: { [OP_PROPERTY]: op.opKey } },
      data?.source,
      ITEM_FIELDS,
      async () => {
        const found = await find();
        // Found after a lost answer: an upload's content is checked by md5 like any other.
        return found;
      },
      data?.session,
    );
  }

  private async findCreated(op: PendingOp): Promise<drive_v3.Schema$File | undefined> {
    const q = `'${quote(op.parent!)}' in parents and name = '${quote(op.name ?? '')}' and trashed = false`;
    let pageToken: string | undefined;
    for (let page = 0; page < 1000; page++) {
      const data = await this.client.listFilesPage({ q, fields: LIST_CREATED_FIELDS, pageToken });
      const hit = (data.files ?? []).find((f) => f.appProperties?.[OP_PROPERTY] === op.opKey);
      if (hit) return hit;
      pageToken = data.nextPageToken ?? undefined;
      if (!pageToken) return undefined;
    }
    return undefined;
  }

  /** A rename, trash or time change of an item Drive no longer has: nothing left to do, said in the log. */
  private async tolerateGone(op: PendingOp, call: () => Promise<unknown>): Promise<void> {
    try {
      await call();
    } catch (err) {
      if (!(err instanceof RemoteError && err.code === 'not-found')) throw err;
      this.log.warn(`${op.kind} of ${this.describe(op)}: Drive no longer has the item; skipped`);
    }
  }

  /** An item made here now exists on Drive: its id replaces the local one everywhere. */
  private created(localId: string, f: drive_v3.Schema$File): void {
    const id = f.id!;
    // The changes feed may have brought the new item in before this answer: one row, ours.
    if (this.mirror.item(id)) this.mirror.removeLocalItem(id, { entries: [], inodes: [] });
    this.mirror.replaceItemId(localId, id);
    this.journal.replaceItemId(localId, id);
    this.writeBack.renamed(localId, id);
    const createdMs = Date.parse(f.createdTime ?? '');
    if (createdMs) this.mirror.setItemCreated(id, createdMs);
  }

  /**
   * The uploaded bytes as cached chunks under their content key. Each piece is read and
   * checked against the uploaded version in one tick (a write through the mount may come
   * between two puts): bytes written since are never cached under the uploaded md5, and
   * the staged copy of a changed file stays anyway (see WriteBack.uploaded).
   */
  private async cacheContent(item: string, generation: number, md5: string, source: UploadSource): Promise<void> {
    const cs = this.settings.chunkSize;
    for (let i = 0; i * cs < source.size; i++) {
      const bytes = source.read(i * cs, Math.min(cs, source.size - i * cs));
      if (this.writeBack.generationOf(item) !== generation) return;
      await this.cache.put(contentKey(md5, source.size, cs, i), bytes);
    }
  }

}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function quote(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/'/g, "\\'");
}
