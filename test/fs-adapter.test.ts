import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FsAdapter, attrChanges } from '../src/fuse/fs-adapter';
import { direntPlusSize, direntSize } from '../src/fuse/session';
import { SetAttrValid, type SetAttr } from '../src/fuse/types';
import { ROOT_INO } from '../src/posix/file-system';
import { b, newFs, root } from './support/fs';

const none: SetAttr = { valid: 0, mode: 0o7777, uid: 7, gid: 7, size: 99, atimeSec: 1, atimeNsec: 2, mtimeSec: 3, mtimeNsec: 4, ctimeSec: 5, ctimeNsec: 6 };

describe('FUSE adapter (in-process, over a volume)', () => {
  it("decodes setattr's valid bits into only the fields they name", () => {
    assert.deepEqual(attrChanges(none), {});
    assert.deepEqual(attrChanges({ ...none, valid: SetAttrValid.SIZE | SetAttrValid.GID }), { size: 99, gid: 7 });
    assert.deepEqual(attrChanges({ ...none, valid: SetAttrValid.ATIME | SetAttrValid.ATIME_NOW | SetAttrValid.MTIME }), {
      atime: 'now',
      mtime: { s: 3, ns: 4 },
    });
    assert.deepEqual(attrChanges({ ...none, valid: SetAttrValid.MODE | SetAttrValid.UID | SetAttrValid.CTIME }), { mode: 0o7777, uid: 7, ctime: { s: 5, ns: 6 } });
  });

  it('shapes replies: timeouts on entries, page-cache flags on opens, readdir sized to the buffer', async () => {
    const t = newFs();
    const adapter = new FsAdapter(t.fs, { entryTimeout: 17, attrTimeout: 19, keepCache: true, keepDirCache: false });
    const d = await adapter.mkdir(ROOT_INO, b('d'), 0o755, root);
    assert.equal(d.entryTimeout, 17);
    assert.equal(d.attrTimeout, 19);
    const c = await adapter.create(d.attr.ino, b('f'), 0o644, 2, root);
    assert.equal(c.keepCache, true);
    assert.equal(c.entryTimeout, 17);
    for (let i = 0; i < 500; i++) await t.fs.create(d.attr.ino, b(`n${i}`), 0o644, 0, root);
    const dir = await adapter.opendir(d.attr.ino, 0, root);
    assert.equal(dir.keepCache, undefined);
    const size = 4096;
    const first = await adapter.readdir(d.attr.ino, dir.fh, 0, size);
    // No more than could fit, and enough to fill the buffer with these names.
    assert.ok(first.length <= Math.floor(size / direntSize(1)) + 1, `${first.length} entries for ${size} bytes`);
    const packed = first.reduce((sum, e) => sum + direntSize(e.name.length), 0);
    assert.ok(packed >= size, `only ${packed} bytes of entries offered for a ${size}-byte buffer`);
    // A utimensat(UTIME_NOW) through the adapter reaches the volume as "now".
    const before = Date.now() / 1000 - 1;
    const a = await adapter.setattr(c.attr.ino, { ...none, valid: SetAttrValid.MTIME | SetAttrValid.MTIME_NOW }, c.fh, root);
    assert.ok(a.mtimeSec >= before);
    assert.equal(a.size, 0);
    await adapter.flush(c.attr.ino, c.fh);
    await adapter.release(c.attr.ino, c.fh, 0);
    await adapter.releasedir(d.attr.ino, dir.fh);
    await t.close();
  });

  it('readdirplus: attributes of what fits in the buffer, each a counted lookup that keeps an unlinked inode until forgotten', async () => {
    const t = newFs();
    const adapter = new FsAdapter(t.fs, { entryTimeout: 17, attrTimeout: 19, keepCache: true, keepDirCache: false });
    const d = await adapter.mkdir(ROOT_INO, b('d'), 0o755, root);
    for (let i = 0; i < 100; i++) {
      const c = await t.fs.create(d.attr.ino, b(`file-${i}`), 0o640, 1, root);
      await t.fs.write(c.attr.ino, c.fh, Buffer.alloc(i + 1, 7), 0);
      await t.fs.release(c.attr.ino, c.fh, 0);
      t.fs.forget(c.attr.ino, 1);
    }
    const dir = await adapter.opendir(d.attr.ino, 0, root);
    const size = 4096;
    const first = await adapter.readdirplus(d.attr.ino, dir.fh, 0, size, root);
    const bytes = first.reduce((sum, e) => sum + direntPlusSize(e.name.length), 0);
    assert.ok(bytes <= size, `${bytes} bytes of entries for a ${size}-byte buffer`);
    assert.ok(bytes + direntPlusSize(20) > size, `the buffer is filled (${bytes} of ${size} bytes)`);
    assert.deepEqual(first.slice(0, 2).map((e) => [e.name.toString(), e.entry]), [['.', undefined], ['..', undefined]]);
    const files = first.slice(2);
    assert.ok(files.length > 10);
    for (const e of files) {
      assert.ok(e.entry, e.name.toString());
      assert.equal(e.entry.entryTimeout, 17);
      assert.equal(e.entry.attrTimeout, 19);
      assert.equal(e.entry.attr.ino, e.ino);
      assert.deepEqual(e.entry.attr, await t.fs.getattr(e.ino, undefined, root));
      assert.equal(e.entry.attr.size, Number(e.name.toString().slice(5)) + 1);
    }
    // The next call continues after the last entry given.
    const after = first[first.length - 1].nextOffset;
    const next = await adapter.readdirplus(d.attr.ino, dir.fh, after, size, root);
    assert.deepEqual(next[0].name, (await adapter.readdir(d.attr.ino, dir.fh, after, size))[0].name);
    assert.notDeepEqual(next[0].name, first[first.length - 1].name);
    for (const e of next) if (e.entry) t.fs.forget(e.ino, 1);
    // Every listed name is a reference the kernel holds: unlinked, the inode lives until forgotten.
    const kept = files[0];
    await t.fs.unlink(d.attr.ino, kept.name, root);
    assert.equal((await t.fs.getattr(kept.ino, undefined, root)).nlink, 0);
    t.fs.forget(kept.ino, 1);
    await new Promise((r) => setImmediate(r));
    await assert.rejects(Promise.resolve().then(() => t.fs.getattr(kept.ino, undefined, root)), { errno: 2 });
    for (const e of files.slice(1)) t.fs.forget(e.ino, 1);
    await adapter.releasedir(d.attr.ino, dir.fh);
    await t.close();
  });
});
