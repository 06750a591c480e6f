/**
 * The PostgreSQL engine's change feed: two engines on one database, standing in for two
 * machines. What A changes (mknod, rename, unlink, setattr, link, setxattr, commitContent)
 * reaches B as a notice naming the inodes and entries it changed; A does not hear its own;
 * a change that failed (rolled back) says nothing; after a restart of the server the feed
 * listens again and says that everything may have changed. A real server
 * (test/support/postgres.ts).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { ChangeWatch, ExternalChange } from '../src/meta/engine';
import { ChangeNotice, parseNotice } from '../src/meta/pg-change-feed';
import { PgEngine } from '../src/meta/pg-engine';
import { E } from '../src/posix/errors';
import { ROOT_INO, S_IFDIR, S_IFREG } from '../src/posix/file-system';
import { errno } from './support/errno';
import { startPostgres } from './support/postgres';
import { newVolumeInit } from './support/volume-init';

const server = startPostgres();

const t = { s: 1000, ns: 5 };
const file = { mode: S_IFREG | 0o644, uid: 0, gid: 0 };
const dir = { mode: S_IFDIR | 0o755, uid: 0, gid: 0 };
const name = (s: string): Buffer => Buffer.from(s);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** What an engine's watcher heard, and a way to wait for the next of it. */
class Heard {
  readonly changes: ExternalChange[] = [];
  private waiting: (() => void) | undefined;
  readonly on = (change: ExternalChange): void => {
    this.changes.push(change);
    this.waiting?.();
  };

  /** The next change heard (within `ms`), taken off the list. */
  async next(ms = 5000): Promise<ExternalChange> {
    const deadline = Date.now() + ms;
    while (this.changes.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no change notice within ${ms} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiting = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiting = undefined;
    }
    return this.changes.shift() as ExternalChange;
  }

  /** Asserts nothing more is heard for `ms`. */
  async silent(ms = 300): Promise<void> {
    await sleep(ms);
    assert.deepEqual(this.changes, []);
  }
}

/** The inodes and the entries (as "parent/name") a "names" change lists, sorted. */
function named(change: ExternalChange): { inodes: number[]; entries: string[] } {
  assert.equal(change.kind, 'names', JSON.stringify(change));
  if (change.kind !== 'names') throw new Error('unreachable');
  return { inodes: [...change.inodes].sort((x, y) => x - y), entries: change.entries.map(([p, n]) => `${p}/${n.toString()}`).sort() };
}

const sorted = (xs: number[]): number[] => [...xs].sort((x, y) => x - y);

describe('the change feed of the PostgreSQL engine', () => {
  let a: PgEngine;
  let b: PgEngine;
  const heardByA = new Heard();
  const heardByB = new Heard();
  let watches: ChangeWatch[] = [];

  before(async () => {
    const url = server.createDatabase();
    const address = url.slice('postgres:'.length);
    // What the engines say of the restart below goes here, not to the test's output.
    a = await PgEngine.open(address, { create: newVolumeInit(), warn: () => undefined });
    b = await PgEngine.open(address, { warn: () => undefined });
    watches = [a.watchChanges(heardByA.on), b.watchChanges(heardByB.on)];
    await Promise.all(watches.map((w) => w.ready));
  });

  after(async () => {
    for (const w of watches) w.stop();
    await a?.close();
    await b?.close();
  });

  it('names the inodes and entries each change made, to the other client only', async () => {
    const d = await a.mknod(ROOT_INO, name('d'), dir, t);
    assert.deepEqual(named(await heardByB.next()), { inodes: [ROOT_INO], entries: [`${ROOT_INO}/d`] });
    const f = await a.mknod(d.ino, name('f'), file, t);
    assert.deepEqual(named(await heardByB.next()), { inodes: [d.ino], entries: [`${d.ino}/f`] });

    await a.rename(d.ino, name('f'), ROOT_INO, name('g'), 0, t);
    assert.deepEqual(named(await heardByB.next()), { inodes: sorted([ROOT_INO, d.ino, f.ino]), entries: [`${ROOT_INO}/g`, `${d.ino}/f`].sort() });

    await a.setattr(f.ino, { mode: 0o600, uid: 7, mtime: { s: 5, ns: 0 } });
    assert.deepEqual(named(await heardByB.next()), { inodes: [f.ino], entries: [] });

    await a.link(f.ino, d.ino, name('h'), t);
    assert.deepEqual(named(await heardByB.next()), { inodes: sorted([d.ino, f.ino]), entries: [`${d.ino}/h`] });

    await a.setxattr(f.ino, name('user.x'), name('1'), 0, t);
    assert.deepEqual(named(await heardByB.next()), { inodes: [f.ino], entries: [] });

    await a.commitContent([{ ino: f.ino, rows: new Map([[0, { hash: Buffer.alloc(32, 1), len: 10 }]]), size: 10, storedBytes: 10 }]);
    assert.deepEqual(named(await heardByB.next()), { inodes: [f.ino], entries: [] });

    const gone = await a.unlink(ROOT_INO, name('g'), t);
    assert.equal(gone.attr.nlink, 1);
    assert.deepEqual(named(await heardByB.next()), { inodes: sorted([ROOT_INO, f.ino]), entries: [`${ROOT_INO}/g`] });

    // A name that is bytes, not text, arrives as the same bytes.
    const odd = Buffer.from([0xff, 0x01, 0x80, 0x2f - 1]);
    await a.mknod(ROOT_INO, odd, file, t);
    const c = await heardByB.next();
    assert.ok(c.kind === 'names' && c.entries.length === 1 && c.entries[0][1].equals(odd), JSON.stringify(c));

    // B's changes reach A, and neither hears its own.
    assert.equal(await errno(() => b.rmdir(ROOT_INO, name('d'), t)), E.ENOTEMPTY);
    await b.unlink(d.ino, name('h'), t);
    assert.deepEqual(named(await heardByA.next()), { inodes: sorted([d.ino, f.ino]), entries: [`${d.ino}/h`] });
    await b.rmdir(ROOT_INO, name('d'), t);
    assert.deepEqual(named(await heardByA.next()), { inodes: sorted([ROOT_INO, d.ino]), entries: [`${ROOT_INO}/d`] });
    await heardByA.silent();
    await heardByB.silent();
  });

  it('a commit of many files at once arrives in several notices that name every one', async () => {
    const made: number[] = [];
    for (let i = 0; i < 1200; i++) made.push((await a.mknod(ROOT_INO, name(`many-${i}`), file, t)).ino);
    for (let i = 0; i < 1200; i++) await heardByB.next();
    await a.commitContent(made.map((ino) => ({ ino, rows: new Map([[0, { hash: Buffer.alloc(32, 2), len: 1 }]]), size: 1, storedBytes: 1 })));
    const heard: number[] = [];
    while (heard.length < made.length) {
      const c = await heardByB.next();
      assert.equal(c.kind, 'names');
      if (c.kind === 'names') heard.push(...c.inodes);
    }
    assert.deepEqual(sorted(heard), sorted(made));
    await heardByB.silent();
  });

  it('says nothing of a change that failed and was rolled back', async () => {
    await a.mknod(ROOT_INO, name('taken'), file, t);
    await heardByB.next();
    assert.equal(await errno(() => a.mknod(ROOT_INO, name('taken'), file, t)), E.EEXIST);
    assert.equal(await errno(() => a.link(ROOT_INO, ROOT_INO, name('dirlink'), t)), E.EPERM);
    assert.equal(await errno(() => a.rename(ROOT_INO, name('absent'), ROOT_INO, name('x'), 0, t)), E.ENOENT);
    assert.equal(await errno(() => a.setxattr(ROOT_INO, name('user.none'), name('v'), 2 /* XATTR_REPLACE */, t)), E.ENODATA);
    // Reads publish nothing either.
    await a.lookup(ROOT_INO, name('taken'));
    await a.readdir(ROOT_INO);
    await heardByB.silent(500);
  });

  it('listens again after the server restarted, and then says that everything may have changed', async () => {
    server.restart();
    const c = await heardByB.next(15_000);
    assert.equal(c.kind, 'everything');
    assert.equal((await heardByA.next(15_000)).kind, 'everything');
    // And follows changes again from there.
    const made = await a.mknod(ROOT_INO, name('after-restart'), file, t);
    assert.ok(made.ino > 0);
    assert.deepEqual(named(await heardByB.next()), { inodes: [ROOT_INO], entries: [`${ROOT_INO}/after-restart`] });
  });
});

describe('change notices', () => {
  it('fit PostgreSQL\'s payload limit: a large change in several notices, one too large for them is "everything"', () => {
    const small = new ChangeNotice();
    small.inode(1, 2);
    small.entry(1, name('a'));
    assert.equal(small.payloads('me').length, 1);
    assert.deepEqual(parseNotice(small.payloads('me')[0], 'other'), { kind: 'names', inodes: [1, 2], entries: [[1, name('a')]] });
    assert.equal(parseNotice(small.payloads('me')[0], 'me'), undefined, 'a client skips its own notices');
    assert.deepEqual(new ChangeNotice().payloads('me'), [], 'nothing changed: no notice');
    assert.equal(new ChangeNotice().statement('me'), undefined);

    // 40 names of 255 bytes and 2,000 inodes of 16 digits: several notices that say it all.
    const big = new ChangeNotice();
    const inos = Array.from({ length: 2000 }, (_, i) => 2 ** 52 + i);
    big.inode(...inos);
    for (let i = 0; i < 40; i++) big.entry(7, Buffer.alloc(255, i));
    const parts = big.payloads('me');
    assert.ok(parts.length > 2 && parts.length <= 16, `${parts.length} notices`);
    const heard = parts.map((p) => {
      assert.ok(p.length < 8000, `${p.length} bytes`);
      const c = parseNotice(p, 'other');
      assert.equal(c?.kind, 'names');
      return c as Extract<ExternalChange, { kind: 'names' }>;
    });
    assert.deepEqual(heard.flatMap((c) => c.inodes), inos);
    assert.deepEqual(
      heard.flatMap((c) => c.entries.map(([p, n]) => `${p}/${n[0]}/${n.length}`)),
      Array.from({ length: 40 }, (_, i) => `7/${i}/255`),
    );
    assert.equal(big.statement('me')?.split('; NOTIFY ').length, parts.length, 'all sent with the COMMIT');

    const huge = new ChangeNotice();
    huge.inode(...Array.from({ length: 20_000 }, (_, i) => 2 ** 52 + i));
    assert.deepEqual(huge.payloads('me').map((p) => parseNotice(p, 'other')), [{ kind: 'everything', reason: 'a change too large to list' }]);
    assert.equal(parseNotice('not json', 'other')?.kind, 'everything', 'a notice that cannot be read is never taken as nothing');
  });
});
