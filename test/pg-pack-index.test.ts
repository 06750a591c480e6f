/**
 * The shared pack index of a PostgreSQL volume (src/meta/pg-pack-index.ts) on a real
 * server: a pack published twice (a retry after a lost reply) is one pack with its
 * entries once, blocks are located with their whole pack, unknown blocks are left out,
 * and a later pack holding a block takes over its location. Then two block stores (two
 * machines) over one `local:` remote and the index: what one uploads the other fetches,
 * and releasing or taking blocks it never counted keeps its counts and ledger sound.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PgEngine } from '../src/meta/pg-engine';
import { PgPackIndex } from '../src/meta/pg-pack-index';
import type { PackEntry, SharedPack } from '../src/meta/remote-index';
import { hashBlock } from '../src/store/hash';
import { BLOCK, TestLog, randomBlocks, storeBlocks } from './support/cache';
import { queryPostgres, startPostgres } from './support/postgres';
import { sharedStoreMachine } from './support/shared-volume';
import { tempDir } from './support/tmp';
import { newVolumeInit } from './support/volume-init';

const server = startPostgres();

async function freshVolume(): Promise<string> {
  const url = server.createDatabase();
  await (await PgEngine.open(url.slice('postgres:'.length), { create: newVolumeInit() })).close();
  return url;
}

const hash = (n: number): Buffer => hashBlock(Buffer.from(`block ${n}`));

function entries(from: number, n: number): PackEntry[] {
  return Array.from({ length: n }, (_, i) => ({ hash: hash(from + i), valueOffset: i * 100, valueLength: 100, blockOffset: 0, length: 90 }));
}

const byHash = (a: PackEntry, b: PackEntry): number => Buffer.compare(a.hash, b.hash);

describe('the shared pack index in PostgreSQL', () => {
  it('publishing a pack twice records it once; locate answers with the whole pack and leaves unknown blocks out', async () => {
    const url = await freshVolume();
    const index = PgPackIndex.open(url);
    try {
      const pack: SharedPack = { name: 'pack-aaa', remoteId: 'id-1', size: 1000, entries: entries(0, 5) };
      await index.publish(pack);
      await index.publish(pack);
      const counts = await queryPostgres(url, 'SELECT (SELECT count(*)::int FROM packs) AS packs, (SELECT count(*)::int FROM pack_blocks) AS blocks');
      assert.deepEqual(counts[0], { packs: 1, blocks: 5 });

      const found = await index.locate([hash(2), hash(99)]);
      assert.equal(found.length, 1);
      assert.equal(found[0].name, 'pack-aaa');
      assert.equal(found[0].remoteId, 'id-1');
      assert.equal(found[0].size, 1000);
      assert.deepEqual(found[0].entries.sort(byHash), [...pack.entries].sort(byHash));
      assert.deepEqual(await index.locate([hash(99)]), []);
      assert.deepEqual(await index.locate([]), []);
    } finally {
      await index.close();
    }
  });

  it('a block published in a later pack is found there; two indexes (two machines) see each other', async () => {
    const url = await freshVolume();
    const a = PgPackIndex.open(url);
    const b = PgPackIndex.open(url);
    try {
      await a.publish({ name: 'pack-1', remoteId: 'r1', size: 500, entries: entries(0, 3) });
      await b.publish({ name: 'pack-2', remoteId: 'r2', size: 600, entries: entries(2, 3) });
      const of2 = await a.locate([hash(2)]);
      assert.deepEqual(of2.map((p) => p.name), ['pack-2']);
      const both = await b.locate([hash(0), hash(4)]);
      assert.deepEqual(both.map((p) => p.name).sort(), ['pack-1', 'pack-2']);
      // pack-1 keeps the blocks nobody published again.
      assert.deepEqual(both.find((p) => p.name === 'pack-1')!.entries.map((e) => e.hash.toString('hex')).sort(), [hash(0), hash(1)].map((h) => h.toString('hex')).sort());
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('publishing packs that share blocks from two clients at once neither fails nor loses a pack', async () => {
    const url = await freshVolume();
    const a = PgPackIndex.open(url);
    const b = PgPackIndex.open(url);
    try {
      const jobs: Promise<void>[] = [];
      for (let i = 0; i < 20; i++) {
        jobs.push(a.publish({ name: `a-${i}`, remoteId: `ra${i}`, size: 1, entries: entries(i * 3, 40) }));
        jobs.push(b.publish({ name: `b-${i}`, remoteId: `rb${i}`, size: 1, entries: entries(i * 3 + 1, 40) }));
      }
      await Promise.all(jobs);
      const counts = await queryPostgres(url, 'SELECT (SELECT count(*)::int FROM packs) AS packs, (SELECT count(*)::int FROM pack_blocks) AS blocks');
      assert.deepEqual(counts[0], { packs: 40, blocks: 19 * 3 + 1 + 40 });
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a store fetches blocks another uploaded and published; releasing and sharing them keeps counts and the ledger sound', async () => {
    const url = await freshVolume();
    const dir = tempDir('pogfs-shared-cache-');
    const log = new TestLog();
    const machine = (name: string) => sharedStoreMachine(url, dir, log, name);
    const a = await machine('a');
    const b = await machine('b');
    try {
      const blocks = randomBlocks(3);
      await storeBlocks(a.volume, blocks);
      assert.equal(a.volume.ledger.dirtyStats().blocks, 3);
      await a.cache.publishStored();
      assert.equal(a.volume.ledger.dirtyStats().blocks, 0, 'clean once uploaded and published');
      assert.equal((await queryPostgres(url, 'SELECT count(*)::int AS n FROM pack_blocks'))[0].n, 3);

      // B never stored them: its index learns them from the shared one, the bytes come from the remote.
      const target = Buffer.alloc(BLOCK);
      assert.equal(await b.cache.read(blocks[0].hash, 0, BLOCK, target, 0), 'ok');
      assert.deepEqual(target, blocks[0].data);
      assert.ok(b.volume.localPackIndex.remote.locate(blocks[1].hash), 'the whole pack is recorded locally');
      assert.ok(b.volume.store.has(blocks[0].hash));
      assert.equal(b.volume.store.refCount(blocks[0].hash), 0, 'held, not counted: rows elsewhere reference it');

      // Releasing blocks B never counted (an unlink of A's file on B): no error, no negative count.
      const before = b.volume.store.stats();
      await b.volume.store.release([blocks[0].hash, blocks[1].hash]);
      const after = b.volume.store.stats();
      assert.equal(after.references, before.references);
      assert.equal(b.volume.store.refCount(blocks[1].hash), 0);
      // Writing the same bytes on B shares the fetched copy and dirties nothing (A's pack holds it).
      await storeBlocks(b.volume, [blocks[0]]);
      assert.equal(b.volume.store.refCount(blocks[0].hash), 1);
      assert.equal(b.volume.ledger.dirtyStats().blocks, 0);
      await b.volume.store.release([blocks[0].hash]);
      assert.equal(b.volume.store.refCount(blocks[0].hash), 0);
      // A copy by reference on B of a block B never held (A's blocks[2]): counted as an evicted block is, read from the remote.
      await assert.rejects(b.volume.store.acquire([{ hash: blocks[2].hash }]), /no longer stored/);
      b.volume.store.referencesOnRemote = true;
      await b.volume.store.acquire([{ hash: blocks[2].hash }]);
      assert.equal(b.volume.store.refCount(blocks[2].hash), 1);
      assert.ok(!b.volume.store.has(blocks[2].hash));
      assert.equal(await b.cache.read(blocks[2].hash, 0, BLOCK, target, 0), 'ok');
      assert.deepEqual(target, blocks[2].data);
      assert.equal(b.volume.ledger.dirtyStats().blocks, 0);
      // A block nobody published is missing, not an error.
      assert.equal(await b.cache.fetcher.fetchOne(randomBlocks(1)[0].hash), 'missing');
      assert.deepEqual(log.errors, []);
    } finally {
      await a.close();
      await b.close();
    }
  });
});
