/**
 * The Drive view's SQLite mirror: every item of the mounted Drive (from one scan, then the
 * changes feed), the directory entries the view shows (names already mapped, see names.ts),
 * the changes page token, and the index of the on-disk chunk cache.
 *
 * All of the Drive view's SQL lives in this module (the volume's SQL lives in src/meta/;
 * the view knows nothing of it). Every method is synchronous: better-sqlite3 answers a
 * lookup in microseconds, which is what lets the FUSE side answer lookup, getattr,
 * readdir and readlink without a single Drive call.
 *
 * Inode numbers are `dirents.ino` (AUTOINCREMENT: never reused, so the kernel never sees
 * one number stand for two things). Inode 1 is the root. A directory is a *group* of
 * same-named sibling folders: every folder of the group has `items.dir_ino` = the
 * directory's inode, and the directory lists the children of all of them.
 */
import Database from 'better-sqlite3';
import { ROOT_INO, type Invalidation } from '../posix/file-system';
import { duplicateName, safeBase } from './names';

export const FOLDER_MIME = 'application/vnd.google-apps.folder';
export const SHORTCUT_MIME = 'application/vnd.google-apps.shortcut';
const GOOGLE_PREFIX = 'application/vnd.google-apps.';

export type EntryKind = 'file' | 'dir' | 'link';
const KIND_CODE: Record<EntryKind, number> = { file: 1, dir: 2, link: 3 };
const KIND_OF: Record<number, EntryKind> = { 1: 'file', 2: 'dir', 3: 'link' };

/** One Drive item as the mirror keeps it. */
export interface MirrorItem {
  id: string;
  /** Its (first) parent folder's id. */
  parent: string | undefined;
  name: string;
  mime: string;
  size: number;
  md5: string | undefined;
  headRev: string | undefined;
  createdMs: number;
  modifiedMs: number;
  /** For a shortcut, the id of what it points at. */
  target: string | undefined;
}

/** What the view shows for one inode. */
export interface EntryRow {
  ino: number;
  dir: number;
  name: Buffer;
  kind: EntryKind;
  /** The item (a file, a shortcut) or the group's first folder (a directory). */
  item: string | undefined;
  size: number;
  md5: string | undefined;
  mime: string | undefined;
  modifiedMs: number;
  createdMs: number;
  target: string | undefined;
}

/** What the kernel must forget after a change: names (dir inode, name) and inodes whose content changed. */
export type { Invalidation };

interface DirentRow {
  ino: number;
  name: Buffer;
  item: string | null;
  kind: number;
  base: string;
}

interface ChildRow {
  id: string;
  name: string;
  mime: string;
  created_ms: number;
  dir_ino: number | null;
}

/** Hidden from the view: Google-native documents (no content to read). Folders and shortcuts are shown. */
export function isHiddenMime(mime: string): boolean {
  return mime.startsWith(GOOGLE_PREFIX) && mime !== FOLDER_MIME && mime !== SHORTCUT_MIME;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  id TEXT PRIMARY KEY,
  parent TEXT,
  name TEXT NOT NULL,
  mime TEXT NOT NULL,
  size INTEGER NOT NULL,
  md5 TEXT,
  head_rev TEXT,
  created_ms INTEGER NOT NULL,
  modified_ms INTEGER NOT NULL,
  target TEXT,
  dir_ino INTEGER,
  scan INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS items_parent ON items(parent);
CREATE INDEX IF NOT EXISTS items_dir_ino ON items(dir_ino) WHERE dir_ino IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_content ON items(md5, size) WHERE md5 IS NOT NULL;
CREATE TABLE IF NOT EXISTS dirents (
  ino INTEGER PRIMARY KEY AUTOINCREMENT,
  dir INTEGER NOT NULL,
  name BLOB NOT NULL,
  item TEXT,
  kind INTEGER NOT NULL,
  base TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS dirents_name ON dirents(dir, name);
CREATE INDEX IF NOT EXISTS dirents_listing ON dirents(dir, ino);
CREATE INDEX IF NOT EXISTS dirents_item ON dirents(item);
CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, bytes INTEGER NOT NULL, used INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_used ON chunks(used);
`;

/** Items made through a writable view get an id with this prefix until Drive gives them theirs. */
export const LOCAL_ID_PREFIX = 'local-';

/** Bound on directories renamed in one pass (a loop guard, far above any real Drive). */
const MAX_RECOMPUTES = 50_000_000;

export class MirrorDb {
  readonly db: Database.Database;
  private rootId = '';
  private readonly st: {
    getState: Database.Statement<[string], { value: string }>;
    setState: Database.Statement<[string, string]>;
    getItem: Database.Statement<[string], { parent: string | null; md5: string | null; size: number; head_rev: string | null; modified_ms: number; name: string; mime: string; dir_ino: number | null }>;
    upsert: Database.Statement<unknown[]>;
    deleteItem: Database.Statement<[string]>;
    children: Database.Statement<[string], ChildRow>;
    groupFolders: Database.Statement<[number], { id: string }>;
    direntsOf: Database.Statement<[number], DirentRow>;
    lookup: Database.Statement<[number, Buffer], EntryRowRaw>;
    byIno: Database.Statement<[number], EntryRowRaw>;
    readdir: Database.Statement<[number, number, number], { ino: number; name: Buffer; kind: number }>;
    insertDirent: Database.Statement<[number, Buffer, string | null, number, string]>;
    renameDirent: Database.Statement<[Buffer, string, number]>;
    setDirentItem: Database.Statement<[string, number]>;
    deleteDirent: Database.Statement<[number]>;
    clearDirIno: Database.Statement<[number]>;
    setDirIno: Database.Statement<[number, string]>;
    direntOfItem: Database.Statement<[string], { ino: number }>;
    dirInoOf: Database.Statement<[string], { dir_ino: number | null }>;
    parentOf: Database.Statement<[number], { dir: number; name: Buffer }>;
    fileInosOf: Database.Statement<[string], { ino: number }>;
    linkInos: Database.Statement<[], { ino: number }>;
    chunkBytes: Database.Statement<[string], { bytes: number }>;
    addChunk: Database.Statement<[string, number, number]>;
    touchChunk: Database.Statement<[number, string]>;
    oldestChunks: Database.Statement<[number], { key: string; bytes: number }>;
    removeChunk: Database.Statement<[string]>;
    itemRow: Database.Statement<[string]>;
    setItemContent: Database.Statement<[number, string | null, string | null, number, string]>;
    markScanned: Database.Statement<[number, string]>;
  };

  constructor(path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('cache_size = -65536');
    this.db.exec(SCHEMA);
    if (!this.db.prepare('SELECT 1 FROM dirents WHERE ino = 1').get()) {
      this.db.prepare("INSERT INTO dirents (ino, dir, name, item, kind, base) VALUES (1, 0, x'', NULL, 2, '')").run();
    }
    const entryColumns = 'd.ino, d.dir, d.name, d.kind, d.item, i.size, i.md5, i.mime, i.modified_ms, i.created_ms, i.target';
    this.st = {
      getState: this.db.prepare('SELECT value FROM state WHERE key = ?'),
      setState: this.db.prepare('INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
      getItem: this.db.prepare('SELECT parent, md5, size, head_rev, modified_ms, name, mime, dir_ino FROM items WHERE id = ?'),
      upsert: this.db.prepare(`INSERT INTO items (id, parent, name, mime, size, md5, head_rev, created_ms, modified_ms, target, scan)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT(id) DO UPDATE SET parent = excluded.parent, name = excluded.name, mime = excluded.mime, size = excluded.size,
          md5 = excluded.md5, head_rev = excluded.head_rev, created_ms = excluded.created_ms, modified_ms = excluded.modified_ms,
          target = excluded.target, scan = max(items.scan, excluded.scan)`),
      deleteItem: this.db.prepare('DELETE FROM items WHERE id = ?'),
      children: this.db.prepare('SELECT id, name, mime, created_ms, dir_ino FROM items WHERE parent = ?'),
      groupFolders: this.db.prepare(`SELECT id FROM items WHERE dir_ino = ? AND mime = '${FOLDER_MIME}' ORDER BY created_ms, id`),
      direntsOf: this.db.prepare('SELECT ino, name, item, kind, base FROM dirents WHERE dir = ?'),
      lookup: this.db.prepare(`SELECT ${entryColumns} FROM dirents d LEFT JOIN items i ON i.id = d.item WHERE d.dir = ? AND d.name = ?`),
      byIno: this.db.prepare(`SELECT ${entryColumns} FROM dirents d LEFT JOIN items i ON i.id = d.item WHERE d.ino = ?`),
      readdir: this.db.prepare('SELECT ino, name, kind FROM dirents WHERE dir = ? AND ino > ? ORDER BY ino LIMIT ?'),
      insertDirent: this.db.prepare('INSERT INTO dirents (dir, name, item, kind, base) VALUES (?, ?, ?, ?, ?)'),
      renameDirent: this.db.prepare('UPDATE dirents SET name = ?, base = ? WHERE ino = ?'),
      setDirentItem: this.db.prepare('UPDATE dirents SET item = ? WHERE ino = ?'),
      deleteDirent: this.db.prepare('DELETE FROM dirents WHERE ino = ?'),
      clearDirIno: this.db.prepare('UPDATE items SET dir_ino = NULL WHERE dir_ino = ?'),
      setDirIno: this.db.prepare('UPDATE items SET dir_ino = ? WHERE id = ?'),
      direntOfItem: this.db.prepare('SELECT ino FROM dirents WHERE item = ? AND kind != 2 LIMIT 1'),
      dirInoOf: this.db.prepare('SELECT dir_ino FROM items WHERE id = ?'),
      parentOf: this.db.prepare('SELECT dir, name FROM dirents WHERE ino = ?'),
      fileInosOf: this.db.prepare('SELECT ino FROM dirents WHERE item = ? AND kind = 1'),
      linkInos: this.db.prepare('SELECT ino FROM dirents WHERE kind = 3'),
      chunkBytes: this.db.prepare('SELECT bytes FROM chunks WHERE key = ?'),
      addChunk: this.db.prepare('INSERT INTO chunks (key, bytes, used) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE SET used = excluded.used'),
      touchChunk: this.db.prepare('UPDATE chunks SET used = ? WHERE key = ?'),
      oldestChunks: this.db.prepare('SELECT key, bytes FROM chunks ORDER BY used LIMIT ?'),
      removeChunk: this.db.prepare('DELETE FROM chunks WHERE key = ?'),
      // A writable view's: on every flush and release, and on each feed change of an item with local changes.
      itemRow: this.db.prepare('SELECT id, parent, name, mime, size, md5, head_rev, created_ms, modified_ms, target FROM items WHERE id = ?'),
      setItemContent: this.db.prepare('UPDATE items SET size = ?, md5 = ?, head_rev = ?, modified_ms = ? WHERE id = ?'),
      markScanned: this.db.prepare('UPDATE items SET scan = max(scan, ?) WHERE id = ?'),
    };
    this.rootId = this.getState('root_id') ?? '';
  }

  close(): void {
    this.db.close();
  }

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  getState(key: string): string | undefined {
    return this.st.getState.get(key)?.value;
  }

  setState(key: string, value: string): void {
    this.st.setState.run(key, value);
  }

  /** The folder shown as the mount's root (My Drive's id, a folder's, or a shared drive's). */
  setRoot(id: string): void {
    this.rootId = id;
    this.setState('root_id', id);
    this.setState('dir_ino_of_root', '1');
  }

  // ---- items -------------------------------------------------------------------------

  /**
   * Inserts or updates an item. Returns the directories to rename afresh (its old and new
   * parent's) and, when its content changed, the inodes that show it.
   */
  upsertItem(item: MirrorItem, scan: number, dirty: Set<number>, inval: Invalidation): void {
    const old = this.st.getItem.get(item.id);
    this.st.upsert.run(item.id, item.parent ?? null, item.name, item.mime, item.size, item.md5 ?? null, item.headRev ?? null, item.createdMs, item.modifiedMs, item.target ?? null, scan);
    if (old) {
      const sameContent = old.md5 === (item.md5 ?? null) && old.size === item.size && old.head_rev === (item.headRev ?? null) && old.modified_ms === item.modifiedMs;
      const sameName = old.name === item.name && old.parent === (item.parent ?? null) && old.mime === item.mime;
      if (sameName && sameContent) return;
      if (!sameContent) for (const r of this.st.fileInosOf.all(item.id)) inval.inodes.push(r.ino);
      if (old.parent) this.markParent(old.parent, dirty);
    }
    if (item.parent) this.markParent(item.parent, dirty);
  }

  /** Removes an item (trashed or deleted on Drive); its subtree leaves the view with it. */
  removeItem(id: string, dirty: Set<number>): void {
    const old = this.st.getItem.get(id);
    if (!old) return;
    this.st.deleteItem.run(id);
    if (old.parent) this.markParent(old.parent, dirty);
    if (old.dir_ino !== null) dirty.add(old.dir_ino);
  }

  /** Items a full scan did not see again (gone while nobody watched): removed. Items made here and not yet on Drive stay. */
  removeUnscanned(scan: number, dirty: Set<number>): number {
    const gone = this.db.prepare(`SELECT id FROM items WHERE scan < ? AND id NOT LIKE '${LOCAL_ID_PREFIX}%'`).all(scan) as { id: string }[];
    for (const g of gone) this.removeItem(g.id, dirty);
    return gone.length;
  }

  private markParent(parentId: string, dirty: Set<number>): void {
    if (parentId === this.rootId) {
      dirty.add(ROOT_INO);
      return;
    }
    const d = this.st.dirInoOf.get(parentId)?.dir_ino;
    if (d !== null && d !== undefined) dirty.add(d);
  }

  /** Every directory shown (for a full rename pass after a rescan). */
  directoryInos(): number[] {
    return (this.db.prepare('SELECT ino FROM dirents WHERE kind = 2').all() as { ino: number }[]).map((r) => r.ino);
  }

  itemCount(): { items: number; folders: number; files: number; bytes: number } {
    const r = this.db.prepare(`SELECT count(*) AS items, coalesce(sum(mime = '${FOLDER_MIME}'), 0) AS folders, coalesce(sum(md5 IS NOT NULL), 0) AS files, coalesce(sum(size), 0) AS bytes FROM items`).get() as { items: number; folders: number; files: number; bytes: number };
    return r;
  }

  // ---- names (the rule is in names.ts) ---------------------------------------------

  /**
   * Brings the directory entries of every directory in `dirty` (and of any directory that
   * this changes in turn) in line with the items, keeping every name that is still right.
   */
  rename(dirty: Set<number>, inval: Invalidation): void {
    const queue = [...dirty];
    dirty.clear();
    const queued = new Set(queue);
    const push = (ino: number) => {
      if (!queued.has(ino)) {
        queued.add(ino);
        queue.push(ino);
      }
    };
    const before = inval.entries.length;
    for (let n = 0; queue.length > 0; n++) {
      if (n > MAX_RECOMPUTES) throw new Error('mirror: renaming did not settle');
      const ino = queue.shift()!;
      queued.delete(ino);
      this.renameDir(ino, push, inval);
    }
    // The kernel caches symlink targets: when names moved, shortcuts may point elsewhere now.
    if (inval.entries.length > before) for (const r of this.st.linkInos.all()) inval.inodes.push(r.ino);
  }

  private renameDir(dirIno: number, push: (ino: number) => void, inval: Invalidation): void {
    const folders = dirIno === ROOT_INO ? (this.rootId ? [this.rootId] : []) : this.st.groupFolders.all(dirIno).map((r) => r.id);
    const existing = this.st.direntsOf.all(dirIno);
    const dropRow = (row: DirentRow) => {
      this.st.deleteDirent.run(row.ino);
      inval.entries.push([dirIno, row.name]);
      if (row.kind === KIND_CODE.dir) {
        this.st.clearDirIno.run(row.ino);
        push(row.ino);
      }
    };
    if (folders.length === 0 && dirIno !== ROOT_INO) {
      for (const row of existing) dropRow(row);
      return;
    }

    // What should be here: groups of same-named folders, and files and shortcuts.
    interface Entity {
      kind: EntryKind;
      base: string;
      /** The item (file, shortcut) or the group's oldest folder. */
      id: string;
      createdMs: number;
      folders: ChildRow[];
      row: DirentRow | undefined;
      name: string | undefined;
    }
    const groups = new Map<string, Entity>();
    const entities: Entity[] = [];
    for (const folderId of folders) {
      for (const c of this.st.children.all(folderId)) {
        if (c.id === this.rootId || isHiddenMime(c.mime)) continue;
        const base = safeBase(c.name);
        if (c.mime === FOLDER_MIME) {
          let g = groups.get(base);
          if (!g) {
            g = { kind: 'dir', base, id: c.id, createdMs: c.created_ms, folders: [], row: undefined, name: undefined };
            groups.set(base, g);
            entities.push(g);
          }
          g.folders.push(c);
          if (c.created_ms < g.createdMs || (c.created_ms === g.createdMs && c.id < g.id)) {
            g.id = c.id;
            g.createdMs = c.created_ms;
          }
        } else {
          entities.push({ kind: c.mime === SHORTCUT_MIME ? 'link' : 'file', base, id: c.id, createdMs: c.created_ms, folders: [], row: undefined, name: undefined });
        }
      }
    }

    // Match existing entries: a file or shortcut by its item, a directory by its folders' dir_ino.
    const rowByIno = new Map(existing.map((r) => [r.ino, r]));
    const rowByItem = new Map(existing.filter((r) => r.kind !== KIND_CODE.dir && r.item !== null).map((r) => [r.item!, r]));
    const used = new Set<number>();
    // Directories first take an entry made from their own name (a group that split keeps its
    // inode under its name), then any entry one of their folders had.
    for (const sameBase of [true, false]) {
      for (const e of entities) {
        if (e.row) continue;
        if (e.kind === 'dir') {
          let best: DirentRow | undefined;
          for (const f of e.folders) {
            const r = f.dir_ino === null ? undefined : rowByIno.get(f.dir_ino);
            if (r && r.kind === KIND_CODE.dir && !used.has(r.ino) && (!sameBase || r.base === e.base) && (!best || r.ino < best.ino)) best = r;
          }
          e.row = best;
        } else if (sameBase) {
          const r = rowByItem.get(e.id);
          e.row = r && r.kind === KIND_CODE[e.kind] && !used.has(r.ino) ? r : undefined;
        }
        if (e.row) used.add(e.row.ino);
      }
    }

    // Names: an entry keeps its name while it is made from the same base; the rest are given one.
    const taken = new Set<string>();
    for (const e of entities) {
      if (e.row && e.row.base === e.base) {
        e.name = e.row.name.toString('utf8');
        taken.add(e.name);
      }
    }
    const order = entities.filter((e) => e.name === undefined).sort((a, b) => (a.kind === 'dir') !== (b.kind === 'dir') ? (a.kind === 'dir' ? -1 : 1) : a.createdMs - b.createdMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    for (const e of order) {
      let name = e.base;
      for (const chars of [8, 12, 16, 64]) {
        if (!taken.has(name)) break;
        name = duplicateName(e.base, e.id, e.kind === 'dir', chars);
      }
      e.name = name;
      taken.add(name);
    }

    // Write: drop what is no longer here, rename, insert.
    for (const row of existing) if (!used.has(row.ino)) dropRow(row);
    for (const e of entities) {
      const nameBuf = Buffer.from(e.name!, 'utf8');
      if (e.row) {
        if (!e.row.name.equals(nameBuf) || e.row.base !== e.base) {
          // Through a placeholder: another entry may be taking this name in the same pass.
          this.st.renameDirent.run(Buffer.from(`\0${e.row.ino}`), e.base, e.row.ino);
          inval.entries.push([dirIno, e.row.name]);
          e.name = `\0${e.row.ino}\0${e.name!}`;
        }
      }
    }
    for (const e of entities) {
      if (e.row && e.name!.startsWith('\0')) {
        const real = e.name!.slice(e.name!.indexOf('\0', 1) + 1);
        this.st.renameDirent.run(Buffer.from(real, 'utf8'), e.base, e.row.ino);
        inval.entries.push([dirIno, Buffer.from(real, 'utf8')]);
        e.name = real;
      }
    }
    for (const e of entities) {
      let ino: number;
      if (e.row) {
        ino = e.row.ino;
        // A directory shows its oldest folder's times: that folder may have changed.
        if (e.kind === 'dir' && e.row.item !== e.id) this.st.setDirentItem.run(e.id, ino);
      } else {
        const nameBuf = Buffer.from(e.name!, 'utf8');
        ino = Number(this.st.insertDirent.run(dirIno, nameBuf, e.id, KIND_CODE[e.kind], e.base).lastInsertRowid);
        inval.entries.push([dirIno, nameBuf]);
      }
      if (e.kind === 'dir') {
        let grew = !e.row;
        for (const f of e.folders) {
          if (f.dir_ino !== ino) {
            // The directory it came from lost it (a group that split): that one is renamed too.
            if (f.dir_ino !== null) push(f.dir_ino);
            this.st.setDirIno.run(ino, f.id);
            grew = true;
          }
        }
        if (grew) push(ino);
      }
    }
  }

  // ---- what FUSE asks ------------------------------------------------------------------

  lookup(dir: number, name: Buffer): EntryRow | undefined {
    const r = this.st.lookup.get(dir, name);
    return r && toEntry(r);
  }

  entry(ino: number): EntryRow | undefined {
    const r = this.st.byIno.get(ino);
    return r && toEntry(r);
  }

  /** Entries of a directory after inode `after`, in inode order (the readdir offset is the inode). */
  list(dir: number, after: number, limit: number): Array<{ ino: number; name: Buffer; kind: EntryKind }> {
    return this.st.readdir.all(dir, after, limit).map((r) => ({ ino: r.ino, name: r.name, kind: KIND_OF[r.kind] }));
  }

  /** Path of an inode from the root, as name buffers (empty for the root); undefined if it is gone. */
  pathOf(ino: number): Buffer[] | undefined {
    const parts: Buffer[] = [];
    for (let cur = ino, guard = 0; cur !== ROOT_INO; guard++) {
      if (guard > 10_000) return undefined;
      const r = this.st.parentOf.get(cur);
      if (!r) return undefined;
      parts.push(r.name);
      cur = r.dir;
    }
    return parts.reverse();
  }

  /** The inode that shows a Drive item (a folder's directory, a file's entry), if the view shows it. */
  inoOfItem(id: string): number | undefined {
    if (id === this.rootId) return ROOT_INO;
    const d = this.st.dirInoOf.get(id)?.dir_ino;
    if (d !== null && d !== undefined) return d;
    return this.st.direntOfItem.get(id)?.ino;
  }

  // ---- local changes (a writable view) ---------------------------------------------------

  /** The item row itself (undefined when the mirror does not hold it). */
  item(id: string): MirrorItem | undefined {
    const r = this.st.itemRow.get(id) as
      | { id: string; parent: string | null; name: string; mime: string; size: number; md5: string | null; head_rev: string | null; created_ms: number; modified_ms: number; target: string | null }
      | undefined;
    return r && { id: r.id, parent: r.parent ?? undefined, name: r.name, mime: r.mime, size: r.size, md5: r.md5 ?? undefined, headRev: r.head_rev ?? undefined, createdMs: r.created_ms, modifiedMs: r.modified_ms, target: r.target ?? undefined };
  }

  /** The Drive folders a directory shows (the root's folder, or every folder of a merged group, oldest first). */
  foldersOf(dirIno: number): string[] {
    if (dirIno === ROOT_INO) return this.rootId ? [this.rootId] : [];
    return this.st.groupFolders.all(dirIno).map((r) => r.id);
  }

  /** Whether any item (shown or hidden, like a Google document) has one of these folders as parent. */
  hasChildren(folderIds: string[]): boolean {
    const q = this.db.prepare('SELECT 1 FROM items WHERE parent = ? LIMIT 1');
    return folderIds.some((id) => q.get(id) !== undefined);
  }

  /** Adds an item made here (or changes one) and brings the names of its directories up to date. */
  putLocalItem(item: MirrorItem, inval: Invalidation): void {
    const dirty = new Set<number>();
    this.upsertItem(item, Number(this.getState('scan') ?? '0'), dirty, inval);
    this.rename(dirty, inval);
  }

  /** Removes an item deleted here (its subtree goes with it) and renames its directory. */
  removeLocalItem(id: string, inval: Invalidation): void {
    const dirty = new Set<number>();
    this.removeItem(id, dirty);
    this.rename(dirty, inval);
  }

  /**
   * A rename made here: the entry keeps its inode (the kernel already moved it) and takes
   * its new directory and name; its items get the new name and parent.
   */
  moveLocalEntry(ino: number, newDir: number, newName: Buffer, items: Array<{ id: string; parent: string }>, inval: Invalidation): void {
    const from = this.st.parentOf.get(ino);
    if (!from) return;
    const name = newName.toString('utf8');
    this.db.prepare('UPDATE dirents SET dir = ?, name = ?, base = ? WHERE ino = ?').run(newDir, newName, safeBase(name), ino);
    const setItem = this.db.prepare('UPDATE items SET name = ?, parent = ? WHERE id = ?');
    for (const it of items) setItem.run(name, it.parent, it.id);
    this.rename(new Set([from.dir, newDir]), inval);
  }

  /** Drive gave an item made here its id: every reference follows. */
  replaceItemId(oldId: string, newId: string): void {
    this.db.prepare('UPDATE items SET id = ? WHERE id = ?').run(newId, oldId);
    this.db.prepare('UPDATE items SET parent = ? WHERE parent = ?').run(newId, oldId);
    this.db.prepare('UPDATE dirents SET item = ? WHERE item = ?').run(newId, oldId);
  }

  /** A scan saw an item whose row stays as it is (it has local changes still to send). */
  markScanned(id: string, scan: number): void {
    this.st.markScanned.run(scan, id);
  }

  /** Content and times of an item as changed here or confirmed by Drive (md5 undefined: not yet known). */
  setItemContent(id: string, c: { size: number; md5: string | undefined; headRev: string | undefined; modifiedMs: number }): void {
    this.st.setItemContent.run(c.size, c.md5 ?? null, c.headRev ?? null, c.modifiedMs, id);
  }

  setItemCreated(id: string, createdMs: number): void {
    this.db.prepare('UPDATE items SET created_ms = ? WHERE id = ?').run(createdMs, id);
  }

  /** Makes what is committed reach the disk (fsync): the log is checkpointed into the database file, both synced. */
  checkpoint(): void {
    this.db.pragma('wal_checkpoint(FULL)');
  }

  // ---- dupes ---------------------------------------------------------------------------

  /** Files shown in the view sharing md5 and size with another shown file, grouped. */
  duplicateFiles(): Array<{ md5: string; size: number; items: Array<{ id: string; ino: number; createdMs: number; modifiedMs: number }> }> {
    const rows = this.db.prepare(`
      SELECT i.md5 AS md5, i.size AS size, i.id AS id, d.ino AS ino, i.created_ms AS created, i.modified_ms AS modified
      FROM items i JOIN dirents d ON d.item = i.id AND d.kind = 1
      WHERE i.md5 IS NOT NULL AND i.mime NOT LIKE '${GOOGLE_PREFIX}%' AND (i.md5, i.size) IN (
        SELECT md5, size FROM items WHERE md5 IS NOT NULL AND mime NOT LIKE '${GOOGLE_PREFIX}%' GROUP BY md5, size HAVING count(*) > 1)
      ORDER BY i.md5, i.size, i.created_ms, i.id`).all() as Array<{ md5: string; size: number; id: string; ino: number; created: number; modified: number }>;
    const out: Array<{ md5: string; size: number; items: Array<{ id: string; ino: number; createdMs: number; modifiedMs: number }> }> = [];
    for (const r of rows) {
      let g = out[out.length - 1];
      if (!g || g.md5 !== r.md5 || g.size !== r.size) out.push((g = { md5: r.md5, size: r.size, items: [] }));
      g.items.push({ id: r.id, ino: r.ino, createdMs: r.created, modifiedMs: r.modified });
    }
    return out.filter((g) => g.items.length > 1);
  }

  /** Directories shown merged from several Drive folders: the folders, with their child counts. */
  mergedFolders(): Array<{ ino: number; folders: Array<{ id: string; createdMs: number; children: number }> }> {
    const rows = this.db.prepare(`
      SELECT f.dir_ino AS ino, f.id AS id, f.created_ms AS created, (SELECT count(*) FROM items c WHERE c.parent = f.id) AS children
      FROM items f WHERE f.mime = '${FOLDER_MIME}' AND f.dir_ino IN (
        SELECT dir_ino FROM items WHERE dir_ino IS NOT NULL AND mime = '${FOLDER_MIME}' GROUP BY dir_ino HAVING count(*) > 1)
      ORDER BY f.dir_ino, f.created_ms, f.id`).all() as Array<{ ino: number; id: string; created: number; children: number }>;
    const out: Array<{ ino: number; folders: Array<{ id: string; createdMs: number; children: number }> }> = [];
    for (const r of rows) {
      let g = out[out.length - 1];
      if (!g || g.ino !== r.ino) out.push((g = { ino: r.ino, folders: [] }));
      g.folders.push({ id: r.id, createdMs: r.created, children: r.children });
    }
    return out;
  }

  childIds(folderId: string): string[] {
    return (this.db.prepare('SELECT id FROM items WHERE parent = ?').all(folderId) as { id: string }[]).map((r) => r.id);
  }

  // ---- chunk cache index ---------------------------------------------------------------

  chunkBytes(): { chunks: number; bytes: number } {
    return this.db.prepare('SELECT count(*) AS chunks, coalesce(sum(bytes), 0) AS bytes FROM chunks').get() as { chunks: number; bytes: number };
  }

  chunkSizeOf(key: string): number | undefined {
    return this.st.chunkBytes.get(key)?.bytes;
  }

  hasChunk(key: string): boolean {
    return this.st.chunkBytes.get(key) !== undefined;
  }

  addChunk(key: string, bytes: number, used: number): void {
    this.st.addChunk.run(key, bytes, used);
  }

  touchChunks(uses: Array<[string, number]>): void {
    this.transaction(() => {
      for (const [key, used] of uses) this.st.touchChunk.run(used, key);
    });
  }

  /** The least recently used chunks, oldest first. */
  oldestChunks(limit: number): Array<{ key: string; bytes: number }> {
    return this.st.oldestChunks.all(limit);
  }

  removeChunk(key: string): void {
    this.st.removeChunk.run(key);
  }

  chunkKeysWithPrefix(prefix: string): string[] {
    return (this.db.prepare('SELECT key FROM chunks WHERE key >= ? AND key < ?').all(prefix, `${prefix}\uffff`) as { key: string }[]).map((r) => r.key);
  }
}

interface EntryRowRaw {
  ino: number;
  dir: number;
  name: Buffer;
  kind: number;
  item: string | null;
  size: number | null;
  md5: string | null;
  mime: string | null;
  modified_ms: number | null;
  created_ms: number | null;
  target: string | null;
}

function toEntry(r: EntryRowRaw): EntryRow {
  return {
    ino: r.ino,
    dir: r.dir,
    name: r.name,
    kind: KIND_OF[r.kind],
    item: r.item ?? undefined,
    size: r.size ?? 0,
    md5: r.md5 ?? undefined,
    mime: r.mime ?? undefined,
    modifiedMs: r.modified_ms ?? 0,
    createdMs: r.created_ms ?? 0,
    target: r.target ?? undefined,
  };
}
