import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CacheEvictor } from '../src/cache/cache-evictor';
import { PackUploader } from '../src/cache/pack-uploader';
import { RemoteCache } from '../src/cache/remote-cache';
import { BLOCK, cacheFixture, randomBlocks, storeBlocks, until, type CacheFixture } from './support/cache';

/** Eviction and backpressure in-process: a real block store over a local: remote. */

function evictor(f: CacheFixture, cacheBytes: number, lowWater = 0.9): CacheEvictor {
  return new CacheEvictor(f.volume.ledger, f.volume.meta.remote, { cacheBytes, lowWater, log: f.log });
}

async function upload(f: CacheFixture): Promise<void> {
  const up = new PackUploader(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), { packBytes: 64 * BLOCK, idleMs: 60_000, parallel: 1, retryMs: 60_000, log: f.log });
  await up.flush();
  await up.close();
}

const held = (f: CacheFixture, blocks: readonly { hash: Buffer }[]) => blocks.filter((b) => f.volume.store.has(b.hash)).length;

describe('CacheEvictor', () => {
  it('never evicts a dirty block, however far over its size the store is', async () => {
    const f = await cacheFixture();
    try {
      const blocks = randomBlocks(8);
      await storeBlocks(f.volume, blocks);
      const e = evictor(f, 2 * BLOCK, 0);
      for (const b of blocks) e.touch(b.hash);
      await e.maybeEvict();
      assert.equal(held(f, blocks), 8);
      assert.equal(e.evictedBytes, 0);
    } finally {
      await f.close();
    }
  });

  it('evicts clean blocks down to its low-water mark, and only those', async () => {
    const f = await cacheFixture();
    try {
      const clean = randomBlocks(8);
      await storeBlocks(f.volume, clean);
      await upload(f);
      const dirty = randomBlocks(2);
      await storeBlocks(f.volume, dirty);

      const cacheBytes = 6 * BLOCK;
      const e = evictor(f, cacheBytes, 0.5);
      await e.maybeEvict();
      const stored = f.volume.store.stats().storedBytes;
      assert.ok(stored <= cacheBytes * 0.5, `${stored} bytes stored`);
      assert.ok(e.evictedBytes > 0);
      assert.equal(held(f, dirty), 2, 'dirty blocks stay');
      // Down to the mark, not further: the two dirty blocks and at most one clean one.
      assert.ok(held(f, clean) <= 1);
      assert.equal(e.evictedObjects, 8 - held(f, clean));
      // Under its size now: nothing more to do.
      const before = e.evictedBytes;
      await e.maybeEvict();
      assert.equal(e.evictedBytes, before);
    } finally {
      await f.close();
    }
  });

  it('evicts what nobody used since the mount before what was used', async () => {
    const f = await cacheFixture();
    try {
      const blocks = randomBlocks(8);
      await storeBlocks(f.volume, blocks);
      await upload(f);
      // Room for the two used blocks (with their headers) below the mark.
      const e = evictor(f, 4 * BLOCK, 0.6);
      e.touch(blocks[1].hash);
      e.touch(blocks[6].hash);
      await e.maybeEvict();
      assert.deepEqual(
        blocks.map((b) => f.volume.store.has(b.hash)),
        blocks.map((_, i) => i === 1 || i === 6),
      );
    } finally {
      await f.close();
    }
  });
});

describe('RemoteCache: the bound and backpressure', () => {
  it('keeps the local store under the cache size once blocks are uploaded', async () => {
    const f = await cacheFixture();
    const cacheBytes = 4 * BLOCK;
    const cache = new RemoteCache(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), { cacheBytes, packBytes: 64 * BLOCK, readaheadBytes: BLOCK, uploadIdleMs: 60_000, log: f.log });
    try {
      const blocks = randomBlocks(10);
      await storeBlocks(f.volume, blocks);
      // Dirty: over the size, and nothing may go.
      assert.ok(cache.status().localBytes > cacheBytes);
      await cache.flush();
      // Eviction counts what it freed once the store's transaction is done: wait for both.
      await until(() => cache.status().localBytes <= cacheBytes && cache.status().evictedBytes > 0, 10_000, 'eviction after the upload');
      assert.equal(cache.status().upload.dirtyBlocks, 0);
    } finally {
      await cache.close();
      await f.close();
    }
  });

  it('makes writers wait while dirty data fills the cache, and lets them go once it is uploaded', async () => {
    const f = await cacheFixture();
    const cacheBytes = 4 * BLOCK;
    const cache = new RemoteCache(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), { cacheBytes, packBytes: 64 * BLOCK, readaheadBytes: BLOCK, uploadIdleMs: 60_000, log: f.log });
    try {
      assert.equal(cache.admit(() => 3 * BLOCK), undefined, 'room left: no wait');
      await storeBlocks(f.volume, randomBlocks(5));
      f.remote.failNext('put');
      const wait = cache.admit(() => 0);
      assert.ok(wait instanceof Promise, 'a writer over the size waits');
      assert.equal(cache.status().backpressure, true);
      assert.equal(cache.status().throttledWrites, 1);
      // A failed upload does not fail the writer: it waits (slowed, never failed) until uploads make room.
      await wait;
      assert.ok(f.remote.calls.put >= 2, `${f.remote.calls.put} puts`);
      assert.equal(cache.status().backpressure, false);
      assert.ok(cache.status().upload.dirtyBytes < cacheBytes);
    } finally {
      await cache.close();
      await f.close();
    }
  });
});
