/**
 * Mount sessions of the PostgreSQL engine: a mount claims the database, a second claim is
 * refused while the first is live (naming it), a released or expired session lets the
 * next claim in, of two claims racing exactly one wins, a mount whose session was taken
 * away answers EIO to every change, and heartbeats go on across a restart of the server.
 * A real server (test/support/postgres.ts).
 */
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { describe, it } from 'node:test';
import { PgEngine } from '../src/meta/pg-engine';
import { PgMountSession, SessionInUseError } from '../src/meta/pg-mount-session';
import { PgSession } from '../src/meta/pg-session';
import { E, FsError } from '../src/posix/errors';
import { ROOT_INO, S_IFREG } from '../src/posix/file-system';
import { queryPostgres, startPostgres } from './support/postgres';
import { newVolumeInit } from './support/volume-init';

const server = startPostgres();

const t = { s: 1000, ns: 5 };
const file = { mode: S_IFREG | 0o644, uid: 0, gid: 0 };
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A new volume on a new database (no session taken): the address to open it with. */
async function freshVolume(): Promise<string> {
  const url = server.createDatabase();
  const address = url.slice('postgres:'.length);
  await (await PgEngine.open(address, { create: newVolumeInit() })).close();
  return address;
}

/** Opens the volume as a mount does, its log lines into `said`. */
function mountEngine(address: string, said: string[] = [], expiryMs?: number): Promise<PgEngine> {
  return PgEngine.open(address, { warn: (msg) => said.push(msg), mountSession: { readOnly: false, expiryMs } });
}

function sessionRows(address: string): Promise<Record<string, unknown>[]> {
  return queryPostgres(`postgres:${address}`, 'SELECT id, host, pid, read_only, heartbeat FROM sessions ORDER BY started');
}

/**
 * Of `claims` racing, exactly one wins, the others are refused as in use, and one session
 * row is left; the winners are `undo`ne in any case.
 */
async function oneWins<T>(address: string, round: number, claims: Promise<T>[], undo: (won: Awaited<T>) => Promise<void>): Promise<void> {
  const results = await Promise.allSettled(claims);
  const won = results.filter((r): r is PromiseFulfilledResult<Awaited<T>> => r.status === 'fulfilled');
  const lost = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  try {
    assert.equal(won.length, 1, `round ${round}: ${JSON.stringify(lost.map((r) => String(r.reason)))}`);
    assert.ok(lost[0].reason instanceof SessionInUseError, String(lost[0].reason));
    assert.equal((await sessionRows(address)).length, 1);
  } finally {
    for (const w of won) await undo(w.value);
  }
}

describe('mount sessions of the PostgreSQL engine', () => {
  it('refuses a second claim while the first is live, naming it; a released session lets the next claim in', async () => {
    const address = await freshVolume();
    const a = await mountEngine(address);
    try {
      const rows = await sessionRows(address);
      assert.equal(rows.length, 1);
      assert.deepEqual({ host: rows[0].host, pid: rows[0].pid, read_only: rows[0].read_only }, { host: hostname(), pid: process.pid, read_only: false });
      assert.equal(rows[0].id, a.mountSession?.id);
      await assert.rejects(mountEngine(address), (err: unknown) => {
        assert.ok(err instanceof SessionInUseError, String(err));
        assert.equal(err.host, hostname());
        assert.equal(err.pid, process.pid);
        assert.ok(err.lastSeenMs >= 0 && err.lastSeenMs < 30_000, `last seen ${err.lastSeenMs} ms ago`);
        assert.match(err.message, /in use by a mount on host .+ \(pid \d+, last seen \d+\.\d s ago\): unmount it there, or wait 30 s after it stopped/);
        return true;
      });
      assert.equal((await sessionRows(address)).length, 1, 'the refused claim left no row');
      // The conformance suite's engines take no session: they still open beside a mount.
      await (await PgEngine.open(address, {})).close();
    } finally {
      await a.close();
    }
    assert.equal((await sessionRows(address)).length, 0, 'a clean close deletes the row');
    const b = await mountEngine(address);
    try {
      await b.mknod(ROOT_INO, Buffer.from('b'), file, t);
    } finally {
      await b.close();
    }
  });

  it('keeps a live session by its heartbeats past its expiry; a session whose heartbeats stopped expires and is taken over', async () => {
    const address = await freshVolume();
    const saidA: string[] = [];
    const a = await mountEngine(address, saidA, 600);
    let b: PgEngine | undefined;
    try {
      await sleep(1500);
      await assert.rejects(mountEngine(address, [], 600), SessionInUseError, 'heartbeats every 200 ms keep a 600 ms session live');
      a.mountSession?.stop(); // as a daemon killed: the row stays, without heartbeats
      await sleep(900);
      b = await mountEngine(address, [], 600);
      const rows = await sessionRows(address);
      assert.deepEqual(
        rows.map((r) => r.id),
        [b.mountSession?.id],
        'the expired row is gone, the new one in',
      );
      await b.mknod(ROOT_INO, Buffer.from('by-b'), file, t);
      // The first mount, come back, must not write as if it still held the volume.
      await assert.rejects(a.mknod(ROOT_INO, Buffer.from('by-a'), file, t), (err: unknown) => err instanceof FsError && err.errno === E.EIO);
      await assert.rejects(a.barrier(), (err: unknown) => err instanceof FsError && err.errno === E.EIO);
      assert.equal(a.mountSession?.taken, true);
      assert.equal(saidA.filter((m) => /session in PostgreSQL expired/.test(m)).length, 1, `said once: ${JSON.stringify(saidA)}`);
      // Reads go on.
      assert.equal((await a.lookup(ROOT_INO, Buffer.from('by-b'))).ino > 0, true);
      await assert.rejects(a.lookup(ROOT_INO, Buffer.from('by-a')), (err: unknown) => err instanceof FsError && err.errno === E.ENOENT);
    } finally {
      await a.close();
      await b?.close();
    }
    assert.equal((await sessionRows(address)).length, 0, "closing the mount whose row was taken does not delete the new holder's");
  });

  it('a heartbeat that finds its row gone stops the mount writing', async () => {
    const address = await freshVolume();
    const said: string[] = [];
    const a = await mountEngine(address, said, 600);
    try {
      await queryPostgres(`postgres:${address}`, 'DELETE FROM sessions');
      await sleep(500);
      assert.equal(a.mountSession?.taken, true, 'the heartbeat noticed');
      await assert.rejects(a.mknod(ROOT_INO, Buffer.from('x'), file, t), (err: unknown) => err instanceof FsError && err.errno === E.EIO);
      assert.equal(said.filter((m) => /expired/.test(m)).length, 1);
    } finally {
      await a.close();
    }
  });

  it('of two claims racing from two clients at once, exactly one wins', async () => {
    const address = await freshVolume();
    // Whole opens racing, as two daemons started together.
    for (let round = 0; round < 4; round++) {
      await oneWins(address, round, [mountEngine(address), mountEngine(address)], (e) => e.close());
    }
    // The claims themselves started in one tick from two connected clients: their
    // transactions overlap, so only the table lock keeps both from seeing no other session.
    for (let round = 0; round < 20; round++) {
      const clients = [new PgSession(`postgres:${address}`, {}), new PgSession(`postgres:${address}`, {})];
      try {
        await Promise.all(clients.map((c) => c.read((pool) => pool.query('SELECT 1'))));
        const claims = clients.map((c) => PgMountSession.claim(c, { readOnly: false }, () => undefined));
        await oneWins(address, round, claims, (m) => m.release());
      } finally {
        for (const c of clients) await c.close();
      }
    }
  });

  it('a volume with a remote lets several claims in at once; none frees an open unlinked inode while another is live', async () => {
    const url = server.createDatabase();
    const address = url.slice('postgres:'.length);
    await (await PgEngine.open(address, { create: { ...newVolumeInit(), settings: { remote: 'local:/nowhere' } } })).close();
    const a = await mountEngine(address);
    const b = await mountEngine(address);
    let aOpen = true;
    try {
      assert.equal((await sessionRows(address)).length, 2);
      // A file A holds open, unlinked (as by a crash of its daemon, nothing freed it).
      const f = await a.mknod(ROOT_INO, Buffer.from('open-on-a'), file, t);
      await a.unlink(ROOT_INO, Buffer.from('open-on-a'), t, () => true);
      assert.deepEqual(await b.unlinkedInodes(), [], 'A may hold it open: not B\'s to free');
      await a.close();
      aOpen = false;
      assert.deepEqual(await b.unlinkedInodes(), [f.ino], 'B alone: it frees what nobody holds');
    } finally {
      if (aOpen) await a.close();
      await b.close();
    }
  });

  it('goes on with its heartbeats across a restart of the server', async () => {
    const address = await freshVolume();
    const said: string[] = [];
    const a = await mountEngine(address, said, 3000);
    try {
      server.restart();
      const restarted = Date.now();
      await sleep(2500);
      const rows = await sessionRows(address);
      assert.equal(rows.length, 1);
      assert.ok((rows[0].heartbeat as Date).getTime() > restarted - 200, `a heartbeat after the restart: ${JSON.stringify(rows[0])} vs ${restarted}`);
      assert.equal(a.mountSession?.taken, false);
      await a.mknod(ROOT_INO, Buffer.from('after-restart'), file, t);
      await a.barrier();
      await assert.rejects(mountEngine(address), SessionInUseError);
    } finally {
      await a.close();
    }
  });
});
