/**
 * Files open in one mount session of a shared PostgreSQL volume survive their unlink by
 * another: two engines with mount sessions (as two machines' daemons), a real server
 * (test/support/postgres.ts). The records (session_opens), the race of an open recorded
 * by one against the other's unlink in both orders, the last close, and what an expired
 * session held.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Client } from 'pg';
import type { InodeRow } from '../src/meta/meta-db';
import { PgEngine } from '../src/meta/pg-engine';
import { E, FsError } from '../src/posix/errors';
import { ROOT_INO, S_IFREG } from '../src/posix/file-system';
import { inodeRowCounts, startPostgres } from './support/postgres';
import { newVolumeInit } from './support/volume-init';

const server = startPostgres();

const t = { s: 1000, ns: 5 };
const file = { mode: S_IFREG | 0o644, uid: 0, gid: 0 };
const notInUse = (): boolean => false;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A new volume with a remote (so several sessions share it) on a new database: its URL. */
async function sharedVolume(): Promise<string> {
  const url = server.createDatabase();
  await (await PgEngine.open(url.slice('postgres:'.length), { create: { ...newVolumeInit(), settings: { remote: 'local:/nowhere' } } })).close();
  return url;
}

function mountEngine(url: string, expiryMs?: number): Promise<PgEngine> {
  return PgEngine.open(url.slice('postgres:'.length), { warn: () => undefined, mountSession: { readOnly: false, expiryMs } });
}

/** A file with three block rows (as a commit of its content makes them). */
async function fileWithBlocks(e: PgEngine, name: string): Promise<InodeRow> {
  const row = await e.mknod(ROOT_INO, Buffer.from(name), file, t);
  const rows = new Map([0, 1, 2].map((i) => [i, { hash: Buffer.alloc(32, i + 1), len: 131072 }]));
  await e.commitContent([{ ino: row.ino, rows, size: 3 * 131072, storedBytes: 3 * 131072 }]);
  return row;
}

const isErrno = (errno: number) => (err: unknown): boolean => err instanceof FsError && err.errno === errno;

/** Closes a handle and drops the hold at once if it was the last (instead of after the linger). */
async function closeNow(e: PgEngine, ino: number): Promise<Buffer[]> {
  const closing = e.closed(ino, false);
  await e.flushClosed();
  return closing;
}

describe('files held open by the mount sessions of a shared PostgreSQL volume', () => {
  it('an unlink elsewhere keeps a file open here without a name; the last close here frees it', async () => {
    const url = await sharedVolume();
    const a = await mountEngine(url);
    const b = await mountEngine(url);
    try {
      const f = await fileWithBlocks(b, 'f');
      assert.deepEqual((await a.opened(f.ino))?.map((b) => [b.idx, b.hash[0], b.len]), [[0, 1, 131072], [1, 2, 131072], [2, 3, 131072]], 'the block map read with the record');
      assert.equal(await a.opened(f.ino), undefined, 'a second handle: no second record, nothing read');
      assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 1, blocks: 3, opens: 1 });
      const d = await b.unlink(ROOT_INO, Buffer.from('f'), t, notInUse);
      assert.equal(d.attr.nlink, 0);
      assert.equal(d.freed, undefined, 'A holds it open: not freed');
      assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 1, blocks: 3, opens: 1 });
      assert.equal((await a.blocks(f.ino)).length, 3, 'A still reads its block map');
      assert.deepEqual(await b.unlinkedInodes(), [], 'A holds it: not for a mount to recover');
      assert.deepEqual(await b.free(f.ino), [], 'nor for B to free');
      assert.deepEqual(await a.closed(f.ino, false), [], 'one handle of two closed');
      assert.equal((await inodeRowCounts(url, f.ino)).inode, 1);
      const freed = await closeNow(a, f.ino);
      assert.deepEqual(freed.map((h) => h[0]).sort(), [1, 2, 3], 'the last close frees it, with its block references');
      assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 0, blocks: 0, opens: 0 });
      // A file that keeps its name: the last close drops only the record.
      const g = await fileWithBlocks(b, 'g');
      await a.opened(g.ino);
      assert.deepEqual(await a.closed(g.ino, false), [], 'dropped after the linger');
      assert.deepEqual(await inodeRowCounts(url, g.ino), { inode: 1, blocks: 3, opens: 0 });
      // Opened again while its hold lingers: nothing to record, and the hold stays.
      await a.opened(g.ino);
      const lingering = a.closed(g.ino, false);
      assert.equal((await inodeRowCounts(url, g.ino)).opens, 1, 'lingers');
      await a.opened(g.ino);
      assert.deepEqual(await lingering, [], 'the reopen took the hold over');
      await b.unlink(ROOT_INO, Buffer.from('g'), t, notInUse);
      assert.deepEqual(await inodeRowCounts(url, g.ino), { inode: 1, blocks: 3, opens: 1 }, 'held by the reopen');
      assert.equal((await a.closed(g.ino, false)).length, 3, 'freed by the close after the linger');
      assert.deepEqual(await inodeRowCounts(url, g.ino), { inode: 0, blocks: 0, opens: 0 });
      const empty = await b.mknod(ROOT_INO, Buffer.from('empty'), file, t);
      assert.deepEqual(await a.opened(empty.ino), [], 'a file without blocks: an empty map, not ENOENT');
      assert.equal((await inodeRowCounts(url, empty.ino)).opens, 1);
      await closeNow(a, empty.ino);
      await assert.rejects(a.opened(g.ino), isErrno(E.ENOENT), 'a freed inode cannot be opened');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a file created open is held from its create; held by two sessions, it is freed at the last close of both', async () => {
    const url = await sharedVolume();
    const a = await mountEngine(url);
    const b = await mountEngine(url);
    try {
      const f = await a.mknod(ROOT_INO, Buffer.from('new'), { ...file, open: true }, t);
      assert.equal((await inodeRowCounts(url, f.ino)).opens, 1, 'recorded in the create');
      await b.opened(f.ino);
      const other = await a.mknod(ROOT_INO, Buffer.from('other'), file, t);
      const r = await b.rename(ROOT_INO, Buffer.from('other'), ROOT_INO, Buffer.from('new'), 0, t, notInUse);
      assert.equal(r.replaced?.attr.ino, f.ino);
      assert.equal(r.replaced?.freed, undefined, 'renamed over while open in two sessions: kept');
      assert.deepEqual(await a.closed(f.ino, false), [], 'B still holds it');
      assert.equal((await inodeRowCounts(url, f.ino)).inode, 1);
      await closeNow(b, f.ino);
      assert.equal((await inodeRowCounts(url, f.ino)).inode, 0, 'freed at the last close of all');
      assert.equal((await inodeRowCounts(url, other.ino)).inode, 1);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('an open recorded by B against an unlink by A: whichever takes the inode first decides, in both orders', async () => {
    const url = await sharedVolume();
    const a = await mountEngine(url);
    const b = await mountEngine(url);
    // A third client holds the inode's row so that both requests wait, queued in the order made.
    const blocker = new Client({ connectionString: url });
    await blocker.connect();
    /** Until `n` requests wait for a lock (the blocker's). */
    const waiters = async (n: number): Promise<void> => {
      for (let i = 0; i < 500; i++) {
        const r = await blocker.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()");
        if ((r.rows[0] as { n: number }).n >= n) return;
        await sleep(10);
      }
      assert.fail(`${n} requests never waited for the lock`);
    };
    try {
      for (const openFirst of [true, false]) {
        const name = openFirst ? 'open-first' : 'unlink-first';
        const f = await fileWithBlocks(a, name);
        await blocker.query('BEGIN');
        await blocker.query('SELECT 1 FROM inodes WHERE ino = $1 FOR UPDATE', [f.ino]);
        let opening: Promise<unknown>;
        let unlinking: Promise<{ freed?: Buffer[] }>;
        if (openFirst) {
          opening = b.opened(f.ino);
          await waiters(1);
          unlinking = a.unlink(ROOT_INO, Buffer.from(name), t, notInUse);
          await waiters(2);
        } else {
          unlinking = a.unlink(ROOT_INO, Buffer.from(name), t, notInUse);
          await waiters(1);
          opening = b.opened(f.ino);
          await waiters(2);
        }
        await blocker.query('COMMIT');
        const [opened, unlinked] = await Promise.allSettled([opening, unlinking]);
        if (openFirst) {
          assert.equal(opened.status, 'fulfilled', String((opened as PromiseRejectedResult).reason));
          assert.equal(unlinked.status, 'fulfilled');
          assert.equal((unlinked as PromiseFulfilledResult<{ freed?: Buffer[] }>).value.freed, undefined, 'B\'s open came first: kept');
          assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 1, blocks: 3, opens: 1 });
          assert.equal((await closeNow(b, f.ino)).length, 3, 'freed at B\'s close');
          assert.equal((await inodeRowCounts(url, f.ino)).inode, 0);
        } else {
          assert.equal(unlinked.status, 'fulfilled');
          assert.equal((unlinked as PromiseFulfilledResult<{ freed?: Buffer[] }>).value.freed?.length, 3, 'the unlink came first: freed');
          assert.equal(opened.status, 'rejected');
          assert.ok(isErrno(E.ENOENT)((opened as PromiseRejectedResult).reason), String((opened as PromiseRejectedResult).reason));
          assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 0, blocks: 0, opens: 0 });
        }
      }
      // And racing freely: never an open that succeeded on an inode the unlink freed.
      for (let round = 0; round < 20; round++) {
        const name = `race-${round}`;
        const f = await fileWithBlocks(a, name);
        const [opened, unlinked] = await Promise.allSettled([b.opened(f.ino), a.unlink(ROOT_INO, Buffer.from(name), t, notInUse)]);
        assert.equal(unlinked.status, 'fulfilled');
        const freed = (unlinked as PromiseFulfilledResult<{ freed?: Buffer[] }>).value.freed !== undefined;
        assert.equal(opened.status === 'fulfilled', !freed, `round ${round}: opened ${opened.status}, freed ${freed}`);
        if (!freed) await closeNow(b, f.ino);
        assert.equal((await inodeRowCounts(url, f.ino)).inode, 0, `round ${round}: freed in the end`);
      }
    } finally {
      await blocker.end();
      await a.close();
      await b.close();
    }
  });

  it('what an expired session held is freed by the next mount; a live one\'s is not', async () => {
    const url = await sharedVolume();
    const a = await mountEngine(url, 1500);
    const b = await mountEngine(url, 1500);
    let aOpen = true;
    try {
      const f = await fileWithBlocks(b, 'held-by-a');
      await a.opened(f.ino);
      await b.unlink(ROOT_INO, Buffer.from('held-by-a'), t, notInUse);
      assert.deepEqual(await b.unlinkedInodes(), []);
      a.mountSession?.stop(); // as a daemon killed: its rows stay, without heartbeats
      await sleep(2000);
      assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 1, blocks: 3, opens: 1 }, 'nothing frees it by itself');
      // The next mount's claim deletes the expired session with its records; its recovery frees the inode.
      const c = await mountEngine(url, 1500);
      try {
        assert.equal((await inodeRowCounts(url, f.ino)).opens, 0, 'the claim took the expired session\'s records');
        assert.deepEqual(await c.unlinkedInodes(), [f.ino], 'while B is live');
        assert.equal((await c.free(f.ino)).length, 3);
        assert.deepEqual(await inodeRowCounts(url, f.ino), { inode: 0, blocks: 0, opens: 0 });
      } finally {
        await c.close();
      }
      await a.close();
      aOpen = false;
    } finally {
      if (aOpen) await a.close();
      await b.close();
    }
  });
});
