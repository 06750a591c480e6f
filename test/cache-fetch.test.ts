import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BlockFetcher } from '../src/cache/block-fetcher';
import { RemoteCache } from '../src/cache/remote-cache';
import { readPackIndex } from '../src/cache/restore';
import { hashBlock } from '../src/store/hash';
import { BLOCK, cacheFixture, evictAll, flipByte, randomBlocks, storeBlocks, type CacheFixture } from './support/cache';

/**
 * Fetch on miss in-process: blocks uploaded, evicted from the real local store, then read
 * back through RemoteCache and BlockFetcher from a local: remote, with damaged pack bytes
 * and injected read failures.
 */

function remoteCache(f: CacheFixture, cacheBytes = 64 * BLOCK): RemoteCache {
  return new RemoteCache(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), {
    cacheBytes,
    packBytes: 64 * BLOCK,
    readaheadBytes: 8 * BLOCK,
    uploadIdleMs: 60_000,
    log: f.log,
  });
}

/** Uploads everything and evicts every clean block: the remote is then the only copy. */
async function uploadAndDropLocal(f: CacheFixture, cache: RemoteCache): Promise<void> {
  await cache.flush();
  await evictAll(f);
  assert.equal(cache.status().localBytes, 0, 'every block evicted');
}

async function readBlock(cache: RemoteCache, hash: Buffer): Promise<{ result: string; bytes: Buffer }> {
  const bytes = Buffer.alloc(BLOCK);
  const result = await cache.read(hash, 0, BLOCK, bytes, 0);
  return { result, bytes };
}

describe('RemoteCache and BlockFetcher: fetch on miss', () => {
  it('fetches a missing block from its pack, verifies and installs it', async () => {
    const f = await cacheFixture();
    const cache = remoteCache(f);
    try {
      const blocks = randomBlocks(4);
      await storeBlocks(f.volume, blocks);
      await uploadAndDropLocal(f, cache);
      assert.equal(f.volume.store.has(blocks[2].hash), false);

      const first = await readBlock(cache, blocks[2].hash);
      assert.equal(first.result, 'ok');
      assert.ok(first.bytes.equals(blocks[2].data));
      assert.equal(f.volume.store.has(blocks[2].hash), true, 'installed locally');
      assert.deepEqual(cache.status().reads, { hits: 0, misses: 1 });
      assert.equal(cache.status().fetch.blocks, 1);

      // Now local: no second fetch.
      const again = await readBlock(cache, blocks[2].hash);
      assert.ok(again.bytes.equals(blocks[2].data));
      assert.deepEqual(cache.status().reads, { hits: 1, misses: 1 });
      assert.equal(cache.status().fetch.reads, 1);
    } finally {
      await cache.close();
      await f.close();
    }
  });

  it('fetches neighbouring blocks of one pack with one ranged read, and one download per block however many ask', async () => {
    const f = await cacheFixture();
    const cache = remoteCache(f);
    try {
      const blocks = randomBlocks(6);
      await storeBlocks(f.volume, blocks);
      await uploadAndDropLocal(f, cache);
      const readsBefore = f.remote.calls.read;
      const fetcher = new BlockFetcher(f.volume.store, f.volume.meta.remote, f.remote, { maxRangeBytes: 16 * BLOCK, maxGapBytes: BLOCK, concurrency: 2, log: f.log });
      const wanted = blocks.map((b) => b.hash);
      const outcomes = fetcher.fetch(wanted);
      const twice = fetcher.fetchOne(wanted[3]);
      assert.deepEqual(await Promise.all(outcomes.values()), wanted.map(() => 'ok'));
      assert.equal(await twice, 'ok');
      assert.equal(fetcher.stats.reads, 1);
      assert.equal(f.remote.calls.read - readsBefore, 1);
      assert.equal(fetcher.stats.blocks, 6);
      for (const b of blocks) assert.ok(f.volume.store.get(b.hash)?.equals(b.data));
    } finally {
      await cache.close();
      await f.close();
    }
  });

  it('a block with no pack reads as missing, without a remote call', async () => {
    const f = await cacheFixture();
    const cache = remoteCache(f);
    try {
      const [stray] = randomBlocks(1);
      const { result } = await readBlock(cache, stray.hash);
      assert.equal(result, 'missing');
      assert.equal(f.remote.calls.read, 0);
    } finally {
      await cache.close();
      await f.close();
    }
  });

  it('a damaged byte in a pack reads as corrupt (EIO), never as wrong bytes; its neighbours still read', async () => {
    const f = await cacheFixture();
    const cache = remoteCache(f);
    try {
      const blocks = randomBlocks(3);
      await storeBlocks(f.volume, blocks);
      await uploadAndDropLocal(f, cache);
      const [pack] = await f.remote.list('pack');
      const entries = await readPackIndex(f.remote, pack);
      const victim = entries.find((e) => e.valueOffset === 0)!;
      // The value's last byte: block data, past any header.
      flipByte(join(f.remoteDir, pack.id), victim.valueOffset + victim.valueLength - 1);

      const bad = await readBlock(cache, victim.hash);
      assert.equal(bad.result, 'corrupt');
      assert.ok(bad.bytes.equals(Buffer.alloc(BLOCK)), 'nothing written into the reader\'s buffer');
      assert.equal(f.volume.store.has(victim.hash), false, 'the damaged value is not installed');
      // Downloaded once more (damage in transit is not damage on the remote), then given up.
      assert.equal(cache.status().fetch.corrupt, 2);
      assert.ok(f.log.warnings.some((w) => w.includes(pack.name) && /BLAKE3/.test(w)), f.log.warnings.join('\n'));

      for (const b of blocks.filter((b) => !b.hash.equals(victim.hash))) {
        const good = await readBlock(cache, b.hash);
        assert.equal(good.result, 'ok');
        assert.ok(good.bytes.equals(b.data));
      }
    } finally {
      await cache.close();
      await f.close();
    }
  });

  it('a remote read failure is reported (missing for now, logged), and the next read fetches', async () => {
    const f = await cacheFixture();
    const cache = remoteCache(f);
    try {
      const [block] = randomBlocks(1);
      await storeBlocks(f.volume, [block]);
      await uploadAndDropLocal(f, cache);
      f.remote.failNext('read');
      const failed = await readBlock(cache, block.hash);
      assert.equal(failed.result, 'missing');
      assert.ok(failed.bytes.equals(Buffer.alloc(BLOCK)));
      assert.equal(cache.status().fetch.failures, 1);
      assert.ok(f.log.errors.some((e) => /injected read failure/.test(e)), f.log.errors.join('\n'));

      const ok = await readBlock(cache, block.hash);
      assert.equal(ok.result, 'ok');
      assert.ok(ok.bytes.equals(block.data));
    } finally {
      await cache.close();
      await f.close();
    }
  });

  it('fetches super-chunks (lz4, several blocks in one value) and verifies each member', async () => {
    const f = await cacheFixture({ compression: 'lz4', superchunks: true });
    const cache = remoteCache(f);
    try {
      // Short blocks go into super-chunks; text compresses.
      const blocks = Array.from({ length: 20 }, (_, i) => Buffer.from(`block ${i} `.repeat(500)));
      const items = blocks.map((data) => ({ hash: hashBlock(data), data }));
      await storeBlocks(f.volume, items);
      await uploadAndDropLocal(f, cache);
      for (const [i, b] of items.entries()) {
        const target = Buffer.alloc(b.data.length);
        assert.equal(await cache.read(b.hash, 0, b.data.length, target, 0), 'ok', `block ${i}`);
        assert.ok(target.equals(b.data), `block ${i}`);
      }
      // A super-chunk arrives whole: far fewer downloads than blocks.
      assert.ok(cache.status().fetch.reads < items.length / 2, `${cache.status().fetch.reads} reads`);
    } finally {
      await cache.close();
      await f.close();
    }
  });
});
