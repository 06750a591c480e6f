import type { MetaClone, StagedClone, Timespec, TreeOp } from '../meta/engine';
import type { InodeRow } from '../meta/meta-db';
import type { BlockStore } from '../store/block-store';

/**
 * Clones and snapshot removals: whole trees copied or released in the metadata, with the
 * block references they hold taken or dropped in the block store, and never a reference
 * count that is wrong after a crash.
 *
 * The metadata (SQLite) and the counts (LMDB) cannot commit together, so each operation
 * is a row of tree_ops (SQLite) plus a mark (LMDB) set or cleared in the same LMDB
 * transaction as the counts change; together they say how far it got.
 *
 * A clone:
 *   1. stages the copy: new rows in a fresh inode range that nothing names, and a
 *      tree_ops row, made durable. (Rows that nothing names break no reference: their
 *      blocks are referenced by the source's rows.)
 *   2. takes the range's references, setting the mark (one durable LMDB transaction);
 *   3. names the copy's root and deletes the tree_ops row (one transaction), made durable;
 *   4. clears the mark.
 * A removal (of a snapshot):
 *   1. takes the snapshot's name away and records its range in tree_ops, made durable
 *      (invariant 1: references go only after the rows that held them are released);
 *   2. drops the range's references, setting the mark;
 *   3. deletes the range's rows and the tree_ops row, made durable;
 *   4. clears the mark.
 * `finishPending` (at mount, and by fsck --repair) reads the two together: a clone with
 * its mark took its references, so it gives them back and its rows go; without the mark
 * only its rows go. A removal without its mark still drops its references; with it, only
 * its rows go. A mark with no tree_ops row left is a finished operation's: it is cleared.
 * So a crash anywhere leaves the whole clone or none of it, the snapshot or none of it,
 * and every count exactly the number of rows that reference the block.
 */
export class TreeOps {
  constructor(
    private readonly meta: MetaClone,
    /** Makes every metadata change so far durable. */
    private readonly barrier: () => void,
    private readonly store: BlockStore,
  ) {}

  /**
   * Copies the tree at `src` (skipping `exclude`) as `name` in `parent`; EEXIST and the
   * rest as linkClone says, with nothing left behind. Synchronous: no other change to the
   * metadata or to the counts of this process can come between the steps.
   */
  clone(src: number, exclude: readonly number[], parent: number, name: Buffer, t: Timespec, snapshot?: { name: Buffer; source: string }): { root: InodeRow; inodes: number } {
    const op = this.meta.stageClone(src, exclude, t);
    this.barrier();
    try {
      this.store.changeReferencesMarked(op.id, 1, this.meta.rangeReferences(op.first, op.last), true);
    } catch (err) {
      this.meta.dropRange(op);
      throw err;
    }
    let root: InodeRow;
    try {
      root = this.meta.linkClone(op, parent, name, t, snapshot);
    } catch (err) {
      this.abandonClone(op);
      throw err;
    }
    this.barrier();
    this.store.clearTreeOpMark(op.id);
    return { root, inodes: op.inodes };
  }

  /** Releases a snapshot: its name goes now, its references and rows at once after. ENOENT. */
  async removeSnapshot(name: Buffer, t: Timespec, beforeRelease: () => Promise<void>): Promise<TreeOp> {
    const op = this.meta.detachSnapshot(name, t);
    this.barrier();
    await beforeRelease();
    this.finishRemoval(op);
    return op;
  }

  /** Finishes or undoes what a crash left under way; returns how many operations there were. */
  finishPending(): number {
    const ops = this.meta.pendingTreeOps();
    for (const op of ops) {
      if (op.kind === 'clone') this.abandonClone(op);
      else this.finishRemoval(op);
    }
    const open = new Set(this.meta.pendingTreeOps().map((op) => op.id));
    for (const id of this.store.treeOpMarks()) if (!open.has(id)) this.store.clearTreeOpMark(id);
    return ops.length;
  }

  /** A staged clone that will not be named: its references (if taken) and its rows go. */
  private abandonClone(op: TreeOp | StagedClone): void {
    if (this.store.hasTreeOpMark(op.id)) this.store.changeReferencesMarked(op.id, -1, this.meta.rangeReferences(op.first, op.last), false);
    this.meta.dropRange(op);
    this.barrier();
  }

  private finishRemoval(op: TreeOp): void {
    if (!this.store.hasTreeOpMark(op.id)) this.store.changeReferencesMarked(op.id, -1, this.meta.rangeReferences(op.first, op.last), true);
    this.meta.dropRange(op);
    this.barrier();
    this.store.clearTreeOpMark(op.id);
  }
}
