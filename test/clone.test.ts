import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { describe, it } from 'node:test';
import { runFsck } from '../src/cli/fsck-command';
import { SNAPSHOTS_DIR_NAME } from '../src/meta/tree-clone';
import { ROOT_INO } from '../src/vfs/filesystem';
import { now } from '../src/vfs/time';
import { b, newFs, root, type TestFs } from './support/fs';
import { errno } from './support/errno';

/**
 * Clones and snapshot removals stopped after each of their steps, as a crash would stop
 * them: the next open finishes or undoes them, and fsck finds nothing (every reference
 * count exactly the rows that reference the block, no orphan).
 */

const E = constants.errno;
const O_RDWR = 2;
const B = 128 * 1024;

/** A small tree: dir/{a (3 blocks), sub/b (1 short block), sub/a-link (hard link to a)}. */
async function makeTree(t: TestFs): Promise<{ dir: number; a: Buffer }> {
  const fs = t.fs;
  const dir = (await fs.mkdir(ROOT_INO, b('dir'), 0o755, root)).attr.ino;
  const sub = (await fs.mkdir(dir, b('sub'), 0o755, root)).attr.ino;
  const a = randomBytes(3 * B);
  const fa = await fs.create(dir, b('a'), 0o644, O_RDWR, root);
  await fs.write(fa.attr.ino, fa.fh, a, 0, root);
  fs.release(fa.attr.ino, fa.fh, 0);
  const fb = await fs.create(sub, b('b'), 0o644, O_RDWR, root);
  await fs.write(fb.attr.ino, fb.fh, b('short'), 0, root);
  fs.release(fb.attr.ino, fb.fh, 0);
  await fs.link(fa.attr.ino, sub, b('a-link'), root);
  // Committed, and the blocks parked by the closes moved into the store (as a clone does first).
  await fs.quiesceForGc();
  return { dir, a };
}

async function fsckKinds(t: TestFs): Promise<string[]> {
  await t.close();
  const report = await runFsck(t.path, {});
  return report.findings.filter((f) => f.count > 0).map((f) => `${f.kind}: ${f.examples.join('; ')}`);
}


describe('clone steps cut off by a crash', () => {
  // How far the clone got: staged (rows, no references), referenced (mark set), linked (named, mark still set).
  for (const stop of ['staged', 'referenced', 'linked'] as const) {
    it(`stopped once ${stop}: the next open ${stop === 'linked' ? 'keeps the clone' : 'leaves no trace of it'}, and fsck is clean`, async () => {
      let t = newFs();
      const { dir, a } = await makeTree(t);
      const meta = t.volume.meta.clone;
      const op = meta.stageClone(dir, [], now());
      t.volume.meta.barrier();
      if (stop !== 'staged') t.volume.store.changeReferencesMarked(op.id, 1, meta.rangeReferences(op.first, op.last), true);
      if (stop === 'linked') meta.linkClone(op, ROOT_INO, b('copy'), now());
      t = await t.reopen();
      assert.equal(t.fs.finishTreeOps(), stop === 'linked' ? 0 : 1);
      assert.deepEqual(t.volume.meta.clone.pendingTreeOps(), []);
      assert.deepEqual(t.volume.store.treeOpMarks(), []);
      if (stop === 'linked') {
        const copy = await t.fs.lookup(ROOT_INO, b('copy'));
        const sub = await t.fs.lookup(copy.attr.ino, b('sub'));
        const link = await t.fs.lookup(sub.attr.ino, b('a-link'));
        const o = await t.fs.open(link.attr.ino, 0, root);
        assert.deepEqual(await t.fs.read(link.attr.ino, o.fh, 4 * B, 0), a);
        t.fs.release(link.attr.ino, o.fh, 0);
        assert.equal(link.attr.nlink, 2);
      } else {
        assert.equal(await errno(() => t.fs.lookup(ROOT_INO, b('copy'))), E.ENOENT);
        assert.equal(t.volume.meta.totals().inodes, 5, 'root, dir, sub, a, b: the staged rows are gone');
      }
      assert.deepEqual(await fsckKinds(t), []);
    });
  }

  it('a clone whose name is taken gives back what it took (EEXIST, nothing left); one of a file just closed takes its parked blocks', async () => {
    const t = newFs();
    const { dir } = await makeTree(t);
    await t.fs.mkdir(ROOT_INO, b('taken'), 0o755, root);
    const blocks = t.volume.store.stats();
    // A file closed just now: its blocks are parked in the metadata, not in the store yet.
    const fresh = await t.fs.create(dir, b('fresh'), 0o644, O_RDWR, root);
    await t.fs.write(fresh.attr.ino, fresh.fh, randomBytes(B), 0, root);
    t.fs.release(fresh.attr.ino, fresh.fh, 0);
    assert.equal(await errno(() => t.fs.clone('dir', 'taken')), E.EEXIST);
    assert.equal(await errno(() => t.fs.clone('dir', 'dir/sub/inside')), undefined, 'a clone into its own tree copies the tree as it was');
    assert.equal(await errno(() => t.fs.clone('dir', '')), E.EEXIST);
    assert.ok(dir > 0);
    const after = t.volume.store.stats();
    assert.equal(after.blocks, blocks.blocks + 1, 'only the fresh file\'s block is new');
    assert.deepEqual(await fsckKinds(t), []);
  });
});

describe('snapshot removal cut off by a crash', () => {
  for (const stop of ['detached', 'released'] as const) {
    it(`stopped once ${stop}: the next open finishes the removal, and fsck is clean`, async () => {
      let t = newFs();
      await makeTree(t);
      await t.fs.createSnapshot('s');
      // The live file changes: the snapshot alone holds the old blocks.
      const a = await t.fs.lookup((await t.fs.lookup(ROOT_INO, b('dir'))).attr.ino, b('a'));
      const o = await t.fs.open(a.attr.ino, O_RDWR, root);
      await t.fs.write(a.attr.ino, o.fh, randomBytes(3 * B), 0, root);
      t.fs.release(a.attr.ino, o.fh, 0);
      await t.fs.quiesceForGc();
      const held = t.volume.store.stats();
      const meta = t.volume.meta.clone;
      assert.equal(meta.snapshots()[0].exclusiveBytes, 3 * B);
      const op = meta.detachSnapshot(b('s'), now());
      t.volume.meta.barrier();
      if (stop === 'released') t.volume.store.changeReferencesMarked(op.id, -1, meta.rangeReferences(op.first, op.last), true);
      t = await t.reopen();
      assert.equal(t.fs.finishTreeOps(), 1);
      assert.deepEqual(t.volume.meta.clone.snapshots(), []);
      assert.equal(held.blocks - t.volume.store.stats().blocks, 3, 'the three blocks only the snapshot held are gone');
      const dir = await t.fs.lookup(ROOT_INO, SNAPSHOTS_DIR_NAME);
      assert.equal(await errno(() => t.fs.lookup(dir.attr.ino, b('s'))), E.ENOENT);
      assert.deepEqual(await fsckKinds(t), []);
    });
  }

  it('fsck reports a removal left under way, and --repair finishes it', async () => {
    const t = newFs();
    await makeTree(t);
    await t.fs.createSnapshot('s');
    const meta = t.volume.meta.clone;
    meta.detachSnapshot(b('s'), now());
    t.volume.meta.barrier();
    await t.close();
    const found = await runFsck(t.path, {});
    assert.ok(found.findings.some((f) => f.kind === 'unfinished-tree-op' && f.count === 1));
    const repaired = await runFsck(t.path, { repair: true });
    assert.equal(repaired.findings.find((f) => f.kind === 'unfinished-tree-op')?.repaired, 1);
    const clean = await runFsck(t.path, {});
    assert.deepEqual(clean.findings.filter((f) => f.count > 0), []);
  });
});
