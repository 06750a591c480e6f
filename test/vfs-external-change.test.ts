/**
 * PogFs.externalChange, without the kernel: changes written to the engine behind the
 * filesystem's back (as another client of a shared engine writes them) stay unseen through
 * PogFs's read copies until the change is handed in; then the copies go, and what the
 * kernel must forget comes back (only what it can hold). An open file keeps its version
 * until it is opened again; an open directory listing is taken anew from its start.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Invalidation } from '../src/posix/file-system';
import { ROOT_INO, S_IFDIR, S_IFREG } from '../src/posix/file-system';
import { PogFs } from '../src/vfs/filesystem';
import { Volume } from '../src/vfs/volume';
import { b, quietLog, root } from './support/fs';
import { tempDir } from './support/tmp';

const O_RDWR = 2;
const t0 = { s: 2000, ns: 0 };

/** A volume and its filesystem; `forgotten` collects what the filesystem asks the kernel to forget itself. */
function newFs(): { fs: PogFs; volume: Volume; forgotten: Invalidation[]; close(): Promise<void> } {
  const volume = Volume.create(join(tempDir(), 'vol'), {});
  const forgotten: Invalidation[] = [];
  const fs = new PogFs(
    volume,
    {
      syncOnClose: false,
      commitIntervalMs: 5000,
      metadataCommitMs: 0,
      forgetInKernel: async (inval) => {
        forgotten.push(inval);
      },
    },
    quietLog,
  );
  return {
    fs,
    volume,
    forgotten,
    async close() {
      await fs.shutdown();
      await volume.close();
    },
  };
}

const names = (entries: Array<[number, Buffer]>): string[] => entries.map(([p, n]) => `${p}/${n.toString()}`).sort();

describe('PogFs.externalChange', () => {
  it('drops the read copy of the attributes; names only what the kernel can hold', async () => {
    const t = newFs();
    try {
      const f = await t.fs.mknod(ROOT_INO, b('f'), S_IFREG | 0o644, 0, root);
      const ino = f.attr.ino;
      assert.equal((await t.fs.getattr(ino)).mode & 0o777, 0o644);
      await t.volume.engine.setattr(ino, { mode: 0o600, uid: 55 });
      assert.equal((await t.fs.getattr(ino)).mode & 0o777, 0o644, 'a read copy: the change behind its back is not seen');
      const stranger = await t.volume.engine.mknod(ROOT_INO, b('unseen'), { mode: S_IFDIR | 0o755, uid: 0, gid: 0 }, t0);

      const inval = await t.fs.externalChange({
        kind: 'names',
        inodes: [ino, ROOT_INO, stranger.ino],
        entries: [
          [ROOT_INO, b('unseen')],
          [stranger.ino, b('inside')],
        ],
      });
      assert.deepEqual([...inval.inodes].sort(), [ROOT_INO, ino].sort(), 'an inode the kernel never looked up is not named');
      assert.deepEqual(names(inval.entries), [`${ROOT_INO}/unseen`], 'nor names in a directory it does not know');
      const attr = await t.fs.getattr(ino);
      assert.equal(attr.mode & 0o777, 0o600);
      assert.equal(attr.uid, 55);
    } finally {
      await t.close();
    }
  });

  it('an open file keeps the version it opened until it is opened again; then the kernel is told to forget it', async () => {
    const t = newFs();
    try {
      const c = await t.fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
      const ino = c.attr.ino;
      t.fs.write(ino, c.fh, b('the old version'), 0, root);
      await t.fs.flush(ino, c.fh);
      t.fs.release(ino, c.fh);
      const o = await t.fs.open(ino, 0, root);
      assert.equal((await t.fs.read(ino, o.fh, 100, 0)).toString(), 'the old version');
      // Another client truncates it.
      const rows = await t.volume.engine.blocks(ino);
      await t.volume.engine.commitContent([{ ino, rows: new Map(rows.map((r) => [r.idx, undefined])), size: 0, storedBytes: 0 }]);
      const inval = await t.fs.externalChange({ kind: 'names', inodes: [ino], entries: [] });
      assert.deepEqual(inval.inodes, [ino]);
      assert.equal((await t.fs.read(ino, o.fh, 100, 0)).toString(), 'the old version', 'the open handle reads on');
      assert.equal((await t.fs.getattr(ino)).size, 15);
      assert.deepEqual(t.forgotten, []);

      const again = await t.fs.open(ino, 0, root);
      assert.equal((await t.fs.read(ino, again.fh, 100, 0)).length, 0, 'opened again: the new version');
      assert.equal((await t.fs.getattr(ino)).size, 0);
      assert.equal((await t.fs.read(ino, o.fh, 100, 0)).length, 0, 'for every handle from then on');
      assert.deepEqual(t.forgotten, [{ entries: [], inodes: [ino] }], 'the kernel forgets the old size and pages');
      t.fs.release(ino, o.fh);
      t.fs.release(ino, again.fh);
    } finally {
      await t.close();
    }
  });

  it('a file with writes of its own not yet committed keeps them', async () => {
    const t = newFs();
    try {
      const c = await t.fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
      const ino = c.attr.ino;
      t.fs.write(ino, c.fh, b('mine'), 0, root);
      await t.fs.externalChange({ kind: 'names', inodes: [ino], entries: [] });
      const again = await t.fs.open(ino, 0, root);
      assert.equal((await t.fs.read(ino, again.fh, 100, 0)).toString(), 'mine');
      assert.deepEqual(t.forgotten, []);
      t.fs.release(ino, again.fh);
      await t.fs.flush(ino, c.fh);
      t.fs.release(ino, c.fh);
    } finally {
      await t.close();
    }
  });

  it('an open directory listing is taken anew from its start, not in the middle', async () => {
    const t = newFs();
    try {
      await t.fs.mknod(ROOT_INO, b('a'), S_IFREG | 0o644, 0, root);
      const d = await t.fs.opendir(ROOT_INO);
      const listed = (offset: number): string[] => t.fs.readdir(ROOT_INO, d.fh, offset, 100).map((e) => e.name.toString());
      assert.deepEqual(listed(0), ['.', '..', 'a']);
      await t.volume.engine.mknod(ROOT_INO, b('b'), { mode: S_IFREG | 0o644, uid: 0, gid: 0 }, t0);
      await t.fs.externalChange({ kind: 'names', inodes: [ROOT_INO], entries: [[ROOT_INO, b('b')]] });
      assert.deepEqual(listed(2), ['a'], 'a read in the middle goes on with the listing it began');
      assert.deepEqual(listed(0), ['.', '..', 'a', 'b']);
      t.fs.releasedir(ROOT_INO, d.fh);
    } finally {
      await t.close();
    }
  });

  it('"everything": every inode the kernel knows, and every name in the directories among them', async () => {
    const t = newFs();
    try {
      const d = await t.fs.mkdir(ROOT_INO, b('d'), 0o755, root);
      const f = await t.fs.mknod(d.attr.ino, b('f'), S_IFREG | 0o644, 0, root);
      await t.volume.engine.mknod(d.attr.ino, b('new'), { mode: S_IFREG | 0o644, uid: 0, gid: 0 }, t0);
      await t.volume.engine.setattr(f.attr.ino, { mode: 0o640 });
      const inval = await t.fs.externalChange({ kind: 'everything', reason: 'test' });
      assert.deepEqual([...inval.inodes].sort(), [ROOT_INO, d.attr.ino, f.attr.ino].sort());
      assert.deepEqual(names(inval.entries), [`${ROOT_INO}/d`, `${d.attr.ino}/f`, `${d.attr.ino}/new`].sort());
      assert.equal((await t.fs.getattr(f.attr.ino)).mode & 0o777, 0o640);
    } finally {
      await t.close();
    }
  });
});
