import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FsAdapter, attrChanges } from '../src/fuse/fs-adapter';
import { direntSize } from '../src/fuse/session';
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
});
