/**
 * The writable Drive view's local side (`pogfs drive mount --rw`): every change made
 * through the mount is done at once on the mirror (so the mount shows it), on the staging
 * area (file content) and on the journal (what Drive must be told), in one SQLite
 * transaction per change. The uploader (uploader.ts) replays the journal on Drive later.
 *
 * A file written here is staged: reads of it come from the staged copy until Drive holds
 * the same bytes. An existing Drive file opened for writing is first copied into staging
 * (through the chunk reader and its cache), unless it is truncated on open.
 */
import { createHash, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { constants as fsConstants } from 'node:fs';
import { E, fail } from '../posix/errors';
import { RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, type AttrChanges } from '../posix/file-system';
import type { UploadSource } from '../remote/drive-client';
import type { DriveView } from './drive-view';
import type { JournalDb, LocalAttrs } from './journal-db';
import { FOLDER_MIME, LOCAL_ID_PREFIX, type EntryRow, type Invalidation, type MirrorDb, type MirrorItem } from './mirror-db';
import type { LocalChanges } from './mirror-sync';
import { conflictName } from './names';
import type { StagingArea } from './staging';

/** A staged file's live state (the content is in the staging area, its record in the journal). */
export interface Staged {
  /** The item: changes from a local id to Drive's once created. */
  item: string;
  file: string;
  fd: number | undefined;
  /** Open handles (readers and writers). */
  users: number;
  writers: number;
  size: number;
  modifiedMs: number;
  /** Bumps on every change of the content. */
  generation: number;
  /** When the content last changed or a writer closed: the settle delay counts from here. */
  changedAt: number;
  /** A journaled upload not yet started exists (a later write needs no new one). */
  queued: boolean;
  /** Deleted while open: the staged file goes when the last handle closes. */
  orphan: boolean;
}

/** A staged file's content as an upload takes it. */
export interface UploadSnapshot {
  source: UploadSource;
  md5: string;
  generation: number;
  modifiedMs: number;
  close(): void;
}

interface Handle {
  staged: Staged;
  writable: boolean;
}

export interface WriteBackLog {
  info(msg: string): void;
  warn(msg: string): void;
}

/** File handles of staged files are numbered from here (the reader's start at 1). */
const FIRST_FH = 2 ** 30;
const FETCH_PIECE = 4 * 1024 * 1024;
const MD5_PIECE = 4 * 1024 * 1024;
const OCTET = 'application/octet-stream';

/** Where local work goes whose folder was deleted on Drive meanwhile (at the view's root). */
export const RECOVERED_FOLDER = 'pogfs-recovered';

export class WriteBack implements LocalChanges {
  private readonly staged = new Map<string, Staged>();
  private readonly staging = new Map<string, Promise<Staged>>();
  private readonly handles = new Map<number, Handle>();
  private nextFh = FIRST_FH;
  /** Told whenever something was journaled or a file settles (the uploader's kick). */
  onChange: () => void = () => undefined;
  /** Whether the uploader is working on an item now (its journal entries are not to be dropped). */
  inFlight: (item: string) => boolean = () => false;
  /** Head revisions the feed showed of items while they were uploading (see revisionsSeenInFlight). */
  private readonly seenInFlight = new Map<string, Set<string>>();

  constructor(
    private readonly view: DriveView,
    private readonly mirror: MirrorDb,
    readonly journal: JournalDb,
    private readonly area: StagingArea,
    private readonly log: WriteBackLog,
  ) {
    // After a restart: staged files as they are on disk (a write before a crash counts even if its close never came).
    for (const row of journal.allStaged()) {
      const size = area.adopt(row.file);
      const item = mirror.item(row.item);
      if (size === undefined) {
        log.warn(`staged file ${row.file} of ${row.item} is missing; the item keeps what Drive has`);
        journal.unstage(row.item);
        continue;
      }
      if (!item) {
        // Its item is gone from the view (and its journal entries with it): nothing to upload.
        journal.unstage(row.item);
        area.remove(row.file);
        continue;
      }
      const s: Staged = { item: row.item, file: row.file, fd: undefined, users: 0, writers: 0, size, modifiedMs: item.modifiedMs, generation: 1, changedAt: 0, queued: journal.pendingFor(row.item).some((o) => o.kind === 'upload'), orphan: false };
      this.staged.set(row.item, s);
      if (item.size !== size) mirror.setItemContent(row.item, { size, md5: undefined, headRev: item.headRev, modifiedMs: item.modifiedMs });
    }
    // A crash between making a staged file and committing its record leaves an empty file behind.
    area.sweep(new Set([...this.staged.values()].map((s) => s.file)));
  }

  // ---- what the uploader and the attributes ask -------------------------------------------

  stagedOf(item: string): Staged | undefined {
    return this.staged.get(item);
  }

  stagedBytes(): number {
    return this.area.bytes;
  }

  stagingLimit(): number {
    return this.area.limit;
  }

  localAttrs(item: string): LocalAttrs | undefined {
    return this.journal.attrs(item);
  }

  /**
   * The uploader takes a file's content (read in pieces from a descriptor of its own, which
   * `close` ends; its md5 first): later writes journal a new upload. A write during the
   * upload makes Drive's md5 differ from this one, and the upload is done again.
   */
  async takeForUpload(item: string): Promise<UploadSnapshot | undefined> {
    const s = this.staged.get(item);
    if (!s) return undefined;
    s.queued = false;
    const generation = s.generation;
    const modifiedMs = s.modifiedMs;
    const fd = this.area.open(s.file);
    try {
      const size = this.area.size(fd);
      const hash = createHash('md5');
      for (let at = 0; at < size; at += MD5_PIECE) {
        hash.update(this.area.read(fd, Math.min(MD5_PIECE, size - at), at));
        // A large file is hashed without holding up the mount.
        await new Promise((resolve) => setImmediate(resolve));
      }
      return { source: { size, read: (offset, length) => this.area.read(fd, length, offset) }, md5: hash.digest('hex'), generation, modifiedMs, close: () => this.area.close(fd) };
    } catch (err) {
      this.area.close(fd);
      throw err;
    }
  }

  /** An upload failed: its journal entry stays, so a later write needs no new one. */
  requeue(item: string): void {
    const s = this.staged.get(item);
    if (s) s.queued = true;
  }

  /** Which version of the item's content is staged now (undefined: none is). */
  generationOf(item: string): number | undefined {
    return this.staged.get(item)?.generation;
  }

  /** Drive holds generation `generation` of the item: its staged copy goes unless it changed since or is open for writing. */
  uploaded(item: string, generation: number): boolean {
    const s = this.staged.get(item);
    if (!s || s.generation !== generation || s.writers > 0 || s.queued) return false;
    this.staged.delete(item);
    this.journal.unstage(item);
    if (s.users === 0) this.area.remove(s.file);
    else s.orphan = true;
    return true;
  }

  /** The head revisions the feed showed of `id` while it was uploading, forgotten once asked. */
  revisionsSeenInFlight(id: string): Set<string> {
    const seen = this.seenInFlight.get(id) ?? new Set<string>();
    this.seenInFlight.delete(id);
    return seen;
  }

  /** Drive gave an item made here its id. */
  renamed(oldId: string, newId: string): void {
    const s = this.staged.get(oldId);
    if (!s) return;
    this.staged.delete(oldId);
    s.item = newId;
    this.staged.set(newId, s);
  }

  // ---- content ------------------------------------------------------------------------------

  /** Opens a staged file (or stages one for writing); undefined when the reader serves it. */
  async open(e: EntryRow, flags: number): Promise<number | undefined> {
    const writable = (flags & 3) !== fsConstants.O_RDONLY;
    if (e.kind !== 'file' || !e.item) fail(E.EISDIR);
    let s = this.staged.get(e.item);
    if (!s && !writable) return undefined;
    const truncate = writable && (flags & fsConstants.O_TRUNC) !== 0;
    if (!s) s = await this.stage(e, truncate ? 0 : e.size);
    const fh = this.handleFor(s, writable);
    // Truncated on open: new content for Drive even if nothing is written.
    if (truncate) this.truncateStaged(s, 0);
    return fh;
  }

  isStagedHandle(fh: number): boolean {
    return this.handles.has(fh);
  }

  read(fh: number, size: number, offset: number): Buffer {
    const h = this.handle(fh);
    return this.area.read(h.staged.fd!, Math.max(0, Math.min(size, h.staged.size - offset)), offset);
  }

  write(fh: number, data: Buffer, offset: number): number {
    const h = this.handle(fh);
    if (!h.writable) fail(E.EBADF);
    const s = h.staged;
    this.area.write(s.file, s.fd!, data, offset);
    s.size = Math.max(s.size, offset + data.length);
    this.changed(s);
    return data.length;
  }

  /** close(2): the size and time go to the mirror (the bytes are with the OS already). */
  flush(fh: number): void {
    const h = this.handles.get(fh);
    if (h?.writable) this.persist(h.staged);
  }

  release(fh: number): void {
    const h = this.handles.get(fh);
    if (!h) return;
    this.handles.delete(fh);
    const s = h.staged;
    s.users--;
    if (h.writable) {
      s.writers--;
      s.changedAt = Date.now();
      this.persist(s);
    }
    if (s.users === 0 && s.fd !== undefined) {
      this.area.close(s.fd);
      s.fd = undefined;
      if (s.orphan) this.area.remove(s.file);
    }
    this.onChange();
  }

  fsync(fh: number): void {
    const h = this.handles.get(fh);
    if (!h) return;
    this.persist(h.staged);
    if (h.staged.fd !== undefined) this.area.sync(h.staged.fd);
    this.mirror.checkpoint();
  }

  /** The size a staged file has now (the mirror's row lags until close). */
  sizeOf(item: string): number | undefined {
    return this.staged.get(item)?.size;
  }

  modifiedOf(item: string): number | undefined {
    return this.staged.get(item)?.modifiedMs;
  }

  // ---- namespace ----------------------------------------------------------------------------

  async create(parent: number, name: Buffer, mode: number, uid: number, gid: number, flags: number): Promise<{ ino: number; fh: number }> {
    const folder = this.folderOf(parent);
    const driveName = this.driveName(name);
    const id = `${LOCAL_ID_PREFIX}${randomUUID()}`;
    const now = Date.now();
    const file = this.area.create();
    const inval = noInval();
    this.mirror.transaction(() => {
      this.mirror.putLocalItem({ id, parent: folder, name: driveName, mime: OCTET, size: 0, md5: undefined, headRev: undefined, createdMs: now, modifiedMs: now, target: undefined }, inval);
      this.journal.stage(id, file);
      this.journal.setAttrs(id, { mode: mode & 0o7777, uid, gid });
      this.journal.add({ kind: 'upload', item: id, parent: folder, oldParent: undefined, name: driveName, modifiedMs: now, opKey: randomUUID() });
    });
    const s: Staged = { item: id, file, fd: undefined, users: 0, writers: 0, size: 0, modifiedMs: now, generation: 1, changedAt: now, queued: true, orphan: false };
    this.staged.set(id, s);
    const ino = this.inoOf(parent, name);
    const fh = this.handleFor(s, (flags & 3) !== fsConstants.O_RDONLY);
    this.onChange();
    return { ino, fh };
  }

  mkdir(parent: number, name: Buffer, mode: number, uid: number, gid: number): number {
    const folder = this.folderOf(parent);
    const driveName = this.driveName(name);
    const id = `${LOCAL_ID_PREFIX}${randomUUID()}`;
    const now = Date.now();
    this.mirror.transaction(() => {
      this.mirror.putLocalItem({ id, parent: folder, name: driveName, mime: FOLDER_MIME, size: 0, md5: undefined, headRev: undefined, createdMs: now, modifiedMs: now, target: undefined }, noInval());
      this.journal.setAttrs(id, { mode: mode & 0o7777, uid, gid });
      this.journal.add({ kind: 'mkdir', item: id, parent: folder, oldParent: undefined, name: driveName, modifiedMs: now, opKey: randomUUID() });
    });
    this.onChange();
    return this.inoOf(parent, name);
  }

  unlink(parent: number, name: Buffer): void {
    const e = this.entry(parent, name);
    if (e.kind === 'dir') fail(E.EISDIR);
    this.mirror.transaction(() => this.remove(e));
    this.onChange();
  }

  rmdir(parent: number, name: Buffer): void {
    const e = this.entry(parent, name);
    if (e.kind !== 'dir') fail(E.ENOTDIR);
    // Hidden children (Google documents) count: the folder is not empty on Drive.
    if (this.mirror.list(e.ino, 0, 1).length > 0 || this.mirror.hasChildren(this.mirror.foldersOf(e.ino))) fail(E.ENOTEMPTY);
    this.mirror.transaction(() => this.remove(e));
    this.onChange();
  }

  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number): void {
    if (flags & RENAME_EXCHANGE) fail(E.EINVAL, 'a Drive view cannot exchange two names');
    const e = this.entry(parent, name);
    const driveName = this.driveName(newName);
    const newFolder = this.folderOf(newParent);
    const target = this.mirror.lookup(newParent, newName);
    if (target && target.ino === e.ino) return;
    if (target) {
      if (flags & RENAME_NOREPLACE) fail(E.EEXIST);
      if (target.kind === 'dir' && e.kind !== 'dir') fail(E.EISDIR);
      if (target.kind !== 'dir' && e.kind === 'dir') fail(E.ENOTDIR);
      if (target.kind === 'dir' && (this.mirror.list(target.ino, 0, 1).length > 0 || this.mirror.hasChildren(this.mirror.foldersOf(target.ino)))) fail(E.ENOTEMPTY);
    }
    // A directory is every folder of its group; a file or shortcut its one item.
    const ids = e.kind === 'dir' ? this.mirror.foldersOf(e.ino) : e.item ? [e.item] : [];
    this.mirror.transaction(() => {
      if (target) this.remove(target);
      const moved = ids.map((id) => ({ id, from: this.mirror.item(id)?.parent }));
      this.mirror.moveLocalEntry(e.ino, newParent, newName, moved.map((m) => ({ id: m.id, parent: newFolder })), noInval());
      for (const m of moved) {
        // Not yet created on Drive (and not being created): it is created under the new name.
        if (m.id.startsWith(LOCAL_ID_PREFIX) && !this.inFlight(m.id) && this.journal.retargetCreate(m.id, newFolder, driveName)) continue;
        this.journal.add({ kind: 'move', item: m.id, parent: newFolder, oldParent: m.from, name: driveName, modifiedMs: undefined, opKey: randomUUID() });
      }
    });
    this.onChange();
  }

  async setattr(e: EntryRow, changes: AttrChanges): Promise<void> {
    if (!e.item) fail(E.EPERM);
    const item = e.item;
    if (changes.size !== undefined) {
      if (e.kind !== 'file') fail(E.EISDIR);
      let s = this.staged.get(item);
      if (!s) s = await this.stage(e, Math.min(e.size, changes.size));
      const staged = s;
      this.withFd(staged, () => this.truncateStaged(staged, changes.size!));
    }
    if (changes.mode !== undefined || changes.uid !== undefined || changes.gid !== undefined) {
      // Drive has no modes or owners: they are kept here, never sent.
      const had = this.journal.attrs(item) ?? { mode: undefined, uid: undefined, gid: undefined };
      this.journal.setAttrs(item, { mode: changes.mode !== undefined ? changes.mode & 0o7777 : had.mode, uid: changes.uid ?? had.uid, gid: changes.gid ?? had.gid });
    }
    if (changes.mtime !== undefined) {
      const ms = changes.mtime === 'now' ? Date.now() : changes.mtime.s * 1000 + Math.floor(changes.mtime.ns / 1e6);
      const s = this.staged.get(item);
      this.mirror.transaction(() => {
        const row = this.mirror.item(item);
        if (row) this.mirror.setItemContent(item, { size: s?.size ?? row.size, md5: s ? undefined : row.md5, headRev: row.headRev, modifiedMs: ms });
        if (s) s.modifiedMs = ms;
        this.journal.add({ kind: 'mtime', item, parent: undefined, oldParent: undefined, name: undefined, modifiedMs: ms, opKey: randomUUID() });
      });
      this.onChange();
    }
  }

  // ---- the changes feed meets local changes ------------------------------------------------

  /**
   * A change from the feed of an item with local changes (see LocalChanges). Content changed
   * on both sides: the local version is set aside as `NAME (conflict HOST DATE).EXT` and
   * Drive's is shown under the name. Trashed on Drive while changed here: the local version
   * is made anew. A folder deleted on Drive: what was made here inside it moves to
   * `pogfs-recovered`. Otherwise the local content stays, with Drive's name and folder
   * unless a local rename or move is pending too (then the local one wins). An item with
   * only a rename, move or time change pending has no local content: Drive's new content
   * (size, md5, revision) is taken, under the pending local name, folder and time.
   */
  keep(id: string, drive: MirrorItem | undefined, inval: Invalidation): boolean {
    if (!drive) this.rescueFrom(id, inval);
    const s = this.staged.get(id);
    if (!s && !this.journal.hasPendingFor(id)) return false;
    const row = this.mirror.item(id);
    if (!row) return false;
    const ops = this.journal.pendingFor(id);
    const place = () => {
      if (drive && !ops.some((o) => o.kind === 'move') && (drive.name !== row.name || drive.parent !== row.parent)) {
        this.mirror.putLocalItem({ ...row, name: drive.name, parent: drive.parent }, inval);
      }
      return true;
    };
    if (!s && drive && !this.inFlight(id) && (drive.headRev !== row.headRev || drive.md5 !== row.md5 || drive.size !== row.size)) {
      // Nothing staged here: the content is Drive's (the mirror's upsert makes the kernel forget the old pages).
      const moved = ops.some((o) => o.kind === 'move');
      const timed = ops.some((o) => o.kind === 'mtime');
      this.mirror.putLocalItem(
        {
          ...row,
          name: moved ? row.name : drive.name,
          parent: moved ? row.parent : drive.parent,
          size: drive.size,
          md5: drive.md5,
          headRev: drive.headRev,
          modifiedMs: timed ? row.modifiedMs : drive.modifiedMs,
        },
        inval,
      );
      return true;
    }
    // An upload of it is under way: the change may be that upload coming back (the uploader
    // compares what was seen with the revision it made once the upload ends).
    if (this.inFlight(id)) {
      if (drive?.headRev && drive.headRev !== row.headRev) {
        const seen = this.seenInFlight.get(id) ?? new Set<string>();
        this.seenInFlight.set(id, seen.add(drive.headRev));
      }
      return place();
    }
    if (!s || !ops.some((o) => o.kind === 'upload')) return place();
    if (!drive) {
      this.log.warn(`"${row.name}" (${id}) was deleted on Drive while changed here: the local version is uploaded anew`);
      this.mirror.removeLocalItem(id, inval);
      this.fork(id, s, row, row.parent ?? '', row.name, inval);
      return false;
    }
    // Drive gives every new content a new head revision: the same one means only metadata changed there.
    if (drive.headRev === row.headRev) return place();
    // Our own upload, finished on Drive before a crash kept this daemon from hearing of it:
    // Drive holds exactly the bytes its kept session was sending (the uploader resumes that
    // session, finds it complete and sends nothing again).
    const upload = ops.find((o) => o.kind === 'upload');
    const session = upload && this.journal.uploadSession(upload.seq);
    if (session && session.md5 === drive.md5 && session.size === drive.size) return place();
    const name = conflictName(row.name, hostname(), new Date());
    this.log.warn(`conflict: "${row.name}" (${id}) changed on Drive while a local change was pending; both are kept: Drive's under its name, the local one as "${name}"`);
    this.fork(id, s, row, row.parent ?? '', name, inval);
    return false;
  }

  /** Sets a staged file's local version aside as a new item (a create of `name` in `folder`); the item itself follows Drive. */
  private fork(id: string, s: Staged, row: MirrorItem, folder: string, name: string, inval: Invalidation): void {
    const local = `${LOCAL_ID_PREFIX}${randomUUID()}`;
    const now = Date.now();
    this.mirror.putLocalItem({ ...row, id: local, parent: folder, name, size: s.size, md5: undefined, headRev: undefined, createdMs: now, modifiedMs: s.modifiedMs }, inval);
    this.journal.dropUploads(id);
    this.journal.add({ kind: 'upload', item: local, parent: folder, oldParent: undefined, name, modifiedMs: s.modifiedMs, opKey: randomUUID() });
    this.journal.unstage(id);
    this.journal.stage(local, s.file);
    const attrs = this.journal.attrs(id);
    if (attrs) this.journal.setAttrs(local, attrs);
    this.staged.delete(id);
    s.item = local;
    s.queued = true;
    this.staged.set(local, s);
    this.onChange();
  }

  /**
   * A folder was deleted on Drive: items made here inside it, at any depth (and files
   * changed here), go to pogfs-recovered, under copies of the Drive folders between.
   */
  private rescueFrom(folderId: string, inval: Invalidation): void {
    if (this.staged.size === 0 && this.journal.count() === 0) return;
    const folder = this.mirror.item(folderId);
    if (!folder || folder.mime !== FOLDER_MIME) return;
    const saved = this.rescueInto(folderId, () => this.recoveredFolder(inval), inval);
    if (saved > 0) this.log.warn(`the folder "${folder.name}" (${folderId}) was deleted on Drive with local changes inside: ${saved} items go to /${RECOVERED_FOLDER}`);
  }

  /** Moves local work under `folderId` into the folder `into` makes (only when there is some). */
  private rescueInto(folderId: string, into: () => string, inval: Invalidation, depth = 0): number {
    let dest: string | undefined;
    const destination = () => (dest ??= into());
    let saved = 0;
    for (const c of this.mirror.childIds(folderId)) {
      const row = this.mirror.item(c);
      if (!row) continue;
      if (c.startsWith(LOCAL_ID_PREFIX)) {
        // Made here (a folder: with everything in it).
        this.mirror.putLocalItem({ ...row, parent: destination() }, inval);
        this.journal.moveCreates(c, destination());
        saved++;
      } else if (this.staged.has(c)) {
        this.fork(c, this.staged.get(c)!, row, destination(), row.name, inval);
        saved++;
      } else if (row.mime === FOLDER_MIME && depth < 1000) {
        saved += this.rescueInto(c, () => this.newFolder(destination(), row.name, inval), inval, depth + 1);
      }
    }
    return saved;
  }

  private recoveredFolder(inval: Invalidation): string {
    const e = this.mirror.lookup(ROOT_INO, Buffer.from(RECOVERED_FOLDER));
    if (e?.kind === 'dir') return this.folderOf(e.ino);
    return this.newFolder(this.folderOf(ROOT_INO), RECOVERED_FOLDER, inval);
  }

  /** A folder made here by the view itself (journaled like a mkdir). */
  private newFolder(parent: string, name: string, inval: Invalidation): string {
    const id = `${LOCAL_ID_PREFIX}${randomUUID()}`;
    const now = Date.now();
    this.mirror.putLocalItem({ id, parent, name, mime: FOLDER_MIME, size: 0, md5: undefined, headRev: undefined, createdMs: now, modifiedMs: now, target: undefined }, inval);
    this.journal.add({ kind: 'mkdir', item: id, parent, oldParent: undefined, name, modifiedMs: now, opKey: randomUUID() });
    this.onChange();
    return id;
  }

  // ---- inside ---------------------------------------------------------------------------------

  /** Deletes an entry: Drive items go to the trash (journaled); an item never sent is forgotten. */
  private remove(e: EntryRow): void {
    const ids = e.kind === 'dir' ? this.mirror.foldersOf(e.ino) : e.item ? [e.item] : [];
    for (const id of ids) {
      this.mirror.removeLocalItem(id, noInval());
      const s = this.staged.get(id);
      if (s) {
        this.staged.delete(id);
        this.journal.unstage(id);
        if (s.users === 0) this.area.remove(s.file);
        else s.orphan = true;
      }
      if (id.startsWith(LOCAL_ID_PREFIX) && !this.inFlight(id) && !this.journal.isReferencedAsFolder(id)) {
        this.journal.dropItem(id);
        this.journal.dropAttrs(id);
      } else {
        this.journal.add({ kind: 'trash', item: id, parent: undefined, oldParent: undefined, name: undefined, modifiedMs: undefined, opKey: randomUUID() });
      }
    }
  }

  /** Copies an existing Drive file's first `keep` bytes into staging. */
  private stage(e: EntryRow, keep: number): Promise<Staged> {
    const item = e.item!;
    const running = this.staging.get(item);
    if (running) return running;
    const p = (async () => {
      const file = this.area.create();
      const fd = this.area.open(file);
      try {
        if (keep > 0) {
          const rfh = this.view.open(e.ino, 0);
          try {
            for (let at = 0; at < keep; ) {
              const piece = await this.view.read(rfh, at, Math.min(FETCH_PIECE, keep - at));
              if (piece.length === 0) break;
              this.area.write(file, fd, piece, at);
              at += piece.length;
            }
          } finally {
            this.view.release(rfh);
          }
        }
      } catch (err) {
        this.area.close(fd);
        this.area.remove(file);
        throw err;
      }
      this.area.close(fd);
      const already = this.staged.get(item);
      if (already) {
        this.area.remove(file);
        return already;
      }
      this.journal.stage(item, file);
      const s: Staged = { item, file, fd: undefined, users: 0, writers: 0, size: keep, modifiedMs: e.modifiedMs, generation: 1, changedAt: Date.now(), queued: false, orphan: false };
      this.staged.set(item, s);
      return s;
    })();
    this.staging.set(item, p);
    return p.finally(() => this.staging.delete(item));
  }

  private handleFor(s: Staged, writable: boolean): number {
    if (s.fd === undefined) s.fd = this.area.open(s.file);
    s.users++;
    if (writable) s.writers++;
    const fh = this.nextFh++;
    this.handles.set(fh, { staged: s, writable });
    return fh;
  }

  private withFd(s: Staged, fn: () => void): void {
    const opened = s.fd === undefined;
    if (opened) s.fd = this.area.open(s.file);
    try {
      fn();
    } finally {
      if (opened && s.users === 0) {
        this.area.close(s.fd!);
        s.fd = undefined;
      }
    }
    s.changedAt = Date.now();
    this.persist(s);
    this.onChange();
  }

  private truncateStaged(s: Staged, size: number): void {
    this.area.truncate(s.file, s.fd!, size);
    s.size = size;
    this.changed(s);
  }

  /** New content: mtime moves, and Drive needs it (one journaled upload until the uploader takes it). */
  private changed(s: Staged): void {
    s.generation++;
    s.changedAt = Date.now();
    s.modifiedMs = s.changedAt;
    if (!s.queued) {
      s.queued = true;
      this.journal.add({ kind: 'upload', item: s.item, parent: undefined, oldParent: undefined, name: undefined, modifiedMs: undefined, opKey: randomUUID() });
    }
  }

  /** The mirror row follows the staged file (size, time; no md5 until Drive has it). */
  private persist(s: Staged): void {
    const row = this.mirror.item(s.item);
    if (row) this.mirror.setItemContent(s.item, { size: s.size, md5: undefined, headRev: row.headRev, modifiedMs: s.modifiedMs });
  }

  private handle(fh: number): Handle {
    const h = this.handles.get(fh);
    if (!h) fail(E.EBADF);
    return h;
  }

  private entry(parent: number, name: Buffer): EntryRow {
    const e = this.mirror.lookup(parent, name);
    if (!e) fail(E.ENOENT);
    return e;
  }

  /** The Drive folder new children of a directory go into (its oldest folder). */
  private folderOf(dirIno: number): string {
    const d = this.mirror.entry(dirIno);
    if (!d) fail(E.ENOENT);
    if (d.kind !== 'dir') fail(E.ENOTDIR);
    const folders = this.mirror.foldersOf(dirIno);
    if (folders.length === 0) fail(E.ENOENT);
    return dirIno === ROOT_INO ? folders[0] : (d.item ?? folders[0]);
  }

  /** A name given here as Drive will hold it: UTF-8 only (Drive names are text). */
  private driveName(name: Buffer): string {
    const text = name.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(name)) {
      this.log.warn(`refused a name that is not UTF-8 (${name.toString('hex')}): Drive names are text`);
      fail(E.EINVAL);
    }
    return text;
  }

  private inoOf(parent: number, name: Buffer): number {
    const e = this.mirror.lookup(parent, name);
    if (!e) throw new Error(`the new entry ${name.toString('utf8')} did not appear in its directory`);
    return e.ino;
  }
}

function noInval(): Invalidation {
  // The kernel made these changes itself: nothing of its own to forget.
  return { entries: [], inodes: [] };
}
