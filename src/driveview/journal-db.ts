/**
 * The writable view's journal, in the mirror database (one SQLite file, one connection, so
 * a local change and its journal entry commit together): the operations still to do on
 * Drive in the order they were made, the staged files (written here, content not yet on
 * Drive), the resumable upload sessions opened for pending uploads (so one cut off by a
 * crash goes on where it stopped), and the modes and owners kept locally (Drive has none).
 *
 * All of this module's SQL is here; the mirror's own tables are in mirror-db.ts.
 */
import type Database from 'better-sqlite3';

export type PendingKind = 'mkdir' | 'upload' | 'move' | 'trash' | 'mtime';

/** One operation to do on Drive. */
export interface PendingOp {
  seq: number;
  kind: PendingKind;
  /** The item it acts on: a local id (LOCAL_ID_PREFIX) until Drive created it. */
  item: string;
  /** mkdir, a new file's upload: the folder it goes in; move: the new folder. */
  parent: string | undefined;
  /** move: the folder it leaves. */
  oldParent: string | undefined;
  /** mkdir, a new file's upload, move: the Drive name. */
  name: string | undefined;
  /** mkdir, upload, mtime: the modification time to give Drive. */
  modifiedMs: number | undefined;
  /** A create's mark on Drive (appProperties), so a create that happened before a crash is found, not repeated. */
  opKey: string;
  /** A create was sent at least once (it may exist on Drive). */
  attempted: boolean;
}

export interface StagedRow {
  item: string;
  /** The file's name in the staging directory. */
  file: string;
}

/** A resumable session opened for an upload, and the exact bytes it is for (it resumes only for those). */
export interface UploadSessionRow {
  uri: string;
  size: number;
  md5: string;
}

export interface LocalAttrs {
  mode: number | undefined;
  uid: number | undefined;
  gid: number | undefined;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS pending_ops (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  item TEXT NOT NULL,
  parent TEXT,
  old_parent TEXT,
  name TEXT,
  modified_ms INTEGER,
  op_key TEXT NOT NULL,
  attempted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pending_ops_item ON pending_ops(item);
CREATE TABLE IF NOT EXISTS staged (item TEXT PRIMARY KEY, file TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS upload_sessions (seq INTEGER PRIMARY KEY, uri TEXT NOT NULL, size INTEGER NOT NULL, md5 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS local_attrs (item TEXT PRIMARY KEY, mode INTEGER, uid INTEGER, gid INTEGER);
`;

interface OpRow {
  seq: number;
  kind: string;
  item: string;
  parent: string | null;
  old_parent: string | null;
  name: string | null;
  modified_ms: number | null;
  op_key: string;
  attempted: number;
}

function toOp(r: OpRow): PendingOp {
  return {
    seq: r.seq,
    kind: r.kind as PendingKind,
    item: r.item,
    parent: r.parent ?? undefined,
    oldParent: r.old_parent ?? undefined,
    name: r.name ?? undefined,
    modifiedMs: r.modified_ms ?? undefined,
    opKey: r.op_key,
    attempted: r.attempted !== 0,
  };
}

/** Operations a writable mount left pending, read without creating the journal (0 when there is none). */
export function countPendingOps(db: Database.Database): number {
  const table = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'pending_ops'").get();
  return table ? (db.prepare('SELECT count(*) AS n FROM pending_ops').get() as { n: number }).n : 0;
}

export class JournalDb {
  private readonly st: {
    add: Database.Statement<unknown[]>;
    all: Database.Statement<[], OpRow>;
    forItem: Database.Statement<[string], OpRow>;
    referencing: Database.Statement<[string, string], { n: number }>;
    remove: Database.Statement<[number]>;
    removeItem: Database.Statement<[string]>;
    attempted: Database.Statement<[number]>;
    staged: Database.Statement<[string], { file: string }>;
    allStaged: Database.Statement<[], StagedRow>;
    stage: Database.Statement<[string, string]>;
    unstage: Database.Statement<[string]>;
    attrs: Database.Statement<[string], { mode: number | null; uid: number | null; gid: number | null }>;
    session: Database.Statement<[number], UploadSessionRow>;
    setSession: Database.Statement<[number, string, number, string]>;
    dropSession: Database.Statement<[number]>;
    dropOrphanSessions: Database.Statement<[]>;
  };

  constructor(private readonly db: Database.Database) {
    db.exec(SCHEMA);
    this.st = {
      add: db.prepare('INSERT INTO pending_ops (kind, item, parent, old_parent, name, modified_ms, op_key) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      all: db.prepare('SELECT * FROM pending_ops ORDER BY seq'),
      forItem: db.prepare('SELECT * FROM pending_ops WHERE item = ? ORDER BY seq'),
      referencing: db.prepare('SELECT count(*) AS n FROM pending_ops WHERE parent = ? OR old_parent = ?'),
      remove: db.prepare('DELETE FROM pending_ops WHERE seq = ?'),
      removeItem: db.prepare('DELETE FROM pending_ops WHERE item = ?'),
      attempted: db.prepare('UPDATE pending_ops SET attempted = 1 WHERE seq = ?'),
      staged: db.prepare('SELECT file FROM staged WHERE item = ?'),
      allStaged: db.prepare('SELECT item, file FROM staged'),
      stage: db.prepare('INSERT INTO staged (item, file) VALUES (?, ?) ON CONFLICT(item) DO UPDATE SET file = excluded.file'),
      unstage: db.prepare('DELETE FROM staged WHERE item = ?'),
      attrs: db.prepare('SELECT mode, uid, gid FROM local_attrs WHERE item = ?'),
      session: db.prepare('SELECT uri, size, md5 FROM upload_sessions WHERE seq = ?'),
      setSession: db.prepare('INSERT INTO upload_sessions (seq, uri, size, md5) VALUES (?, ?, ?, ?) ON CONFLICT(seq) DO UPDATE SET uri = excluded.uri, size = excluded.size, md5 = excluded.md5'),
      dropSession: db.prepare('DELETE FROM upload_sessions WHERE seq = ?'),
      dropOrphanSessions: db.prepare('DELETE FROM upload_sessions WHERE seq NOT IN (SELECT seq FROM pending_ops)'),
    };
    // Sessions of operations a crash finished without their own removal.
    this.st.dropOrphanSessions.run();
  }

  // ---- pending operations ----------------------------------------------------------------

  add(op: Omit<PendingOp, 'seq' | 'attempted'>): number {
    return Number(this.st.add.run(op.kind, op.item, op.parent ?? null, op.oldParent ?? null, op.name ?? null, op.modifiedMs ?? null, op.opKey).lastInsertRowid);
  }

  /** Every pending operation, oldest first. */
  pending(): PendingOp[] {
    return this.st.all.all().map(toOp);
  }

  pendingFor(item: string): PendingOp[] {
    return this.st.forItem.all(item).map(toOp);
  }

  hasPendingFor(item: string): boolean {
    return this.st.forItem.get(item) !== undefined;
  }

  /** Whether a pending operation puts something into, or takes something out of, this folder. */
  isReferencedAsFolder(item: string): boolean {
    return (this.st.referencing.get(item, item)?.n ?? 0) > 0;
  }

  done(seq: number): void {
    this.st.remove.run(seq);
    this.st.dropSession.run(seq);
  }

  /** Forgets every operation on an item (one made here and deleted before it reached Drive). */
  dropItem(item: string): void {
    this.st.removeItem.run(item);
    this.st.dropOrphanSessions.run();
  }

  /** Forgets an item's pending uploads (its local version became another item). */
  dropUploads(item: string): void {
    this.db.prepare("DELETE FROM pending_ops WHERE item = ? AND kind = 'upload'").run(item);
    this.st.dropOrphanSessions.run();
  }

  /**
   * An item made here and renamed or moved before its create ran: the create takes the new
   * name and folder (no rename on Drive, no `.part` name ever seen there). False when
   * there is no such create pending.
   */
  retargetCreate(item: string, folder: string, name: string): boolean {
    // Never one already sent: it may exist on Drive under the old name, where it is looked for.
    return this.db.prepare("UPDATE pending_ops SET parent = ?, name = ? WHERE item = ? AND kind IN ('mkdir', 'upload') AND parent IS NOT NULL AND attempted = 0").run(folder, name, item).changes > 0;
  }

  /** A create of an item made here goes into another folder (its own was deleted on Drive). */
  moveCreates(item: string, folder: string): void {
    this.db.prepare("UPDATE pending_ops SET parent = ? WHERE item = ? AND kind IN ('mkdir', 'upload') AND parent IS NOT NULL").run(folder, item);
    this.db.prepare("DELETE FROM pending_ops WHERE item = ? AND kind = 'move'").run(item);
  }

  markAttempted(seq: number): void {
    this.st.attempted.run(seq);
  }

  count(): number {
    return (this.db.prepare('SELECT count(*) AS n FROM pending_ops').get() as { n: number }).n;
  }

  /** Drive gave an item made here its id: every operation and record follows. */
  replaceItemId(oldId: string, newId: string): void {
    this.db.prepare('UPDATE pending_ops SET item = ? WHERE item = ?').run(newId, oldId);
    this.db.prepare('UPDATE pending_ops SET parent = ? WHERE parent = ?').run(newId, oldId);
    this.db.prepare('UPDATE pending_ops SET old_parent = ? WHERE old_parent = ?').run(newId, oldId);
    this.db.prepare('UPDATE staged SET item = ? WHERE item = ?').run(newId, oldId);
    this.db.prepare('UPDATE local_attrs SET item = ? WHERE item = ?').run(newId, oldId);
  }

  // ---- resumable upload sessions ---------------------------------------------------------

  /** The session an upload operation opened before (a restart), if any. */
  uploadSession(seq: number): UploadSessionRow | undefined {
    return this.st.session.get(seq);
  }

  /** Kept as soon as the session is opened: a crash after this resumes it. */
  setUploadSession(seq: number, s: UploadSessionRow): void {
    this.st.setSession.run(seq, s.uri, s.size, s.md5);
  }

  dropUploadSession(seq: number): void {
    this.st.dropSession.run(seq);
  }

  // ---- staged files ----------------------------------------------------------------------

  stagedFile(item: string): string | undefined {
    return this.st.staged.get(item)?.file;
  }

  allStaged(): StagedRow[] {
    return this.st.allStaged.all();
  }

  stage(item: string, file: string): void {
    this.st.stage.run(item, file);
  }

  unstage(item: string): void {
    this.st.unstage.run(item);
  }

  // ---- modes and owners kept locally -----------------------------------------------------

  attrs(item: string): LocalAttrs | undefined {
    const r = this.st.attrs.get(item);
    return r && { mode: r.mode ?? undefined, uid: r.uid ?? undefined, gid: r.gid ?? undefined };
  }

  setAttrs(item: string, a: LocalAttrs): void {
    this.db
      .prepare('INSERT INTO local_attrs (item, mode, uid, gid) VALUES (?, ?, ?, ?) ON CONFLICT(item) DO UPDATE SET mode = excluded.mode, uid = excluded.uid, gid = excluded.gid')
      .run(item, a.mode ?? null, a.uid ?? null, a.gid ?? null);
  }

  dropAttrs(item: string): void {
    this.db.prepare('DELETE FROM local_attrs WHERE item = ?').run(item);
  }
}
