import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { describe, it } from 'node:test';
import { join } from 'node:path';
import { openMetaEngine } from '../src/meta/registry';
import { ROOT_INO, type PogFs } from '../src/vfs/filesystem';
import { b, newFs, quietLog, root, user } from './support/fs';

const E = constants.errno;
const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const O_RDWR = 2;

function errno(fn: () => unknown): Promise<number | undefined> {
  return (async () => {
    try {
      await fn();
      return undefined;
    } catch (err) {
      return (err as { errno?: number }).errno;
    }
  })();
}

/**
 * What the kernel sends on close: flush, then release; then the blocks the close parked
 * in the metadata are moved into the store, which these tests inspect.
 */
async function close(fs: PogFs, ino: number, fh: number): Promise<void> {
  await fs.flush(ino, fh);
  fs.release(ino, fh, 0);
  await fs.durability.move();
}

describe('PogFs files', () => {
  it('writes and reads across block boundaries with read-modify-write', async () => {
    const t = newFs(4096);
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    const data = randomBytes(4096 * 3 + 100);
    fs.write(f.attr.ino, f.fh, Buffer.from(data), 0, root); // the filesystem keeps what it is handed
    fs.write(f.attr.ino, f.fh, b('XYZ'), 4095, root); // straddles blocks 0 and 1
    data.write('XYZ', 4095, 'latin1');
    assert.ok((await fs.read(f.attr.ino, f.fh, 20000, 0)).equals(data));
    await close(fs, f.attr.ino, f.fh);
    const t2 = await t.reopen();
    const o = await t2.fs.open(f.attr.ino, 0, root);
    assert.ok((await t2.fs.read(f.attr.ino, o.fh, 20000, 0)).equals(data));
    assert.equal((await t2.fs.getattr(f.attr.ino, undefined, root)).size, data.length);
    await t2.close();
  });

  it('reads holes as zeros and stores nothing for them', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('sparse'), 0o644, O_RDWR, root);
    const TiB = 1024 ** 4;
    fs.write(f.attr.ino, f.fh, b('end'), TiB - 3, root);
    const a = await fs.getattr(f.attr.ino, undefined, root);
    assert.equal(a.size, TiB);
    assert.ok(a.blocks <= 256, `a sparse 1 TiB file holds ${a.blocks} sectors`);
    assert.ok((await fs.read(f.attr.ino, f.fh, 4096, 1024 ** 3)).equals(Buffer.alloc(4096)));
    assert.equal((await fs.read(f.attr.ino, f.fh, 10, TiB - 3)).toString(), 'end');
    await close(fs, f.attr.ino, f.fh);
    assert.ok(t.volume.store.stats().uniqueBytes < 200 * 1024);
    await t.close();
  });

  it('all-zero blocks written become holes', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('zeros'), 0o644, O_RDWR, root);
    fs.write(f.attr.ino, f.fh, Buffer.alloc(1024 * 1024), 0, root);
    await close(fs, f.attr.ino, f.fh);
    assert.equal(t.volume.store.stats().blocks, 0);
    assert.equal((await fs.getattr(f.attr.ino, undefined, root)).size, 1024 * 1024);
    await t.close();
  });

  it('truncate shrinks, zeroes the cut tail, and extends with zeros', async () => {
    const t = newFs(4096);
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('t'), 0o644, O_RDWR, root);
    const ino = f.attr.ino;
    fs.write(ino, f.fh, Buffer.alloc(10000, 0x61), 0, root);
    await fs.flush(ino, f.fh);
    await fs.setattr(ino, { size: 5000 }, f.fh, root);
    await fs.setattr(ino, { size: 9000 }, f.fh, root);
    const got = await fs.read(ino, f.fh, 10000, 0);
    assert.equal(got.length, 9000);
    assert.ok(got.subarray(0, 5000).equals(Buffer.alloc(5000, 0x61)));
    assert.ok(got.subarray(5000).equals(Buffer.alloc(4000)));
    await close(fs, ino, f.fh);
    // truncate(2) on a closed file is committed at once
    await fs.setattr(ino, { size: 0 }, undefined, root);
    const t2 = await t.reopen();
    assert.equal((await t2.fs.getattr(ino, undefined, root)).size, 0);
    await t2.close();
  });

  it('truncate(2) to the current size still records the other changes of the call', async () => {
    const t = newFs();
    const f = await t.fs.create(ROOT_INO, b('same'), 0o644, O_RDWR, root);
    t.fs.write(f.attr.ino, f.fh, b('abc'), 0, root);
    await close(t.fs, f.attr.ino, f.fh);
    await t.fs.setattr(f.attr.ino, { size: 3, mtime: { s: 1234, ns: 5 }, mode: 0o600 }, undefined, root);
    const t2 = await t.reopen();
    const a = await t2.fs.getattr(f.attr.ino, undefined, root);
    assert.deepEqual([a.size, a.mtimeSec, a.mtimeNsec, a.mode & 0o7777], [3, 1234, 5, 0o600]);
    await t2.close();
  });

  it('two handles see each other’s writes at once', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('shared'), 0o644, O_RDWR, root);
    const g = await fs.open(f.attr.ino, O_RDWR, root);
    fs.write(f.attr.ino, f.fh, b('one'), 0, root);
    assert.equal((await fs.read(f.attr.ino, g.fh, 10, 0)).toString(), 'one');
    fs.write(f.attr.ino, g.fh, b('TWO'), 3, root);
    assert.equal((await fs.read(f.attr.ino, f.fh, 10, 0)).toString(), 'oneTWO');
    await close(fs, f.attr.ino, f.fh);
    await close(fs, f.attr.ino, g.fh);
    await t.close();
  });

  it('deduplicates identical blocks and releases them when files go', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const data = randomBytes(8 * 131072);
    for (const name of ['a', 'b']) {
      const f = await fs.create(ROOT_INO, b(name), 0o644, O_RDWR, root);
      fs.write(f.attr.ino, f.fh, data, 0, root);
      await close(fs, f.attr.ino, f.fh);
      fs.forget(f.attr.ino, 1);
    }
    assert.equal(volume.store.stats().blocks, 8);
    assert.equal(volume.store.stats().references, 16);
    await fs.unlink(ROOT_INO, b('a'), root);
    await fs.unlink(ROOT_INO, b('b'), root);
    await new Promise((r) => setImmediate(r));
    await fs.reclaimer.run();
    assert.equal(volume.store.stats().blocks, 0);
    await t.close();
  });

  it('an unlinked open file stays readable until released, then is freed', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const dir = await fs.mkdir(ROOT_INO, b('d'), 0o755, root);
    const f = await fs.create(dir.attr.ino, b('f'), 0o644, O_RDWR, root);
    const data = randomBytes(300000);
    fs.write(f.attr.ino, f.fh, data, 0, root);
    await fs.flush(f.attr.ino, f.fh);
    await fs.unlink(dir.attr.ino, b('f'), root);
    await fs.rmdir(ROOT_INO, b('d'), root); // its directory can go too: no hidden placeholder
    assert.ok((await fs.read(f.attr.ino, f.fh, 400000, 0)).equals(data));
    assert.equal((await fs.getattr(f.attr.ino, undefined, root)).nlink, 0);
    await close(fs, f.attr.ino, f.fh);
    fs.forget(f.attr.ino, 1);
    await new Promise((r) => setTimeout(r, 10));
    await fs.reclaimer.run();
    assert.equal(volume.meta.getInode(f.attr.ino), undefined);
    assert.equal(volume.store.stats().blocks, 0);
    await t.close();
  });

  it('frees inodes a crash left unlinked', async () => {
    const t = newFs();
    const f = await t.fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    t.fs.write(f.attr.ino, f.fh, randomBytes(1000), 0, root);
    await t.fs.flush(f.attr.ino, f.fh);
    await t.fs.unlink(ROOT_INO, b('f'), root);
    // simulate the crash: the volume is closed while the file is still open
    await t.volume.close();
    const t2 = (await import('./support/fs')).openFs(t.path);
    assert.equal(await t2.fs.recoverUnlinked(), 1);
    assert.equal(t2.volume.store.stats().blocks, 0);
    await t2.close();
  });
});

describe('PogFs namespace', () => {
  it('enforces name rules and errnos', async () => {
    const t = newFs();
    const { fs } = t;
    assert.equal(await errno(() => fs.lookup(ROOT_INO, Buffer.alloc(256, 0x61), root)), E.ENAMETOOLONG);
    assert.ok((await fs.create(ROOT_INO, Buffer.alloc(255, 0x61), 0o644, 0, root)).attr.ino > 1);
    assert.equal(await errno(() => fs.lookup(ROOT_INO, b('missing'), root)), E.ENOENT);
    await fs.mkdir(ROOT_INO, b('d'), 0o755, root);
    assert.equal(await errno(() => fs.mkdir(ROOT_INO, b('d'), 0o755, root)), E.EEXIST);
    const file = await fs.create(ROOT_INO, b('file'), 0o644, 0, root);
    assert.equal(await errno(() => fs.lookup(file.attr.ino, b('x'), root)), E.ENOTDIR);
    assert.equal(await errno(() => fs.rmdir(ROOT_INO, b('file'), root)), E.ENOTDIR);
    assert.equal(await errno(() => fs.unlink(ROOT_INO, b('d'), root)), E.EISDIR);
    const odd = Buffer.from([0xff, 0xfe, 0x80, 0x0a]);
    const e = await fs.mknod(ROOT_INO, odd, S_IFIFO | 0o644, 0, root);
    assert.equal((await fs.lookup(ROOT_INO, odd, root)).attr.ino, e.attr.ino);
    assert.equal((await fs.getattr(e.attr.ino, undefined, root)).mode, S_IFIFO | 0o644);
    await t.close();
  });

  it('keeps directory link counts right', async () => {
    const t = newFs();
    const { fs } = t;
    const a = await fs.mkdir(ROOT_INO, b('a'), 0o755, root);
    await fs.mkdir(a.attr.ino, b('x'), 0o755, root);
    await fs.mkdir(a.attr.ino, b('y'), 0o755, root);
    assert.equal((await fs.getattr(a.attr.ino, undefined, root)).nlink, 4);
    assert.equal((await fs.getattr(ROOT_INO, undefined, root)).nlink, 3);
    assert.equal(await errno(() => fs.rmdir(ROOT_INO, b('a'), root)), E.ENOTEMPTY);
    await fs.rename(a.attr.ino, b('x'), ROOT_INO, b('x'), 0, root);
    assert.equal((await fs.getattr(a.attr.ino, undefined, root)).nlink, 3);
    assert.equal((await fs.getattr(ROOT_INO, undefined, root)).nlink, 4);
    await t.close();
  });

  it('renames by Linux rules', async () => {
    const t = newFs();
    const { fs } = t;
    const d = await fs.mkdir(ROOT_INO, b('d'), 0o755, root);
    const sub = await fs.mkdir(d.attr.ino, b('sub'), 0o755, root);
    const full = await fs.mkdir(ROOT_INO, b('full'), 0o755, root);
    await fs.create(full.attr.ino, b('inside'), 0o644, 0, root);
    const empty = await fs.mkdir(ROOT_INO, b('empty'), 0o755, root);
    const f = await fs.create(ROOT_INO, b('f'), 0o644, 0, root);
    const g = await fs.create(ROOT_INO, b('g'), 0o644, 0, root);

    assert.equal(await errno(() => fs.rename(ROOT_INO, b('d'), sub.attr.ino, b('loop'), 0, root)), E.EINVAL);
    assert.equal(await errno(() => fs.rename(ROOT_INO, b('d'), d.attr.ino, b('self'), 0, root)), E.EINVAL);
    assert.equal(await errno(() => fs.rename(ROOT_INO, b('d'), ROOT_INO, b('full'), 0, root)), E.ENOTEMPTY);
    assert.equal(await errno(() => fs.rename(ROOT_INO, b('d'), ROOT_INO, b('f'), 0, root)), E.ENOTDIR);
    assert.equal(await errno(() => fs.rename(ROOT_INO, b('f'), ROOT_INO, b('empty'), 0, root)), E.EISDIR);
    assert.equal(await errno(() => fs.rename(ROOT_INO, b('nope'), ROOT_INO, b('x'), 0, root)), E.ENOENT);
    assert.equal(await errno(() => fs.rename(ROOT_INO, b('f'), ROOT_INO, b('g'), 1, root)), E.EEXIST);

    await fs.rename(ROOT_INO, b('f'), ROOT_INO, b('f'), 0, root); // onto itself: nothing happens
    assert.equal((await fs.lookup(ROOT_INO, b('f'), root)).attr.ino, f.attr.ino);

    await fs.rename(ROOT_INO, b('f'), ROOT_INO, b('g'), 0, root); // replaces a file
    assert.equal((await fs.lookup(ROOT_INO, b('g'), root)).attr.ino, f.attr.ino);
    assert.equal((await fs.getattr(g.attr.ino, undefined, root)).nlink, 0);

    const rootLinks = (await fs.getattr(ROOT_INO, undefined, root)).nlink;
    await fs.rename(ROOT_INO, b('d'), ROOT_INO, b('empty'), 0, root); // replaces an empty dir
    assert.equal((await fs.lookup(ROOT_INO, b('empty'), root)).attr.ino, d.attr.ino);
    assert.equal((await fs.getattr(ROOT_INO, undefined, root)).nlink, rootLinks - 1);
    assert.equal((await fs.getattr(empty.attr.ino, undefined, root)).nlink, 0);

    await fs.rename(ROOT_INO, b('g'), ROOT_INO, b('full'), 2, root); // exchange a file and a dir
    assert.equal((await fs.lookup(ROOT_INO, b('full'), root)).attr.ino, f.attr.ino);
    assert.equal((await fs.lookup(ROOT_INO, b('g'), root)).attr.ino, full.attr.ino);
    await t.close();
  });

  it('hard links count names; directories cannot be linked', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, 0, root);
    const d = await fs.mkdir(ROOT_INO, b('d'), 0o755, root);
    await fs.link(f.attr.ino, d.attr.ino, b('f2'), root);
    assert.equal((await fs.getattr(f.attr.ino, undefined, root)).nlink, 2);
    assert.equal(await errno(() => fs.link(d.attr.ino, ROOT_INO, b('d2'), root)), E.EPERM);
    assert.equal(await errno(() => fs.link(f.attr.ino, ROOT_INO, b('f'), root)), E.EEXIST);
    await fs.unlink(ROOT_INO, b('f'), root);
    assert.equal((await fs.getattr(f.attr.ino, undefined, root)).nlink, 1);
    assert.equal((await fs.lookup(d.attr.ino, b('f2'), root)).attr.ino, f.attr.ino);
    // renaming one link onto another link of the same inode does nothing
    await fs.link(f.attr.ino, d.attr.ino, b('f3'), root);
    await fs.rename(d.attr.ino, b('f2'), d.attr.ino, b('f3'), 0, root);
    assert.equal((await fs.lookup(d.attr.ino, b('f2'), root)).attr.ino, f.attr.ino);
    await t.close();
  });

  it('symlinks keep their target bytes', async () => {
    const t = newFs();
    const { fs } = t;
    const target = Buffer.from([0x2e, 0x2e, 0x2f, 0xff, 0x61]);
    const s = await fs.symlink(target, ROOT_INO, b('ln'), root);
    assert.ok((await fs.readlink(s.attr.ino, root)).equals(target));
    assert.equal(s.attr.size, target.length);
    assert.equal(s.attr.mode & 0o170000, 0o120000);
    await t.close();
  });

  it('lists directories with . and .. and resumes at any offset', async () => {
    const t = newFs();
    const { fs } = t;
    const d = await fs.mkdir(ROOT_INO, b('d'), 0o755, root);
    for (let i = 0; i < 300; i++) await fs.create(d.attr.ino, b(`n${i}`), 0o644, 0, root);
    const h = await fs.opendir(d.attr.ino, 0, root);
    const seen: string[] = [];
    let off = 0;
    for (;;) {
      const batch = fs.readdir(d.attr.ino, h.fh, off, 17);
      if (batch.length === 0) break;
      const take = batch.slice(0, 5); // the binding may pack only some of them
      for (const e of take) seen.push(e.name.toString());
      off = take[take.length - 1].nextOffset;
    }
    fs.releasedir(d.attr.ino, h.fh);
    assert.equal(seen.length, 302);
    assert.deepEqual(seen.slice(0, 2), ['.', '..']);
    assert.equal(new Set(seen).size, 302);
    await t.close();
  });

  it('new entries in a set-group-ID directory take its group', async () => {
    const t = newFs();
    const { fs } = t;
    const d = await fs.mkdir(ROOT_INO, b('shared'), 0o2775, root);
    await fs.setattr(d.attr.ino, { gid: 500 }, undefined, root);
    const f = await fs.create(d.attr.ino, b('f'), 0o644, 0, user(1000));
    const sub = await fs.mkdir(d.attr.ino, b('sub'), 0o755, user(1000));
    assert.equal(f.attr.uid, 1000);
    assert.equal(f.attr.gid, 500);
    assert.equal(sub.attr.gid, 500);
    assert.ok(sub.attr.mode & 0o2000);
    await t.close();
  });
});

describe('PogFs attributes and xattrs', () => {
  it('keeps nanosecond times, mode and owner', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, 0, root);
    const a = await fs.setattr(
      f.attr.ino,
      {
        atime: { s: 981173106, ns: 123456789 },
        mtime: { s: 1000000000, ns: 987654321 },
        mode: 0o4750,
        uid: 42,
      },
      undefined,
      root,
    );
    assert.equal(a.mode, S_IFREG | 0o4750);
    assert.equal(a.uid, 42);
    const t2 = await t.reopen();
    const r = await t2.fs.getattr(f.attr.ino, undefined, root);
    assert.deepEqual([r.atimeSec, r.atimeNsec, r.mtimeSec, r.mtimeNsec], [981173106, 123456789, 1000000000, 987654321]);
    await t2.close();
  });

  it('an explicit mtime set while writes are uncommitted survives their commit', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    await fs.write(f.attr.ino, f.fh, randomBytes(5000), 0, root);
    await fs.setattr(f.attr.ino, { mtime: { s: 1000, ns: 5 } }, undefined, root);
    const open = await fs.getattr(f.attr.ino, undefined, root);
    assert.deepEqual([open.mtimeSec, open.mtimeNsec, open.size], [1000, 5, 5000]);
    await close(fs, f.attr.ino, f.fh);
    const t2 = await t.reopen();
    const r = await t2.fs.getattr(f.attr.ino, undefined, root);
    assert.deepEqual([r.mtimeSec, r.mtimeNsec, r.size], [1000, 5, 5000]);
    await t2.close();
  });

  it('holds back setattrs of a file open with changes to commit, and commits them with its content', async () => {
    const t = newFs();
    const { fs } = t;
    const engine = t.volume.engine;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    const ino = f.attr.ino;
    await fs.write(ino, f.fh, randomBytes(5000), 0, root);
    // What tar does after writing, before closing: times, owner, mode.
    await fs.setattr(ino, { mtime: { s: 1000, ns: 5 }, atime: { s: 900, ns: 7 } }, f.fh, root);
    await fs.setattr(ino, { uid: 42, gid: 43 }, f.fh, root);
    await fs.setattr(ino, { mode: 0o640 }, f.fh, root);
    const seen = await fs.getattr(ino, undefined, root);
    assert.deepEqual(
      [seen.mode, seen.uid, seen.gid, seen.atimeSec, seen.atimeNsec, seen.mtimeSec, seen.mtimeNsec, seen.size],
      [S_IFREG | 0o640, 42, 43, 900, 7, 1000, 5, 5000],
    );
    // Held: the metadata has none of it yet, and permission checks use what was set.
    const before = await engine.getattr(ino);
    assert.deepEqual([before.mode & 0o7777, before.uid], [0o644, root.uid]);
    assert.equal(await errno(() => fs.access(ino, 2, user(42, 43))), undefined);
    assert.equal(await errno(() => fs.access(ino, 4, user(44, 44))), E.EACCES);

    // A setattr arriving while the close's commit is under way is not overwritten by it.
    const flushing = fs.flush(ino, f.fh);
    await fs.setattr(ino, { mode: 0o600 }, f.fh, root);
    await flushing;
    fs.release(ino, f.fh, 0);
    await fs.durability.move();
    await fs.commitAll();
    const after = await engine.getattr(ino);
    assert.deepEqual([after.mode & 0o7777, after.uid, after.gid, after.atime_s, after.mtime_s, after.mtime_ns, after.size], [0o600, 42, 43, 900, 1000, 5, 5000]);
    const t2 = await t.reopen();
    const r = await t2.fs.getattr(ino, undefined, root);
    assert.deepEqual([r.mode, r.uid, r.gid, r.atimeSec, r.mtimeSec, r.size], [S_IFREG | 0o600, 42, 43, 900, 1000, 5000]);
    await t2.close();
  });

  it('writes attribute changes field by field: another client\'s change to the same inode survives', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    await fs.write(f.attr.ino, f.fh, randomBytes(3000), 0, root);
    // The other client writes while no commit group of this one is open (one thread here).
    await t.volume.engine.commitGroup();
    const other = await openMetaEngine(`sqlite:${join(t.path, 'meta.db')}`);
    await other.setattr(f.attr.ino, { uid: 4242 });
    await other.close();
    await fs.setattr(f.attr.ino, { mode: 0o600 }, undefined, root);
    await close(fs, f.attr.ino, f.fh);
    const r = await fs.getattr(f.attr.ino, undefined, root);
    assert.deepEqual([r.uid, r.mode & 0o7777, r.size], [4242, 0o600, 3000]);
    await t.close();
  });

  it('attributes of known inodes follow every change made here (the read copies are dropped)', async () => {
    const t = newFs();
    const { fs } = t;
    const attrs = async (ino: number) => fs.getattr(ino, undefined, root);
    const d = await fs.mkdir(ROOT_INO, b('d'), 0o755, root);
    const d2 = await fs.mkdir(ROOT_INO, b('d2'), 0o755, root);
    const stamp = (a: { mtimeSec: number; mtimeNsec: number }) => a.mtimeSec * 1e9 + a.mtimeNsec;
    let before = await attrs(d.attr.ino);
    // A new subdirectory: the parent's link count and mtime.
    await fs.mkdir(d.attr.ino, b('sub'), 0o755, root);
    let after = await attrs(d.attr.ino);
    assert.equal(after.nlink, before.nlink + 1);
    assert.ok(stamp(after) > stamp(before));
    // A file written and closed: its size after the commit, read from the engine.
    const f = await fs.create(d.attr.ino, b('f'), 0o644, O_RDWR, root);
    await fs.write(f.attr.ino, f.fh, randomBytes(5000), 0, root);
    await close(fs, f.attr.ino, f.fh);
    await t.volume.engine.commitGroup();
    assert.equal((await attrs(f.attr.ino)).size, 5000);
    // A rename between directories: both parents; the moved file's ctime.
    before = await attrs(d2.attr.ino);
    const fBefore = await attrs(f.attr.ino);
    await fs.rename(d.attr.ino, b('f'), d2.attr.ino, b('g'), 0, root);
    assert.ok(stamp(await attrs(d2.attr.ino)) > stamp(before));
    const fAfter = await attrs(f.attr.ino);
    assert.ok(fAfter.ctimeSec * 1e9 + fAfter.ctimeNsec > fBefore.ctimeSec * 1e9 + fBefore.ctimeNsec);
    // A hard link: the link count; an xattr: the ctime; an unlink: the link count again.
    await fs.link(f.attr.ino, d.attr.ino, b('h'), root);
    assert.equal((await attrs(f.attr.ino)).nlink, 2);
    await fs.setxattr(f.attr.ino, b('user.k'), b('v'), 0, root);
    const x = await attrs(f.attr.ino);
    assert.ok(x.ctimeSec * 1e9 + x.ctimeNsec > fAfter.ctimeSec * 1e9 + fAfter.ctimeNsec);
    await fs.unlink(d.attr.ino, b('h'), root);
    assert.equal((await attrs(f.attr.ino)).nlink, 1);
    // rmdir: the parent's link count.
    before = await attrs(d.attr.ino);
    await fs.rmdir(d.attr.ino, b('sub'), root);
    after = await attrs(d.attr.ino);
    assert.equal(after.nlink, before.nlink - 1);
    await t.close();
  });

  it('sets, gets, lists and removes xattrs with Linux flags and errnos', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, 0, root);
    const ino = f.attr.ino;
    await fs.setxattr(ino, b('user.a'), b('1'), 0, root);
    await fs.setxattr(ino, b('user.b'), Buffer.from([0, 1, 2]), 0, root);
    assert.equal(await errno(() => fs.setxattr(ino, b('user.a'), b('2'), 1, root)), E.EEXIST);
    assert.equal(await errno(() => fs.setxattr(ino, b('user.c'), b('2'), 2, root)), E.ENODATA);
    await fs.setxattr(ino, b('user.a'), b('22'), 2, root);
    assert.equal((await fs.getxattr(ino, b('user.a'), root)).toString(), '22');
    assert.deepEqual(await fs.getxattr(ino, b('user.b'), root), Buffer.from([0, 1, 2]));
    assert.equal((await fs.listxattr(ino, root)).toString('latin1'), 'user.a\0user.b\0');
    await fs.removexattr(ino, b('user.a'), root);
    assert.equal(await errno(() => fs.getxattr(ino, b('user.a'), root)), E.ENODATA);
    assert.equal(await errno(() => fs.removexattr(ino, b('user.a'), root)), E.ENODATA);
    assert.equal(await errno(() => fs.setxattr(ino, b('user.big'), Buffer.alloc(65537), 0, root)), E.E2BIG);
    assert.equal(fs.hasSecurityXattrs, false);
    await fs.setxattr(ino, b('security.selinux'), b('x'), 0, root);
    assert.equal(fs.hasSecurityXattrs, true);
    await t.close();
  });

  it('access follows owner, group and other bits', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o640, 0, user(1000, 100));
    assert.equal(await errno(() => fs.access(f.attr.ino, 6, user(1000, 100))), undefined);
    assert.equal(await errno(() => fs.access(f.attr.ino, 4, user(2000, 100))), undefined);
    assert.equal(await errno(() => fs.access(f.attr.ino, 2, user(2000, 100))), E.EACCES);
    assert.equal(await errno(() => fs.access(f.attr.ino, 4, user(3000, 300))), E.EACCES);
    assert.equal(await errno(() => fs.access(f.attr.ino, 1, root)), E.EACCES);
    assert.equal(await errno(() => fs.access(f.attr.ino, 6, root)), undefined);
    await t.close();
  });

  it('statfs reports real numbers', async () => {
    const t = newFs();
    const s = await t.fs.statfs(ROOT_INO);
    assert.ok(s.blocks > 0 && s.bfree > 0 && s.bfree <= s.blocks);
    assert.equal(s.namemax, 255);
    assert.ok(s.files > 0);
    await t.close();
  });

  it('hashes what it stores: stored bytes match content', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    const data = randomBytes(131072 * 2);
    fs.write(f.attr.ino, f.fh, data, 0, root);
    await close(fs, f.attr.ino, f.fh);
    const rows = volume.meta.listBlocks(f.attr.ino);
    assert.equal(rows.length, 2);
    for (const r of rows) {
      const got = volume.store.get(r.hash);
      assert.ok(got);
      assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(data.subarray(r.idx * 131072, r.idx * 131072 + r.len)).digest('hex'));
    }
    await t.close();
  });
});

describe('PogFs POSIX ACLs', () => {
  it('refuses system.* attributes so programs fall back to chmod', async () => {
    const t = newFs();
    const f = await t.fs.create(ROOT_INO, b('f'), 0o600, 0, root);
    assert.equal(await errno(() => t.fs.setxattr(f.attr.ino, b('system.posix_acl_access'), Buffer.alloc(28), 0, root)), E.EOPNOTSUPP);
    await t.close();
  });
});

describe('PogFs block accounting and damage', () => {
  it('st_blocks survives commit, attribute changes and remount', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    fs.write(f.attr.ino, f.fh, randomBytes(300000), 0, root);
    await close(fs, f.attr.ino, f.fh);
    fs.forget(f.attr.ino, 1);
    await fs.setattr(f.attr.ino, { mode: 0o600 }, undefined, root);
    assert.equal((await fs.getattr(f.attr.ino, undefined, root)).blocks, Math.ceil(300000 / 512));
    const t2 = await t.reopen();
    assert.equal(t2.volume.meta.getInode(f.attr.ino)?.stored_bytes, 300000);
    assert.equal((await t2.fs.getattr(f.attr.ino, undefined, root)).blocks, Math.ceil(300000 / 512));
    await t2.close();
  });

  it('a block whose bytes no longer match its hash reads as EIO and is logged', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const f = await fs.create(ROOT_INO, b('f'), 0o644, O_RDWR, root);
    const data = randomBytes(2 * 131072);
    fs.write(f.attr.ino, f.fh, data, 0, root);
    await close(fs, f.attr.ino, f.fh);
    const [first] = volume.meta.listBlocks(f.attr.ino);
    // Swap in other bytes under the same key, as a bad disk would.
    const other = randomBytes(131072);
    await volume.store.release([first.hash]);
    await volume.store.acquire([{ hash: first.hash, data: other }]);
    const o = await fs.open(f.attr.ino, 0, root);
    assert.equal(await errno(() => fs.read(f.attr.ino, o.fh, 4096, 0)), E.EIO);
    assert.ok((await fs.read(f.attr.ino, o.fh, 131072, 131072)).equals(data.subarray(131072)));
    assert.ok(quietLog.errors.some((l) => /corrupt/.test(l) && l.includes(`inode ${f.attr.ino}`)));
    await close(fs, f.attr.ino, o.fh);
    await t.close();
  });
});
