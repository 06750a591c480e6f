/**
 * The metadata engine conformance suite: every rule the vfs relies on, asked of the
 * engine directly, plus two clients of one database interleaving operations. Every
 * engine runs it (test/meta-engine.test.ts runs it against SQLite; an engine for
 * several machines, such as PostgreSQL, must pass it unchanged).
 */
import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, it } from 'node:test';
import {
  RENAME_EXCHANGE,
  RENAME_NOREPLACE,
  XATTR_CREATE,
  XATTR_REPLACE,
  type MetaEngine,
  type NodeSpec,
  type Timespec,
} from '../src/meta/engine';
import { ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, isDir } from '../src/posix/file-system';
import type { InodeRow } from '../src/meta/meta-db';
import { errno } from './support/errno';

const E = constants.errno;
const S_IFIFO = 0o010000;

/** A fresh volume's metadata: its engine, and how to open further clients of the same metadata. */
export interface EngineFixture {
  engine: MetaEngine;
  /** The URL another client (another thread, process or machine) opens. */
  url: string;
  connect(): Promise<MetaEngine>;
}

export type EngineFactory = () => Promise<EngineFixture>;

export const b = (s: string): Buffer => Buffer.from(s);
const file = (mode = 0o644, uid = 0, gid = 0): NodeSpec => ({ mode: S_IFREG | mode, uid, gid });
const dir = (mode = 0o755, uid = 0, gid = 0): NodeSpec => ({ mode: S_IFDIR | mode, uid, gid });

let clock = 1_700_000_000;
/** A distinct time per call (nanoseconds set, so truncation would show). */
function tick(): Timespec {
  clock += 1;
  return { s: clock, ns: 123456789 };
}


const time = (r: InodeRow, which: 'atime' | 'mtime' | 'ctime'): Timespec => ({ s: r[`${which}_s`], ns: r[`${which}_ns`] });
const hash = (n: number): Buffer => Buffer.alloc(32, n);

async function names(m: MetaEngine, d: number): Promise<string[]> {
  return (await m.readdir(d)).entries.map((e) => e.name.toString('latin1'));
}

export function metaConformance(engineName: string, factory: EngineFactory): void {
  /** Runs `fn` with a fresh engine (and any clients it connects), closing them all after. */
  const withEngine = (fn: (m: MetaEngine, fx: EngineFixture & { client(): Promise<MetaEngine> }) => Promise<void>) => async () => {
    const fx = await factory();
    const clients: MetaEngine[] = [fx.engine];
    try {
      await fn(fx.engine, {
        ...fx,
        client: async () => {
          const c = await fx.connect();
          clients.push(c);
          return c;
        },
      });
    } finally {
      for (const c of clients.reverse()) await c.close();
    }
  };

  describe(`MetaEngine conformance: ${engineName}`, () => {
    describe('names and attributes', () => {
      it('starts with a root directory and a superblock', withEngine(async (m) => {
        const r = await m.getattr(ROOT_INO);
        assert.ok(isDir(r.mode));
        assert.equal(r.nlink, 2);
        assert.equal((await m.superblock()).magic, 'pogfs-volume');
        assert.deepEqual((await m.readdir(ROOT_INO)).entries, []);
        assert.equal(await m.parentOf(ROOT_INO), undefined);
        assert.equal(await errno(() => m.getattr(424242)), E.ENOENT);
      }));

      it('enforces name rules and errnos', withEngine(async (m) => {
        assert.equal(await errno(() => m.lookup(ROOT_INO, Buffer.alloc(256, 0x61))), E.ENAMETOOLONG);
        assert.equal(await errno(() => m.mknod(ROOT_INO, Buffer.alloc(256, 0x61), file(), tick())), E.ENAMETOOLONG);
        assert.ok((await m.mknod(ROOT_INO, Buffer.alloc(255, 0x61), file(), tick())).ino > ROOT_INO);
        assert.equal(await errno(() => m.lookup(ROOT_INO, Buffer.alloc(0))), E.ENOENT);
        assert.equal(await errno(() => m.lookup(ROOT_INO, b('missing'))), E.ENOENT);
        const d = await m.mknod(ROOT_INO, b('d'), dir(), tick());
        assert.equal(await errno(() => m.mknod(ROOT_INO, b('d'), dir(), tick())), E.EEXIST);
        assert.equal(await errno(() => m.mknod(ROOT_INO, b('d'), file(), tick())), E.EEXIST);
        const f = await m.mknod(ROOT_INO, b('file'), file(), tick());
        assert.equal(await errno(() => m.lookup(f.ino, b('x'))), E.ENOTDIR);
        assert.equal(await errno(() => m.mknod(f.ino, b('x'), file(), tick())), E.ENOTDIR);
        assert.equal(await errno(() => m.lookup(424242, b('x'))), E.ENOENT);
        assert.equal(await errno(() => m.mknod(424242, b('x'), file(), tick())), E.ENOENT);
        assert.equal(await errno(() => m.rmdir(ROOT_INO, b('file'), tick())), E.ENOTDIR);
        assert.equal(await errno(() => m.unlink(ROOT_INO, b('d'), tick())), E.EISDIR);
        assert.equal(await errno(() => m.unlink(ROOT_INO, b('missing'), tick())), E.ENOENT);
        assert.equal(await errno(() => m.rmdir(ROOT_INO, b('missing'), tick())), E.ENOENT);
        assert.equal(await errno(() => m.unlink(f.ino, b('x'), tick())), E.ENOTDIR);
        assert.equal(await errno(() => m.readdir(f.ino)), E.ENOTDIR);
        assert.equal((await m.lookup(ROOT_INO, b('d'))).ino, d.ino);
      }));

      it('keeps names as bytes, unique per directory', withEngine(async (m) => {
        const odd = Buffer.from([0xff, 0xfe, 0x80, 0x0a]);
        const e = await m.mknod(ROOT_INO, odd, { mode: S_IFIFO | 0o644, uid: 0, gid: 0 }, tick());
        assert.equal((await m.lookup(ROOT_INO, odd)).ino, e.ino);
        assert.equal(await errno(() => m.lookup(ROOT_INO, odd.subarray(0, 3))), E.ENOENT);
        assert.equal((await m.getattr(e.ino)).mode, S_IFIFO | 0o644);
        assert.ok((await m.readdir(ROOT_INO)).entries[0].name.equals(odd));
      }));

      it('makes inodes with their times, link counts and the parent updated in the same step', withEngine(async (m) => {
        const t = tick();
        const d = await m.mknod(ROOT_INO, b('d'), dir(0o750, 7, 8), t);
        assert.deepEqual([d.mode, d.uid, d.gid, d.nlink, d.size], [S_IFDIR | 0o750, 7, 8, 2, 0]);
        for (const w of ['atime', 'mtime', 'ctime'] as const) assert.deepEqual(time(d, w), t);
        assert.deepEqual(await m.getattr(d.ino), d);
        const r = await m.getattr(ROOT_INO);
        assert.equal(r.nlink, 3);
        assert.deepEqual(time(r, 'mtime'), t);
        assert.deepEqual(time(r, 'ctime'), t);
        const t2 = tick();
        const f = await m.mknod(d.ino, b('f'), { mode: S_IFREG | 0o600, uid: 1, gid: 2, rdev: 0 }, t2);
        assert.equal(f.nlink, 1);
        const after = await m.getattr(d.ino);
        assert.equal(after.nlink, 2, 'a file adds no link to its directory');
        assert.deepEqual(time(after, 'mtime'), t2);
        assert.equal(await m.parentOf(f.ino), d.ino);
        assert.equal(await m.parentOf(d.ino), ROOT_INO);
      }));

      it('setattr writes exactly the fields given', withEngine(async (m) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(0o644), tick());
        const a = await m.setattr(f.ino, {
          atime: { s: 981173106, ns: 123456789 },
          mtime: { s: 1000000000, ns: 987654321 },
          mode: 0o4750,
          uid: 42,
        });
        assert.equal(a.mode, S_IFREG | 0o4750);
        assert.equal(a.uid, 42);
        assert.equal(a.gid, f.gid);
        assert.deepEqual(time(a, 'atime'), { s: 981173106, ns: 123456789 });
        assert.deepEqual(time(a, 'mtime'), { s: 1000000000, ns: 987654321 });
        assert.deepEqual(time(a, 'ctime'), time(f, 'ctime'), 'ctime is written only when given');
        // The type bits stay whatever the mode given says.
        assert.equal((await m.setattr(f.ino, { mode: S_IFDIR | 0o600 })).mode, S_IFREG | 0o600);
        const s = await m.setattr(f.ino, { size: 12345, storedBytes: 4096, ctime: { s: 5, ns: 6 } });
        assert.deepEqual([s.size, s.stored_bytes, s.ctime_s, s.ctime_ns, s.uid], [12345, 4096, 5, 6, 42]);
        assert.deepEqual(await m.setattr(f.ino, {}), s);
        assert.equal(await errno(() => m.setattr(424242, { uid: 1 })), E.ENOENT);
      }));

      it('new entries in a set-group-ID directory take its group, and directories the bit', withEngine(async (m) => {
        const d = await m.mknod(ROOT_INO, b('shared'), dir(0o2775), tick());
        await m.setattr(d.ino, { gid: 500 });
        const f = await m.mknod(d.ino, b('f'), file(0o644, 1000, 1000), tick());
        const sub = await m.mknod(d.ino, b('sub'), dir(0o755, 1000, 1000), tick());
        assert.equal(f.uid, 1000);
        assert.equal(f.gid, 500);
        assert.equal(f.mode & 0o2000, 0);
        assert.equal(sub.gid, 500);
        assert.ok(sub.mode & 0o2000);
        const plain = await m.mknod(ROOT_INO, b('plain'), dir(0o755, 1000, 1000), tick());
        assert.equal(plain.gid, 1000);
      }));

      it('reports totals for statfs', withEngine(async (m) => {
        const before = await m.statfs();
        const d = await m.mknod(ROOT_INO, b('d'), dir(), tick());
        const f = await m.mknod(d.ino, b('f'), file(), tick());
        await m.commitContent([{ ino: f.ino, rows: new Map([[0, { hash: hash(1), len: 1000 }]]), size: 1000, storedBytes: 1000 }]);
        const s = await m.statfs();
        assert.equal(s.inodes, before.inodes + 2);
        assert.equal(s.directories, before.directories + 1);
        assert.equal(s.files, before.files + 1);
        assert.equal(s.logicalBytes, before.logicalBytes + 1000);
        assert.equal(s.blockRefs, before.blockRefs + 1);
      }));
    });

    describe('the namespace', () => {
      it('keeps directory link counts right', withEngine(async (m) => {
        const a = await m.mknod(ROOT_INO, b('a'), dir(), tick());
        await m.mknod(a.ino, b('x'), dir(), tick());
        await m.mknod(a.ino, b('y'), dir(), tick());
        assert.equal((await m.getattr(a.ino)).nlink, 4);
        assert.equal((await m.getattr(ROOT_INO)).nlink, 3);
        assert.equal(await errno(() => m.rmdir(ROOT_INO, b('a'), tick())), E.ENOTEMPTY);
        await m.rename(a.ino, b('x'), ROOT_INO, b('x'), 0, tick());
        assert.equal((await m.getattr(a.ino)).nlink, 3);
        assert.equal((await m.getattr(ROOT_INO)).nlink, 4);
        const t = tick();
        const gone = await m.rmdir(a.ino, b('y'), t);
        assert.equal(gone.attr.nlink, 0);
        assert.deepEqual(gone.freed, [], 'a directory nobody uses is freed at once');
        const after = await m.getattr(a.ino);
        assert.equal(after.nlink, 2);
        assert.deepEqual(time(after, 'mtime'), t);
        assert.equal(await errno(() => m.getattr(gone.attr.ino)), E.ENOENT);
      }));

      it('renames by Linux rules', withEngine(async (m) => {
        const d = await m.mknod(ROOT_INO, b('d'), dir(), tick());
        const sub = await m.mknod(d.ino, b('sub'), dir(), tick());
        const full = await m.mknod(ROOT_INO, b('full'), dir(), tick());
        await m.mknod(full.ino, b('inside'), file(), tick());
        const empty = await m.mknod(ROOT_INO, b('empty'), dir(), tick());
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        const g = await m.mknod(ROOT_INO, b('g'), file(), tick());
        const rename = (from: string, toDir: number, to: string, flags = 0, fromDir = ROOT_INO) =>
          errno(() => m.rename(fromDir, b(from), toDir, b(to), flags, tick()));

        assert.equal(await rename('d', sub.ino, 'loop'), E.EINVAL);
        assert.equal(await rename('d', d.ino, 'self'), E.EINVAL);
        assert.equal(await rename('d', ROOT_INO, 'full'), E.ENOTEMPTY);
        assert.equal(await rename('d', ROOT_INO, 'f'), E.ENOTDIR);
        assert.equal(await rename('f', ROOT_INO, 'empty'), E.EISDIR);
        assert.equal(await rename('nope', ROOT_INO, 'x'), E.ENOENT);
        assert.equal(await rename('f', ROOT_INO, 'g', RENAME_NOREPLACE), E.EEXIST);
        assert.equal(await rename('f', ROOT_INO, 'nothing', RENAME_EXCHANGE), E.ENOENT);
        assert.equal(await rename('f', ROOT_INO, 'g', RENAME_NOREPLACE | RENAME_EXCHANGE), E.EINVAL);
        assert.equal(await rename('f', ROOT_INO, 'g', 4), E.EINVAL);
        assert.equal(await rename('f', f.ino, 'x'), E.ENOTDIR);
        assert.equal(await rename('f', 424242, 'x'), E.ENOENT);
        assert.equal(await rename('f', ROOT_INO, '', 0), E.ENOENT);
        assert.equal(await rename('f', ROOT_INO, 'x'.repeat(256), 0), E.ENAMETOOLONG);
        assert.deepEqual(await names(m, ROOT_INO), ['d', 'empty', 'f', 'full', 'g'], 'a refused rename changes nothing');

        const same = await m.rename(ROOT_INO, b('f'), ROOT_INO, b('f'), 0, tick()); // onto itself: nothing happens
        assert.equal(same.replaced, undefined);
        assert.equal((await m.lookup(ROOT_INO, b('f'))).ino, f.ino);

        const t = tick();
        const r = await m.rename(ROOT_INO, b('f'), ROOT_INO, b('g'), 0, t); // replaces a file
        assert.equal((await m.lookup(ROOT_INO, b('g'))).ino, f.ino);
        assert.equal(r.moved.ino, f.ino);
        assert.deepEqual(time(r.moved, 'ctime'), t);
        assert.equal(r.replaced?.attr.ino, g.ino);
        assert.equal(r.replaced?.attr.nlink, 0);
        assert.deepEqual(r.replaced?.freed, [], 'the replaced file, unused, is freed in the same step');
        assert.equal(await errno(() => m.getattr(g.ino)), E.ENOENT);
        const rootAfter = await m.getattr(ROOT_INO);
        assert.deepEqual(time(rootAfter, 'mtime'), t);

        const rootLinks = rootAfter.nlink;
        const inUse = new Set([empty.ino]);
        const r2 = await m.rename(ROOT_INO, b('d'), ROOT_INO, b('empty'), 0, tick(), (ino) => inUse.has(ino)); // replaces an empty dir
        assert.equal((await m.lookup(ROOT_INO, b('empty'))).ino, d.ino);
        assert.equal((await m.getattr(ROOT_INO)).nlink, rootLinks - 1);
        assert.equal(r2.replaced?.freed, undefined, 'an inode still in use is kept');
        assert.equal((await m.getattr(empty.ino)).nlink, 0);
        assert.deepEqual(await m.unlinkedInodes(), [empty.ino]);
        assert.deepEqual(await m.free(empty.ino), []);
        assert.deepEqual(await m.unlinkedInodes(), []);

        await m.rename(ROOT_INO, b('g'), ROOT_INO, b('full'), RENAME_EXCHANGE, tick()); // exchange a file and a dir
        assert.equal((await m.lookup(ROOT_INO, b('full'))).ino, f.ino);
        assert.equal((await m.lookup(ROOT_INO, b('g'))).ino, full.ino);
        assert.equal((await m.getattr(f.ino)).nlink, 1);
        assert.equal((await m.getattr(full.ino)).nlink, 2);
      }));

      it('moves directories between parents with their link counts', withEngine(async (m) => {
        const a = await m.mknod(ROOT_INO, b('a'), dir(), tick());
        const z = await m.mknod(ROOT_INO, b('z'), dir(), tick());
        const x = await m.mknod(a.ino, b('x'), dir(), tick());
        const f = await m.mknod(a.ino, b('f'), file(), tick());
        const t = tick();
        await m.rename(a.ino, b('x'), z.ino, b('x'), 0, t);
        assert.equal(await m.parentOf(x.ino), z.ino);
        const [aa, zz] = [await m.getattr(a.ino), await m.getattr(z.ino)];
        assert.deepEqual([aa.nlink, zz.nlink], [2, 3]);
        for (const r of [aa, zz]) {
          assert.deepEqual(time(r, 'mtime'), t);
          assert.deepEqual(time(r, 'ctime'), t);
        }
        // Exchanging a directory and a file across parents moves one ".." link.
        await m.rename(z.ino, b('x'), a.ino, b('f'), RENAME_EXCHANGE, tick());
        assert.equal((await m.lookup(a.ino, b('f'))).ino, x.ino);
        assert.equal((await m.lookup(z.ino, b('x'))).ino, f.ino);
        assert.deepEqual([(await m.getattr(a.ino)).nlink, (await m.getattr(z.ino)).nlink], [3, 2]);
        assert.equal(await m.parentOf(x.ino), a.ino);
        // Exchanging a directory with its own descendant would make a cycle.
        const deep = await m.mknod(x.ino, b('deep'), dir(), tick());
        assert.equal(await errno(() => m.rename(a.ino, b('f'), x.ino, b('deep'), RENAME_EXCHANGE, tick())), E.EINVAL);
        assert.equal(await m.parentOf(deep.ino), x.ino);
      }));

      it('hard links count names; directories cannot be linked', withEngine(async (m) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        const d = await m.mknod(ROOT_INO, b('d'), dir(), tick());
        const t = tick();
        const l = await m.link(f.ino, d.ino, b('f2'), t);
        assert.equal(l.nlink, 2);
        assert.deepEqual(time(l, 'ctime'), t);
        assert.deepEqual(time(await m.getattr(d.ino), 'mtime'), t);
        assert.equal(await errno(() => m.link(d.ino, ROOT_INO, b('d2'), tick())), E.EPERM);
        assert.equal(await errno(() => m.link(f.ino, ROOT_INO, b('f'), tick())), E.EEXIST);
        assert.equal(await errno(() => m.link(f.ino, f.ino, b('x'), tick())), E.ENOTDIR);
        assert.equal(await errno(() => m.link(424242, ROOT_INO, b('x'), tick())), E.ENOENT);
        const u = await m.unlink(ROOT_INO, b('f'), tick());
        assert.equal(u.attr.nlink, 1);
        assert.equal(u.freed, undefined);
        assert.equal((await m.lookup(d.ino, b('f2'))).ino, f.ino);
        // renaming one link onto another link of the same inode does nothing
        await m.link(f.ino, d.ino, b('f3'), tick());
        await m.rename(d.ino, b('f2'), d.ino, b('f3'), 0, tick());
        assert.equal((await m.lookup(d.ino, b('f2'))).ino, f.ino);
        assert.equal((await m.getattr(f.ino)).nlink, 2);
      }));

      it('unlinking the last name frees the inode, or keeps it while in use', withEngine(async (m) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        await m.setxattr(f.ino, b('user.a'), b('v'), 0, tick());
        await m.commitContent([{ ino: f.ino, rows: new Map([[0, { hash: hash(1), len: 10 }], [3, { hash: hash(2), len: 10 }]]), size: 3 * 131072 + 10, storedBytes: 20 }]);
        const u = await m.unlink(ROOT_INO, b('f'), tick());
        assert.deepEqual(u.freed?.map((h) => h[0]).sort(), [1, 2], 'the freed inode hands back its block references');
        assert.equal(await errno(() => m.getattr(f.ino)), E.ENOENT);
        assert.deepEqual(await m.blocks(f.ino), []);

        const g = await m.mknod(ROOT_INO, b('g'), file(), tick());
        await m.commitContent([{ ino: g.ino, rows: new Map([[0, { hash: hash(3), len: 10 }]]), size: 10, storedBytes: 10 }]);
        const open = await m.unlink(ROOT_INO, b('g'), tick(), (ino) => ino === g.ino);
        assert.equal(open.freed, undefined);
        assert.equal(open.attr.nlink, 0);
        assert.deepEqual(await m.unlinkedInodes(), [g.ino]);
        assert.equal((await m.blocks(g.ino)).length, 1, 'an unlinked open file keeps its content');
        assert.deepEqual((await m.free(g.ino)).map((h) => h[0]), [3]);
        assert.deepEqual(await m.unlinkedInodes(), []);
        assert.equal(await errno(() => m.getattr(g.ino)), E.ENOENT);
        // A named inode is not freed.
        const h = await m.mknod(ROOT_INO, b('h'), file(), tick());
        assert.deepEqual(await m.free(h.ino), []);
        assert.equal((await m.getattr(h.ino)).nlink, 1);
      }));

      it('symlinks keep their target bytes', withEngine(async (m) => {
        const target = Buffer.from([0x2e, 0x2e, 0x2f, 0xff, 0x61]);
        const s = await m.mknod(ROOT_INO, b('ln'), { mode: S_IFLNK | 0o777, uid: 0, gid: 0, target }, tick());
        assert.ok((await m.readlink(s.ino)).equals(target));
        assert.equal(s.size, target.length);
        assert.equal(s.mode & S_IFMT, S_IFLNK);
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        assert.equal(await errno(() => m.readlink(f.ino)), E.EINVAL);
        assert.equal(await errno(() => m.mknod(ROOT_INO, b('e'), { mode: S_IFLNK | 0o777, uid: 0, gid: 0, target: Buffer.alloc(0) }, tick())), E.ENOENT);
        assert.equal(await errno(() => m.mknod(ROOT_INO, b('e'), { mode: S_IFLNK | 0o777, uid: 0, gid: 0, target: Buffer.alloc(4096, 0x61) }, tick())), E.ENAMETOOLONG);
        const u = await m.unlink(ROOT_INO, b('ln'), tick());
        assert.deepEqual(u.freed, []);
        assert.equal(await errno(() => m.readlink(s.ino)), E.ENOENT);
      }));

      it('lists directories in pages that resume after any entry', withEngine(async (m) => {
        const d = await m.mknod(ROOT_INO, b('d'), dir(), tick());
        for (let i = 0; i < 300; i++) await m.mknod(d.ino, b(`n${String(i).padStart(3, '0')}`), i % 10 === 0 ? dir() : file(), tick());
        const seen: string[] = [];
        let after: Buffer | undefined;
        for (let pages = 0; pages < 100; pages++) {
          const page = await m.readdir(d.ino, after, 7);
          for (const e of page.entries) {
            seen.push(e.name.toString());
            assert.equal(isDir(e.mode), e.name.toString().endsWith('0'));
          }
          if (!page.next) break;
          assert.ok(page.entries.length === 7);
          after = page.next;
        }
        assert.equal(seen.length, 300);
        assert.deepEqual(seen, [...seen].sort());
        assert.equal(new Set(seen).size, 300);
        const all = await m.readdir(d.ino);
        assert.equal(all.entries.length, 300);
        assert.equal(all.next, undefined);
        // An entry removed between pages does not stop the listing.
        const first = await m.readdir(d.ino, undefined, 2);
        await m.unlink(d.ino, b('n001'), tick());
        const rest = await m.readdir(d.ino, first.next, 2);
        assert.deepEqual(rest.entries.map((e) => e.name.toString()), ['n002', 'n003']);
      }));
    });

    describe('extended attributes', () => {
      it('sets, gets, lists and removes xattrs with Linux flags and errnos', withEngine(async (m) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        const ino = f.ino;
        await m.setxattr(ino, b('user.a'), b('1'), 0, tick());
        await m.setxattr(ino, b('user.b'), Buffer.from([0, 1, 2]), 0, tick());
        assert.equal(await errno(() => m.setxattr(ino, b('user.a'), b('2'), XATTR_CREATE, tick())), E.EEXIST);
        assert.equal(await errno(() => m.setxattr(ino, b('user.c'), b('2'), XATTR_REPLACE, tick())), E.ENODATA);
        const t = tick();
        await m.setxattr(ino, b('user.a'), b('22'), XATTR_REPLACE, t);
        assert.deepEqual(time(await m.getattr(ino), 'ctime'), t);
        assert.equal((await m.getxattr(ino, b('user.a'))).toString(), '22');
        assert.deepEqual(await m.getxattr(ino, b('user.b')), Buffer.from([0, 1, 2]));
        assert.deepEqual((await m.listxattr(ino)).map((n) => n.toString()), ['user.a', 'user.b']);
        const t2 = tick();
        await m.removexattr(ino, b('user.a'), t2);
        assert.deepEqual(time(await m.getattr(ino), 'ctime'), t2);
        assert.equal(await errno(() => m.getxattr(ino, b('user.a'))), E.ENODATA);
        assert.equal(await errno(() => m.removexattr(ino, b('user.a'), tick())), E.ENODATA);
        assert.equal(await errno(() => m.setxattr(ino, b('user.big'), Buffer.alloc(65537), 0, tick())), E.E2BIG);
        assert.equal(await errno(() => m.setxattr(ino, Buffer.alloc(0), b('x'), 0, tick())), E.ERANGE);
        assert.equal(await errno(() => m.getxattr(ino, Buffer.alloc(256, 0x61))), E.ERANGE);
        assert.equal(await errno(() => m.getxattr(424242, b('user.a'))), E.ENOENT);
        assert.equal(await errno(() => m.setxattr(424242, b('user.a'), b('x'), 0, tick())), E.ENOENT);
        assert.equal(await m.anySecurityXattr(), false);
        await m.setxattr(ino, b('security.selinux'), b('x'), 0, tick());
        assert.equal(await m.anySecurityXattr(), true);
      }));
    });

    describe('content', () => {
      it('commits block rows, size, stored bytes and times in one step', withEngine(async (m) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        const g = await m.mknod(ROOT_INO, b('g'), file(), tick());
        const t = tick();
        await m.commitContent([
          { ino: f.ino, rows: new Map([[2, { hash: hash(2), len: 100 }], [0, { hash: hash(1), len: 131072 }]]), size: 2 * 131072 + 100, storedBytes: 131172, attrs: { mtime: t, ctime: t } },
          { ino: g.ino, rows: new Map([[0, { hash: hash(1), len: 131072 }]]), size: 131072, storedBytes: 131072 },
        ]);
        const rows = await m.blocks(f.ino);
        assert.deepEqual(rows.map((r) => [r.idx, r.hash[0], r.len]), [[0, 1, 131072], [2, 2, 100]]);
        const a = await m.getattr(f.ino);
        assert.deepEqual([a.size, a.stored_bytes], [2 * 131072 + 100, 131172]);
        assert.deepEqual(time(a, 'mtime'), t);
        assert.deepEqual(time(await m.getattr(g.ino), 'mtime'), time(g, 'mtime'));
        // A row given as undefined goes; others stay.
        await m.commitContent([{ ino: f.ino, rows: new Map([[2, undefined]]), size: 131072, storedBytes: 131072 }]);
        assert.deepEqual((await m.blocks(f.ino)).map((r) => r.idx), [0]);
        assert.equal((await m.getattr(f.ino)).size, 131072);
      }));
    });

    describe('order', () => {
      it('one client\'s changes land in call order, and a read sees the changes called before it', withEngine(async (m) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        for (let i = 0; i < 20; i++) {
          // The vfs commits content in the background while a utimens may arrive: the later call wins.
          const content = m.commitContent([{ ino: f.ino, rows: new Map([[0, { hash: hash(i), len: 10 }]]), size: 10, storedBytes: 10, attrs: { mtime: { s: 1000 + i, ns: 0 } } }]);
          const touch = m.setattr(f.ino, { mtime: { s: 5000 + i, ns: 0 } });
          const seen = m.getattr(f.ino);
          await Promise.all([content, touch]);
          assert.deepEqual(time(await seen, 'mtime'), { s: 5000 + i, ns: 0 });
          assert.deepEqual(time(await m.getattr(f.ino), 'mtime'), { s: 5000 + i, ns: 0 });
        }
        const made = m.mknod(ROOT_INO, b('g'), file(), tick());
        const found = m.lookup(ROOT_INO, b('g'));
        assert.equal((await found).ino, (await made).ino);
      }));
    });

    describe('durability hooks', () => {
      it('groups changes and makes them visible to another client at commit and durable at a barrier', withEngine(async (m, fx) => {
        m.setGroupCommit(60000);
        const f = await m.mknod(ROOT_INO, b('grouped'), file(), tick());
        await m.setattr(f.ino, { uid: 9 });
        assert.equal(await errno(() => m.mknod(ROOT_INO, b('grouped'), file(), tick())), E.EEXIST, 'a failed operation leaves the group intact');
        await m.commitGroup();
        const other = await fx.client();
        assert.equal((await other.lookup(ROOT_INO, b('grouped'))).uid, 9);
        await m.mknod(ROOT_INO, b('second'), file(), tick());
        await m.barrier();
        assert.equal((await other.lookup(ROOT_INO, b('second'))).ino > f.ino, true);
        m.setGroupCommit(0);
      }));

      it('keeps everything across close and reopen', withEngine(async (m, fx) => {
        const f = await m.mknod(ROOT_INO, b('f'), file(), tick());
        await m.setattr(f.ino, { mtime: { s: 1, ns: 999999999 } });
        await m.setxattr(f.ino, b('user.k'), b('v'), 0, tick());
        await m.barrier();
        const again = await fx.client();
        const r = await again.lookup(ROOT_INO, b('f'));
        assert.deepEqual(time(r, 'mtime'), { s: 1, ns: 999999999 });
        assert.equal((await again.getxattr(f.ino, b('user.k'))).toString(), 'v');
      }));
    });

    describe('two clients of one database', () => {
      it('changes of different fields of one inode are both kept (no lost update)', withEngine(async (a, fx) => {
        const c = await fx.client();
        const f = await a.mknod(ROOT_INO, b('f'), file(0o644), tick());
        // The pattern that lost updates when whole rows were written back: both read, both write.
        const seenByA = await a.getattr(f.ino);
        const seenByC = await c.getattr(f.ino);
        assert.deepEqual(seenByA, seenByC);
        await c.setattr(f.ino, { mode: 0o600 });
        await a.setattr(f.ino, { uid: 77 });
        await c.setxattr(f.ino, b('user.x'), b('1'), 0, tick());
        await a.commitContent([{ ino: f.ino, rows: new Map([[0, { hash: hash(5), len: 5 }]]), size: 5, storedBytes: 5 }]);
        const mtime = { s: 42, ns: 1 };
        await Promise.all([c.setattr(f.ino, { mtime }), a.setattr(f.ino, { gid: 88 })]);
        for (const m of [a, c]) {
          const r = await m.getattr(f.ino);
          assert.deepEqual([r.mode, r.uid, r.gid, r.size, r.stored_bytes], [S_IFREG | 0o600, 77, 88, 5, 5]);
          assert.deepEqual(time(r, 'mtime'), mtime);
        }
      }));

      it('creations by both in one directory all land, with the directory counted right', withEngine(async (a, fx) => {
        const c = await fx.client();
        const d = await a.mknod(ROOT_INO, b('d'), dir(), tick());
        const ops: Promise<unknown>[] = [];
        for (let i = 0; i < 60; i++) {
          ops.push(a.mknod(d.ino, b(`a${i}`), i % 3 === 0 ? dir() : file(), tick()));
          ops.push(c.mknod(d.ino, b(`c${i}`), i % 3 === 0 ? dir() : file(), tick()));
        }
        await Promise.all(ops);
        assert.equal((await c.readdir(d.ino)).entries.length, 120);
        assert.equal((await a.getattr(d.ino)).nlink, 2 + 40);
        // Both creating one name: exactly one wins.
        const race = await Promise.all([errno(() => a.mknod(d.ino, b('same'), file(), tick())), errno(() => c.mknod(d.ino, b('same'), dir(), tick()))]);
        assert.deepEqual(race.sort(), [E.EEXIST, undefined].sort());
        assert.equal((await a.getattr(d.ino)).nlink, 2 + 40 + (isDir((await c.lookup(d.ino, b('same'))).mode) ? 1 : 0));
      }));

      it('rename against unlink, link against unlink, rmdir against create: one outcome, no half state', withEngine(async (a, fx) => {
        const c = await fx.client();
        for (let round = 0; round < 10; round++) {
          const d = await a.mknod(ROOT_INO, b(`r${round}`), dir(), tick());
          const x = await a.mknod(d.ino, b('x'), file(), tick());
          const order = round % 2 === 0;
          const ren = () => errno(() => a.rename(d.ino, b('x'), d.ino, b('y'), 0, tick()));
          const del = () => errno(() => c.unlink(d.ino, b('x'), tick()));
          const [r, u] = order ? await Promise.all([ren(), del()]) : (await Promise.all([del(), ren()])).reverse();
          assert.ok((r === undefined) !== (u === undefined), 'exactly one of rename and unlink succeeds');
          assert.equal(r ?? u, E.ENOENT);
          const left = await names(c, d.ino);
          assert.deepEqual(left, r === undefined ? ['y'] : []);
          if (r === undefined) assert.equal((await a.getattr(x.ino)).nlink, 1);
          else assert.equal(await errno(() => a.getattr(x.ino)), E.ENOENT);
        }
        const f = await a.mknod(ROOT_INO, b('f'), file(), tick());
        const [l, u] = await Promise.all([errno(() => c.link(f.ino, ROOT_INO, b('f2'), tick())), errno(() => a.unlink(ROOT_INO, b('f'), tick(), () => false))]);
        const named = (await names(a, ROOT_INO)).filter((n) => n.startsWith('f'));
        if (l === undefined) {
          assert.equal(u, undefined);
          assert.deepEqual(named, ['f2']);
          assert.equal((await c.getattr(f.ino)).nlink, 1);
        } else {
          assert.equal(l, E.ENOENT);
          assert.deepEqual(named, []);
        }
        const e = await a.mknod(ROOT_INO, b('e'), dir(), tick());
        const [rm, mk] = await Promise.all([errno(() => a.rmdir(ROOT_INO, b('e'), tick())), errno(() => c.mknod(e.ino, b('child'), file(), tick()))]);
        assert.ok((rm === undefined) !== (mk === undefined), 'rmdir or the create inside, not both');
        if (rm === undefined) assert.equal(mk, E.ENOENT);
        else {
          assert.equal(rm, E.ENOTEMPTY);
          assert.deepEqual(await names(a, e.ino), ['child']);
        }
      }));

      it('unlink against a create of the same name: the name and the inode agree either way', withEngine(async (a, fx) => {
        const c = await fx.client();
        const d = await a.mknod(ROOT_INO, b('d'), dir(), tick());
        for (let round = 0; round < 20; round++) {
          const [made, gone] = await Promise.all([
            a.mknod(d.ino, b('x'), file(), tick()),
            errno(() => c.unlink(d.ino, b('x'), tick(), () => false)),
          ]);
          if (gone === undefined) {
            // The unlink came second: it removed the new file, and freed it.
            assert.deepEqual(await names(a, d.ino), []);
            assert.equal(await errno(() => a.getattr(made.ino)), E.ENOENT);
          } else {
            assert.equal(gone, E.ENOENT);
            assert.equal((await c.lookup(d.ino, b('x'))).ino, made.ino);
            assert.equal((await c.getattr(made.ino)).nlink, 1);
            await a.unlink(d.ino, b('x'), tick());
          }
        }
      }));

      it('two directories moved under each other at once: one move wins, no cycle', withEngine(async (a, fx) => {
        const c = await fx.client();
        /** The chain of parents from `ino` up to the root (fails on a cycle). */
        const ancestry = async (ino: number): Promise<number[]> => {
          const up: number[] = [];
          for (let cur: number | undefined = ino; cur !== undefined && cur !== ROOT_INO; cur = await c.parentOf(cur)) {
            assert.ok(!up.includes(cur) && up.length < 100, 'the tree has a cycle');
            up.push(cur);
          }
          return up;
        };
        for (let round = 0; round < 10; round++) {
          // top/x/p/s and top/y/q/r: moving p under r and q under s touch no directory in
          // common, and each alone is allowed; both together would make p, r, q, s a loop.
          const top = await a.mknod(ROOT_INO, b(`top${round}`), dir(), tick());
          const x = await a.mknod(top.ino, b('x'), dir(), tick());
          const y = await a.mknod(top.ino, b('y'), dir(), tick());
          const p = await a.mknod(x.ino, b('p'), dir(), tick());
          const q = await a.mknod(y.ino, b('q'), dir(), tick());
          const s = await a.mknod(p.ino, b('s'), dir(), tick());
          const r = await a.mknod(q.ino, b('r'), dir(), tick());
          const [pr, qs] = await Promise.all([
            errno(() => a.rename(x.ino, b('p'), r.ino, b('p'), 0, tick())),
            errno(() => c.rename(y.ino, b('q'), s.ino, b('q'), 0, tick())),
          ]);
          assert.ok((pr === undefined) !== (qs === undefined), 'exactly one move succeeds');
          assert.equal(pr ?? qs, E.EINVAL, 'the other move would put a directory inside itself');
          for (const d of [p, q, r, s]) assert.equal((await ancestry(d.ino)).at(-1), top.ino);
          assert.equal(await c.parentOf(pr === undefined ? p.ino : q.ino), pr === undefined ? r.ino : s.ino);
        }
      }));

      it('a client in another thread interleaving with this one loses nothing', withEngine(async (a, fx) => {
        const d = await a.mknod(ROOT_INO, b('shared'), dir(), tick());
        const f = await a.mknod(ROOT_INO, b('counted'), file(), tick());
        await a.barrier();
        const n = 150;
        const worker = new Worker(join(__dirname, 'support', 'meta-client-worker.js'), { workerData: { url: fx.url, dir: d.ino, file: f.ino, n } });
        const done = new Promise<{ ok: boolean; error?: string }>((resolve, reject) => {
          worker.once('message', resolve);
          worker.once('error', reject);
        });
        for (let i = 0; i < n; i++) {
          await a.mknod(d.ino, b(`main${i}`), i % 5 === 0 ? dir() : file(), tick());
          await a.link(f.ino, d.ino, b(`mainlink${i}`), tick());
          await a.setattr(f.ino, { uid: i });
          if (i % 3 === 0) await a.rename(d.ino, b(`main${i}`), d.ino, b(`moved${i}`), 0, tick());
          // Give the worker's operations a chance to run between ours.
          if (i % 10 === 0) await new Promise((r) => setImmediate(r));
        }
        const result = await done;
        await worker.terminate();
        assert.equal(result.error, undefined);
        assert.ok(result.ok);
        const entries = await names(a, d.ino);
        // Each side made n entries and n links (the worker makes `w…` names, gid changes).
        assert.equal(entries.length, 4 * n);
        assert.equal(entries.filter((e) => e.startsWith('moved')).length, n / 3);
        const dirs = 2 * (n / 5);
        assert.equal((await a.getattr(d.ino)).nlink, 2 + dirs);
        const r = await a.getattr(f.ino);
        assert.equal(r.nlink, 1 + 2 * n);
        assert.equal(r.uid, n - 1);
        assert.equal(r.gid, n - 1);
      }));
    });
  });
}

/** Asserts the errno a failure carries (for callers composing their own cases). */
