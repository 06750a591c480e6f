/**
 * gc of a volume several machines share, in PostgreSQL (src/meta/pg-pack-index.ts's
 * collectPack, the engine's commit check) and in the fetcher of a machine whose local
 * pack index gc made stale (src/cache/block-fetcher.ts), on a real server, real block
 * stores and a real `local:` remote. The race between gc and another machine's commit is
 * made deterministic with a second connection that holds a transaction open at the point
 * where the other side must wait.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Client } from 'pg';
import { BlocksNotPublished, type ContentCommit } from '../src/meta/engine';
import { collectSharedGarbage } from '../src/gc/shared-gc';
import { PgEngine } from '../src/meta/pg-engine';
import { PgPackIndex } from '../src/meta/pg-pack-index';
import type { PackEntry } from '../src/meta/remote-index';
import { ROOT_INO, S_IFREG } from '../src/posix/file-system';
import { hashBlock } from '../src/store/hash';
import { BLOCK, TestLog, randomBlocks, storeBlocks } from './support/cache';
import { queryPostgres, startPostgres } from './support/postgres';
import { sharedStoreMachine } from './support/shared-volume';
import { tempDir } from './support/tmp';
import { newVolumeInit } from './support/volume-init';
import * as fs from 'node:fs';

const server = startPostgres();

async function freshVolume(): Promise<string> {
  const url = server.createDatabase();
  await (await PgEngine.open(url.slice('postgres:'.length), { create: newVolumeInit() })).close();
  return url;
}

const hash = (n: number): Buffer => hashBlock(Buffer.from(`block ${n}`));
const entry = (n: number, i: number): PackEntry => ({ hash: hash(n), valueOffset: i * 100, valueLength: 100, blockOffset: 0, length: 90 });
const tick = (() => {
  let s = 1_700_000_000;
  return () => ({ s: s++, ns: 0 });
})();

/** One file's commit of block `idx` naming block `n`. */
const commitOf = (ino: number, idx: number, n: number): ContentCommit => ({ ino, rows: new Map([[idx, { hash: hash(n), len: 90 }]]), size: (idx + 1) * 90, storedBytes: (idx + 1) * 90 });

async function packId(url: string, name: string): Promise<number> {
  return Number((await queryPostgres(url, `SELECT id FROM packs WHERE name = '${name}'`))[0].id);
}

/** Resolves once some backend of the database waits for a lock (the other side of a race is parked there). */
async function someoneWaitsForALock(url: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const rows = await queryPostgres(url, "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()");
    if ((rows[0].n as number) > 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error('nobody waited for a lock');
}

describe('gc of a shared pack index against other machines\' commits', () => {
  it('a commit naming a block whose entry is gone is refused before it writes a row; gc deletes dead entries and an empty pack, keeps live ones', async () => {
    const url = await freshVolume();
    const engine = await PgEngine.open(url.slice('postgres:'.length), { sharedPacks: true });
    const index = PgPackIndex.open(url);
    try {
      const file = await engine.mknod(ROOT_INO, Buffer.from('f'), { mode: S_IFREG | 0o644, uid: 0, gid: 0 }, tick());
      await index.publish({ name: 'pack-1', remoteId: 'r1', size: 300, entries: [entry(1, 0), entry(2, 1)] });
      await index.publish({ name: 'pack-2', remoteId: 'r2', size: 100, entries: [entry(3, 0)] });
      await engine.commitContent([commitOf(file.ino, 0, 1)]);

      const one = await index.collectPack(await packId(url, 'pack-1'));
      assert.deepEqual(one.deadEntries.map((h) => h.toString('hex')), [hash(2).toString('hex')]);
      assert.equal(one.deletedPack, undefined, 'a pack with a live entry stays');
      const two = await index.collectPack(await packId(url, 'pack-2'));
      assert.deepEqual(two.deletedPack, { name: 'pack-2', remoteId: 'r2', size: 100 });
      assert.deepEqual(await queryPostgres(url, 'SELECT name FROM packs ORDER BY name'), [{ name: 'pack-1' }]);

      // Block 2 was stored on this "machine" before gc removed its entry: the commit is refused whole.
      const refused = await engine.commitContent([commitOf(file.ino, 1, 2), commitOf(file.ino, 2, 1)]).then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.ok(refused instanceof BlocksNotPublished, String(refused));
      assert.deepEqual(refused.hashes.map((h) => h.toString('hex')), [hash(2).toString('hex')]);
      const rows = await queryPostgres(url, `SELECT idx::int FROM blocks WHERE ino = ${file.ino} ORDER BY idx`);
      assert.deepEqual(rows, [{ idx: 0 }], 'no row of the refused commit');
      // Published again (uploaded again), the same commit goes through.
      await index.publish({ name: 'pack-3', remoteId: 'r3', size: 100, entries: [entry(2, 0)] });
      await engine.commitContent([commitOf(file.ino, 1, 2)]);
      assert.equal((await engine.blocks(file.ino)).length, 2);
    } finally {
      await index.close();
      await engine.close();
    }
  });

  it('gc waits for a commit holding an entry it wants, then sees the commit\'s row and keeps the entry', async () => {
    const url = await freshVolume();
    const index = PgPackIndex.open(url);
    const other = new Client({ connectionString: url });
    await other.connect();
    try {
      await index.publish({ name: 'pack-a', remoteId: 'ra', size: 100, entries: [entry(7, 0)] });
      // Another machine's commit, mid-way: its entry held FOR KEY SHARE, its row written, not committed.
      await other.query('BEGIN');
      assert.equal((await other.query('SELECT hash FROM pack_blocks WHERE hash = ANY($1::bytea[]) ORDER BY hash FOR KEY SHARE', [[hash(7)]])).rows.length, 1);
      await other.query('INSERT INTO blocks (ino, idx, hash, len) VALUES (999, 0, $1, 90)', [hash(7)]);
      const gc = index.collectPack(await packId(url, 'pack-a'));
      await someoneWaitsForALock(url);
      await other.query('COMMIT');
      const r = await gc;
      assert.deepEqual(r.deadEntries, []);
      assert.equal(r.deletedPack, undefined);
      assert.equal((await queryPostgres(url, 'SELECT count(*)::int AS n FROM pack_blocks'))[0].n, 1);
    } finally {
      await other.end();
      await index.close();
    }
  });

  it('a commit that waits for gc\'s lock on an entry finds it deleted and writes nothing', async () => {
    const url = await freshVolume();
    const engine = await PgEngine.open(url.slice('postgres:'.length), { sharedPacks: true });
    const other = new Client({ connectionString: url });
    await other.connect();
    const index = PgPackIndex.open(url);
    try {
      const file = await engine.mknod(ROOT_INO, Buffer.from('g'), { mode: S_IFREG | 0o644, uid: 0, gid: 0 }, tick());
      await index.publish({ name: 'pack-b', remoteId: 'rb', size: 100, entries: [entry(8, 0)] });
      // gc mid-way: the entry locked FOR UPDATE and deleted (nothing referenced it), not committed.
      await other.query('BEGIN');
      await other.query('SELECT hash FROM pack_blocks WHERE hash = $1 FOR UPDATE', [hash(8)]);
      await other.query('DELETE FROM pack_blocks WHERE hash = $1', [hash(8)]);
      const commit = engine.commitContent([commitOf(file.ino, 0, 8)]).then(
        () => undefined,
        (err: unknown) => err,
      );
      await someoneWaitsForALock(url);
      await other.query('COMMIT');
      const err = await commit;
      assert.ok(err instanceof BlocksNotPublished, String(err));
      assert.deepEqual(await engine.blocks(file.ino), []);
    } finally {
      await other.end();
      await index.close();
      await engine.close();
    }
  });
});

describe('a machine whose local pack index names a pack gc deleted elsewhere', () => {
  it('asks the shared index again, drops the stale record and reads the block from the pack it moved to', async () => {
    const url = await freshVolume();
    const dir = tempDir('pogfs-shared-gc-');
    const remoteDir = join(dir, 'remote');
    const log = new TestLog();
    const machine = (name: string) => sharedStoreMachine(url, dir, log, name);
    const a = await machine('a');
    const b = await machine('b');
    try {
      const [x, y, z] = randomBlocks(3);
      await storeBlocks(a.volume, [x, y, z]);
      await a.cache.publishStored();
      const first = a.volume.localPackIndex.remote.locate(x.hash)!.name;
      // B reads y: its index records the whole pack, x and z included.
      const target = Buffer.alloc(BLOCK);
      assert.equal(await b.cache.read(y.hash, 0, BLOCK, target, 0), 'ok');
      assert.equal(b.volume.localPackIndex.remote.locate(x.hash)?.name, first);

      // A moves x into a new pack (a repack), then the old pack goes: y and z are dead.
      await a.volume.ledger.markDirtyAgain([x.hash]);
      await a.cache.publishStored();
      const moved = a.volume.localPackIndex.remote.locate(x.hash)!.name;
      assert.notEqual(moved, first);
      const gone = await a.shared.collectPack(await packId(url, first));
      assert.equal(gone.deletedPack?.name, first);
      await a.remote.delete({ kind: 'pack', name: first, id: gone.deletedPack!.remoteId });
      assert.ok(!fs.readdirSync(remoteDir, { recursive: true }).some((f) => String(f).includes(first)));

      // B still places x in the deleted pack: the read finds it in the new one.
      assert.equal(await b.cache.read(x.hash, 0, BLOCK, target, 0), 'ok');
      assert.deepEqual(target, x.data);
      assert.equal(b.volume.localPackIndex.remote.locate(x.hash)?.name, moved, 'the stale record was replaced');
      assert.ok(log.warnings.some((w) => w.includes(first)), log.warnings.join('\n'));
      // z is dead everywhere: missing (no wait, no wrong bytes), and forgotten locally.
      assert.equal(await b.cache.fetcher.fetchOne(z.hash), 'missing');
      assert.equal(b.volume.localPackIndex.remote.locate(z.hash), undefined);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('collectSharedGarbage leaves packs within the grace period alone, then deletes a pack a later one took every entry from, on the index and the remote, and an orphan', async () => {
    const url = await freshVolume();
    const dir = tempDir('pogfs-shared-gc-');
    const log = new TestLog();
    const a = await sharedStoreMachine(url, dir, log, 'a');
    try {
      const [x] = randomBlocks(1);
      await storeBlocks(a.volume, [x]);
      await a.cache.publishStored();
      const first = a.volume.localPackIndex.remote.locate(x.hash)!.name;
      await a.volume.ledger.markDirtyAgain([x.hash]);
      // A different pack of the same block: a new one on the remote, and the old one left without entries.
      await storeBlocks(a.volume, randomBlocks(1));
      await a.cache.publishStored();
      assert.equal((await queryPostgres(url, `SELECT count(*)::int AS n FROM pack_blocks pb JOIN packs p ON p.id = pb.pack WHERE p.name = '${first}'`))[0].n, 0);
      const parts = { remote: a.remote, cache: a.cache, index: a.shared };
      const young = await collectSharedGarbage(a.volume, parts, { dryRun: false, graceMs: 60_000, log });
      assert.equal(young.deletedPacks, 0);
      assert.equal(young.youngPacks, 2);
      const dry = await collectSharedGarbage(a.volume, parts, { dryRun: true, graceMs: 0, log });
      assert.equal(dry.deletedPacks, 2, 'the emptied pack, and the new one (nothing references x or the other block)');
      assert.ok(fs.readdirSync(join(dir, 'remote'), { recursive: true }).some((f) => String(f).includes(first)));
      // A pack on the remote the index never named (a crash between an upload and its publication).
      await a.remote.put('pack', `p${'0'.repeat(40)}`, Buffer.from('never published'));
      assert.equal((await collectSharedGarbage(a.volume, parts, { dryRun: true, graceMs: 0, log })).orphanPacks, 1);
      const done = await collectSharedGarbage(a.volume, parts, { dryRun: false, graceMs: 0, log });
      assert.equal(done.deletedPacks, 2);
      assert.equal(done.orphanPacks, 1);
      assert.equal(done.youngPacks, 0);
      assert.equal(done.failedDeletes, 0);
      assert.deepEqual(await queryPostgres(url, 'SELECT name FROM packs'), []);
      assert.ok(!fs.readdirSync(join(dir, 'remote'), { recursive: true }).some((f) => /^p[0-9a-f]{40}$/.test(String(f).split('/').pop()!)));
      assert.equal(a.volume.localPackIndex.remote.packs().length, 0, 'the local index forgets them too');
      assert.deepEqual(log.errors, []);
    } finally {
      await a.close();
    }
  });
});
