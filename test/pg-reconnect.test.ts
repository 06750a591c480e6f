/**
 * The PostgreSQL engine when its server goes away: operations made while the server is
 * down or restarting complete once it is back, in call order and each once; a server that
 * stays away is EIO after the bounded wait (not a hang, not a dead process); a change whose
 * connection dies inside its COMMIT is run again only once the server says it did not
 * commit; a crash that loses acknowledged commits makes every later sync EIO, a restart
 * does not. A real server (test/support/postgres.ts), stopped, started and restarted by
 * the test.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Client } from 'pg';
import { PgEngine } from '../src/meta/pg-engine';
import { FsError, E } from '../src/posix/errors';
import { ROOT_INO, S_IFREG } from '../src/posix/file-system';
import { queryPostgres, startPostgres } from './support/postgres';
import { newVolumeInit } from './support/volume-init';

// The WAL writer slowed down, so that an asynchronous commit is likely still only in the
// server's memory when a test crashes it (the tests that crash the server make their
// earlier changes durable with a barrier first, except the one about lost changes).
const server = startPostgres(['wal_writer_delay=10s']);

const t = { s: 1000, ns: 5 };
const file = { mode: S_IFREG | 0o644, uid: 0, gid: 0 };
const name = (s: string): Buffer => Buffer.from(s);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A new volume on a new database, and its URL. The log lines go to `said`. */
async function freshEngine(said: string[], reconnectWaitMs?: number): Promise<{ engine: PgEngine; url: string }> {
  const url = server.createDatabase();
  const engine = await PgEngine.open(url.slice('postgres:'.length), { create: newVolumeInit(), warn: (msg) => said.push(msg) }, { reconnectWaitMs });
  return { engine, url };
}

const isEio = (err: unknown): boolean => err instanceof FsError && err.errno === E.EIO;

describe('the PostgreSQL engine across a lost server', () => {
  it('completes operations made while the server is down once it is back, each once and in call order', async () => {
    const said: string[] = [];
    const { engine } = await freshEngine(said);
    try {
      const before = await engine.mknod(ROOT_INO, name('before'), file, t);
      await engine.barrier();
      server.stop(); // at once, as a crash: every connection of the pool is cut
      // Made while the server is down: each waits for it, and they stay in call order.
      const made = engine.mknod(ROOT_INO, name('during'), file, t);
      const grown = engine.setattr(before.ino, { size: 4096 });
      const renamed = engine.rename(ROOT_INO, name('during'), ROOT_INO, name('renamed'), 0, t);
      const seen = engine.lookup(ROOT_INO, name('renamed'));
      const listed = engine.readdir(ROOT_INO);
      await sleep(1500);
      server.start();
      const during = await made;
      assert.equal((await grown).size, 4096);
      await renamed;
      assert.equal((await seen).ino, during.ino, 'the lookup ran after the rename called before it');
      assert.deepEqual(
        (await listed).entries.map((e) => e.name.toString()),
        ['before', 'renamed'],
        'one entry per create: none made twice, none lost',
      );
      assert.equal((await engine.getattr(before.ino)).size, 4096);
      assert.ok(said.some((m) => /lost the connection to PostgreSQL/.test(m)), said.join('\n'));
      assert.equal(said.filter((m) => /lost the connection/.test(m)).length, 1, 'said once for the outage, not per operation');
      assert.ok(said.some((m) => /connected to PostgreSQL again/.test(m)), said.join('\n'));
    } finally {
      server.start();
      await engine.close();
    }
  });

  it('keeps working through restarts under a stream of changes, and loses none it confirmed', async () => {
    const { engine, url } = await freshEngine([]);
    try {
      const confirmed: string[] = [];
      let stop = false;
      // Not one error: a change cut off before its COMMIT runs again, one cut off in it is asked after.
      const writer = (async () => {
        for (let i = 0; !stop && i < 5000; i++) {
          const n = `f${i}`;
          const node = await engine.mknod(ROOT_INO, name(n), file, t);
          await engine.setattr(node.ino, { size: i });
          confirmed.push(n);
        }
      })();
      for (let round = 0; round < 2; round++) {
        await sleep(400);
        server.restart(); // fast: sessions ended, the WAL flushed, as an administrator restarts it
      }
      await sleep(400);
      stop = true;
      await writer;
      assert.ok(confirmed.length > 10, `changes went on (${confirmed.length})`);
      await engine.barrier();
      const rows = await queryPostgres(url, 'SELECT convert_from(d.name, \'UTF8\') AS name, i.size FROM dentries d JOIN inodes i ON i.ino = d.ino');
      const sizes = new Map(rows.map((r) => [r.name as string, Number(r.size)]));
      assert.equal(sizes.size, confirmed.length, 'exactly the confirmed files, none made twice');
      for (const n of confirmed) assert.equal(sizes.get(n), Number(n.slice(1)), `${n} has the size set after it`);
    } finally {
      await engine.close();
    }
  });

  it('answers EIO after the bounded wait while the server stays away, and works again once it is back', async () => {
    const { engine } = await freshEngine([], 1500);
    try {
      server.stop();
      const began = Date.now();
      await assert.rejects(engine.mknod(ROOT_INO, name('x'), file, t), isEio);
      await assert.rejects(engine.getattr(ROOT_INO), isEio);
      const waited = Date.now() - began;
      assert.ok(waited >= 1500 && waited < 15_000, `gave up after the wait (${waited} ms)`);
      server.start();
      await engine.mknod(ROOT_INO, name('x'), file, t);
      assert.deepEqual((await engine.readdir(ROOT_INO)).entries.map((e) => e.name.toString()), ['x']);
    } finally {
      server.start();
      await engine.close();
    }
  });

  it('runs a change again whose connection died in its COMMIT when the server says it did not commit, and only then', async () => {
    const { engine, url } = await freshEngine([]);
    try {
      // A deferred trigger runs inside COMMIT: it ends its own connection there, once per
      // sequence (nextval is not rolled back), as a server dying mid-commit would.
      await queryPostgres(
        url,
        `CREATE SEQUENCE cut_create; CREATE SEQUENCE cut_content;
         CREATE FUNCTION cut_connection() RETURNS void LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM pg_terminate_backend(pg_backend_pid());
           PERFORM pg_sleep(1);
         END $$;
         CREATE FUNCTION cut_create() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.name = 'doomed'::bytea AND nextval('cut_create') = 1 THEN PERFORM cut_connection(); END IF;
           RETURN NULL;
         END $$;
         CREATE FUNCTION cut_content() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('cut_content') = 1 THEN PERFORM cut_connection(); END IF;
           RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER cut AFTER INSERT ON dentries DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cut_create();
         CREATE CONSTRAINT TRIGGER cut AFTER INSERT ON blocks DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cut_content();`,
      );
      // The reply to its COMMIT is lost; txid_status says it did not commit (the trigger
      // ran before the commit record): it is run again, once.
      const again = await engine.mknod(ROOT_INO, name('doomed'), file, t);
      assert.deepEqual((await engine.readdir(ROOT_INO)).entries.map((e) => [e.name.toString(), e.ino]), [['doomed', again.ino]]);

      const hash = Buffer.alloc(32, 7);
      await engine.commitContent([{ ino: again.ino, rows: new Map([[0, { hash, len: 100 }]]), size: 100, storedBytes: 100 }]);
      assert.deepEqual(
        (await engine.blocks(again.ino)).map((b) => [b.idx, b.hash.equals(hash), b.len]),
        [[0, true, 100]],
      );
      assert.equal((await engine.getattr(again.ino)).size, 100);
      const cuts = await queryPostgres(url, 'SELECT (SELECT last_value FROM cut_create) AS c, (SELECT last_value FROM cut_content) AS b');
      assert.deepEqual([Number(cuts[0].c), Number(cuts[0].b)], [2, 2], 'each cut happened, and its change ran again once');
    } finally {
      await engine.close();
    }
  });

  /**
   * Makes changes, each followed by `crash`, until one is lost (a commit the WAL writer
   * happened to write before the crash survives it): then every sync is EIO, said once.
   */
  async function loseAChange(engine: PgEngine, said: string[], crash: () => Promise<void>): Promise<void> {
    let lost = false;
    for (let attempt = 0; attempt < 3 && !lost; attempt++) {
      await engine.barrier();
      await engine.mknod(ROOT_INO, name(`maybe${attempt}`), file, t);
      await crash();
      const survived = await engine.lookup(ROOT_INO, name(`maybe${attempt}`)).then(
        () => true,
        () => false,
      );
      await engine.mknod(ROOT_INO, name(`after${attempt}`), file, t);
      if (survived) {
        await engine.barrier();
        continue;
      }
      lost = true;
      await assert.rejects(engine.barrier(), isEio);
      await engine.mknod(ROOT_INO, name('later'), file, t);
      await assert.rejects(engine.barrier(), isEio, 'every sync after, until a remount');
    }
    assert.ok(lost, 'a crash of the server lost an asynchronous commit');
    assert.equal(said.filter((m) => /lost changes it had acknowledged/.test(m)).length, 1, said.join('\n'));
  }

  it('answers EIO at every sync once a crash of the server lost changes it had acknowledged; a restart loses none', async () => {
    const said: string[] = [];
    const { engine } = await freshEngine(said);
    try {
      await engine.mknod(ROOT_INO, name('kept'), file, t); // committed asynchronously
      server.restart(); // a shutdown writes every commit
      await engine.mknod(ROOT_INO, name('next'), file, t); // the first change on the new server asks after 'kept'
      await engine.barrier();
      await engine.lookup(ROOT_INO, name('kept'));
      await loseAChange(engine, said, async () => {
        server.stop(); // at once: what the WAL writer had not written is gone
        server.start();
      });
    } finally {
      server.start();
      await engine.close();
    }
  });

  it('finds changes lost when one server process crashed and PostgreSQL started the others again from its WAL', async () => {
    const said: string[] = [];
    const { engine, url } = await freshEngine(said);
    try {
      await loseAChange(engine, said, async () => {
        const victim = new Client({ connectionString: url });
        victim.on('error', () => undefined);
        await victim.connect();
        const pid = (await victim.query('SELECT pg_backend_pid() AS pid')).rows[0] as { pid: number };
        process.kill(Number(pid.pid), 'SIGKILL');
        // The server's start time stays; only the connections it ended say something happened.
        await sleep(1500);
        await victim.end().catch(() => undefined);
      });
    } finally {
      await engine.close();
    }
  });
});
