import type Database from 'better-sqlite3';
import type { MetaClone, RefCount, SnapshotInfo, StagedClone, TreeOp } from './engine';
import { E, fail } from '../posix/errors';
import { ROOT_INO, S_IFDIR, isDir, type Timespec } from '../posix/file-system';
import type { InodeRow, MetaDb } from './meta-db';
import { newInode, sqlIsDir, sqlIsReg } from './meta-db';
import { checkName } from './name-rules';

/** Where the .snapshots directory's inode number is kept (volume_state). */
const SNAPSHOTS_DIR_KEY = 'snapshots-dir';
export const SNAPSHOTS_DIR_NAME = Buffer.from('.snapshots');

/**
 * MetaClone on the volume's SQLite database. A clone is a handful of INSERT ... SELECT
 * statements over a temporary map of old to new inode numbers (consecutive, from the
 * inode sequence on), so a tree of 100,000 files costs a few set operations, not a
 * statement per row.
 */
export class SqliteClone implements MetaClone {
  private readonly s;

  constructor(
    db: Database.Database,
    private readonly meta: MetaDb,
  ) {
    db.exec('CREATE TEMP TABLE IF NOT EXISTS clone_map (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)');
    this.s = {
      clearMap: db.prepare('DELETE FROM temp.clone_map'),
      // The next inode number AUTOINCREMENT would give (never one used before).
      nextIno: db.prepare(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'inodes'), 0), coalesce((SELECT max(ino) FROM inodes), 0)) + 1",
      ).pluck(),
      // Directories only have entries, so walking every entry reaches the whole tree; UNION
      // visits an inode with several names inside the tree once.
      map: db.prepare(
        `INSERT INTO temp.clone_map (old, new)
           WITH RECURSIVE tree(ino) AS (
             SELECT @src UNION SELECT d.ino FROM dentries d JOIN tree t ON d.parent = t.ino WHERE d.ino != @skip
           )
           SELECT ino, @first + row_number() OVER (ORDER BY ino) - 1 FROM tree`,
      ),
      newOf: db.prepare('SELECT new FROM temp.clone_map WHERE old = ?').pluck(),
      copyInodes: db.prepare(
        `INSERT INTO inodes (ino, mode, uid, gid, nlink, size, rdev, atime_s, atime_ns, mtime_s, mtime_ns, ctime_s, ctime_ns, stored_bytes)
           SELECT m.new, i.mode, i.uid, i.gid, 1, i.size, i.rdev, i.atime_s, i.atime_ns, i.mtime_s, i.mtime_ns, i.ctime_s, i.ctime_ns, i.stored_bytes
             FROM temp.clone_map m JOIN inodes i ON i.ino = m.old ORDER BY m.new`,
      ),
      copyEntries: db.prepare(
        'INSERT INTO dentries (parent, name, ino) SELECT p.new, d.name, c.new FROM temp.clone_map p JOIN dentries d ON d.parent = p.old JOIN temp.clone_map c ON c.old = d.ino',
      ),
      copySymlinks: db.prepare('INSERT INTO symlinks (ino, target) SELECT m.new, s.target FROM temp.clone_map m JOIN symlinks s ON s.ino = m.old'),
      copyXattrs: db.prepare('INSERT INTO xattrs (ino, name, value) SELECT m.new, x.name, x.value FROM temp.clone_map m JOIN xattrs x ON x.ino = m.old'),
      copyBlocks: db.prepare('INSERT INTO blocks (ino, idx, hash, len) SELECT m.new, b.idx, b.hash, b.len FROM temp.clone_map m JOIN blocks b ON b.ino = m.old'),
      // Link counts inside the copy: names of a non-directory in the tree (links from outside
      // are not copied), 2 plus subdirectories for a directory. The root counts the one
      // name linkClone gives it.
      linkCounts: db.prepare(
        `UPDATE inodes SET nlink = CASE
             WHEN ${sqlIsDir('mode')} THEN 2 + (SELECT count(*) FROM dentries d JOIN inodes c ON c.ino = d.ino WHERE d.parent = inodes.ino AND ${sqlIsDir('c.mode')})
             ELSE (SELECT count(*) FROM dentries d WHERE d.ino = inodes.ino) + (inodes.ino = @root)
           END
         WHERE ino BETWEEN @first AND @last`,
      ),
      record: db.prepare('INSERT INTO tree_ops (kind, first_ino, last_ino, created_ns) VALUES (?, ?, ?, ?) RETURNING id').pluck(),
      opExists: db.prepare('SELECT 1 FROM tree_ops WHERE id = ?').pluck(),
      dropOp: db.prepare('DELETE FROM tree_ops WHERE id = ?'),
      pending: db.prepare('SELECT id, kind, first_ino AS first, last_ino AS last FROM tree_ops ORDER BY id'),
      references: db.prepare('SELECT hash, count(*) AS n FROM blocks WHERE ino BETWEEN ? AND ? GROUP BY hash'),
      touchParent: db.prepare('UPDATE inodes SET nlink = nlink + ?, mtime_s = ?, mtime_ns = ?, ctime_s = ?, ctime_ns = ? WHERE ino = ? RETURNING mode'),
      addSnapshot: db.prepare('INSERT INTO snapshots (name, root, first_ino, last_ino, source, created_ns) VALUES (?, ?, ?, ?, ?, ?)'),
      getSnapshot: db.prepare('SELECT root, first_ino AS first, last_ino AS last FROM snapshots WHERE name = ?'),
      deleteSnapshot: db.prepare('DELETE FROM snapshots WHERE name = ?'),
      listSnapshots: db.prepare(
        `SELECT name, root, first_ino AS first, last_ino AS last, source, created_ns AS createdNs,
                (SELECT count(*) FROM inodes i WHERE i.ino BETWEEN s.first_ino AND s.last_ino AND ${sqlIsReg('i.mode')}) AS files,
                (SELECT coalesce(sum(u.len), 0) FROM (SELECT hash, max(len) AS len FROM blocks WHERE ino BETWEEN s.first_ino AND s.last_ino GROUP BY hash) u
                  WHERE NOT EXISTS (SELECT 1 FROM blocks o WHERE o.hash = u.hash AND (o.ino < s.first_ino OR o.ino > s.last_ino))) AS exclusiveBytes
           FROM snapshots s ORDER BY created_ns, name`,
      ),
      ranges: db.prepare('SELECT first_ino AS first, last_ino AS last FROM snapshots'),
      dropBlocks: db.prepare('DELETE FROM blocks WHERE ino BETWEEN ? AND ?'),
      dropSymlinks: db.prepare('DELETE FROM symlinks WHERE ino BETWEEN ? AND ?'),
      dropXattrs: db.prepare('DELETE FROM xattrs WHERE ino BETWEEN ? AND ?'),
      dropEntries: db.prepare('DELETE FROM dentries WHERE parent BETWEEN ? AND ?'),
      dropPins: db.prepare('DELETE FROM pins WHERE ino BETWEEN ? AND ?'),
      dropInodes: db.prepare('DELETE FROM inodes WHERE ino BETWEEN ? AND ?'),
      getState: db.prepare('SELECT value FROM volume_state WHERE key = ?').pluck(),
      setState: db.prepare('INSERT OR REPLACE INTO volume_state (key, value) VALUES (?, ?)'),
    };
  }

  stageClone(src: number, exclude: readonly number[], t: Timespec): StagedClone {
    if (exclude.length > 1) throw new Error('stageClone skips at most one inode');
    return this.meta.writeTransaction(() => {
      if (!this.meta.getInode(src) || exclude.includes(src)) fail(E.ENOENT);
      this.s.clearMap.run();
      const first = this.s.nextIno.get() as number;
      const inodes = this.s.map.run({ src, skip: exclude[0] ?? -1, first }).changes;
      const last = first + inodes - 1;
      const root = this.s.newOf.get(src) as number;
      this.s.copyInodes.run();
      this.s.copyEntries.run();
      this.s.copySymlinks.run();
      this.s.copyXattrs.run();
      this.s.copyBlocks.run();
      this.s.linkCounts.run({ first, last, root });
      this.s.clearMap.run();
      const id = this.s.record.get('clone', first, last, nanoseconds(t)) as number;
      return { id, kind: 'clone', first, last, root, inodes };
    });
  }

  rangeReferences(first: number, last: number): RefCount[] {
    return this.s.references.all(first, last) as RefCount[];
  }

  linkClone(op: StagedClone, parent: number, name: Buffer, t: Timespec, snapshot?: { name: Buffer; source: string }): InodeRow {
    checkName(name);
    return this.meta.writeTransaction(() => {
      if (this.s.opExists.get(op.id) === undefined) throw new Error(`tree operation ${op.id} is not under way`);
      const root = this.meta.getInode(op.root);
      if (!root) throw new Error(`the staged clone's root ${op.root} is missing`);
      const dir = this.s.touchParent.get(isDir(root.mode) ? 1 : 0, t.s, t.ns, t.s, t.ns, parent) as { mode: number } | undefined;
      if (!dir) fail(E.ENOENT);
      if (!isDir(dir.mode)) fail(E.ENOTDIR);
      if (this.meta.lookup(parent, name) !== undefined) fail(E.EEXIST);
      this.meta.addEntry(parent, name, op.root);
      this.s.dropOp.run(op.id);
      if (snapshot) this.s.addSnapshot.run(snapshot.name, op.root, op.first, op.last, snapshot.source, nanoseconds(t));
      return root;
    });
  }

  detachSnapshot(name: Buffer, t: Timespec): TreeOp {
    checkName(name);
    return this.meta.writeTransaction(() => {
      const snap = this.s.getSnapshot.get(name) as { root: number; first: number; last: number } | undefined;
      const dir = this.snapshotsDir();
      if (!snap || dir === undefined) fail(E.ENOENT);
      this.meta.removeEntry(dir, name);
      this.s.touchParent.run(-1, t.s, t.ns, t.s, t.ns, dir);
      this.s.deleteSnapshot.run(name);
      const id = this.s.record.get('remove', snap.first, snap.last, nanoseconds(t)) as number;
      return { id, kind: 'remove', first: snap.first, last: snap.last };
    });
  }

  dropRange(op: TreeOp): void {
    this.meta.writeTransaction(() => {
      const range = [op.first, op.last];
      this.s.dropBlocks.run(...range);
      this.s.dropSymlinks.run(...range);
      this.s.dropXattrs.run(...range);
      this.s.dropEntries.run(...range);
      this.s.dropPins.run(...range);
      this.s.dropInodes.run(...range);
      this.s.dropOp.run(op.id);
    });
  }

  pendingTreeOps(): TreeOp[] {
    return this.s.pending.all() as TreeOp[];
  }

  snapshotsDir(create?: { t: Timespec }): number | undefined {
    const kept = this.s.getState.get(SNAPSHOTS_DIR_KEY) as string | undefined;
    const ino = kept === undefined ? undefined : Number(kept);
    if (ino !== undefined && this.meta.lookup(ROOT_INO, SNAPSHOTS_DIR_NAME) === ino) return ino;
    if (!create) return undefined;
    const t = create.t;
    return this.meta.writeTransaction(() => {
      if (this.meta.lookup(ROOT_INO, SNAPSHOTS_DIR_NAME) !== undefined) fail(E.EEXIST);
      const root = this.meta.getInode(ROOT_INO);
      if (!root) fail(E.ENOENT);
      const made = this.meta.insertInode(newInode({ mode: S_IFDIR | 0o555, uid: root.uid, gid: root.gid, nlink: 2 }, t));
      this.meta.addEntry(ROOT_INO, SNAPSHOTS_DIR_NAME, made);
      this.s.touchParent.run(1, t.s, t.ns, t.s, t.ns, ROOT_INO);
      this.s.setState.run(SNAPSHOTS_DIR_KEY, String(made));
      return made;
    });
  }

  snapshots(): SnapshotInfo[] {
    return (this.s.listSnapshots.safeIntegers(false).all() as SnapshotInfo[]).map((r) => ({ ...r, createdNs: Number(r.createdNs) }));
  }

  snapshotRanges(): { first: number; last: number }[] {
    return this.s.ranges.all() as { first: number; last: number }[];
  }
}

function nanoseconds(t: Timespec): bigint {
  return BigInt(t.s) * 1000000000n + BigInt(t.ns);
}
