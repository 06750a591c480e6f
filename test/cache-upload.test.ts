import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PackUploader, type UploaderOptions } from '../src/cache/pack-uploader';
import { readPackIndex } from '../src/cache/restore';
import { BLOCK, cacheFixture, randomBlocks, storeBlocks, until, type CacheFixture } from './support/cache';

/** PackUploader in-process: real block store and metadata, a local: remote, injected put failures. */

function uploader(f: CacheFixture, options: Partial<UploaderOptions> = {}): PackUploader {
  return new PackUploader(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), {
    packBytes: 3 * BLOCK,
    idleMs: 60_000,
    parallel: 2,
    retryMs: 60_000,
    log: f.log,
    ...options,
  });
}

const hexes = (hashes: readonly Buffer[]) => hashes.map((h) => h.toString('hex')).sort();

describe('PackUploader', () => {
  it('uploads dirty blocks in packs that index every block, then marks them clean', async () => {
    const f = await cacheFixture();
    try {
      const blocks = randomBlocks(8);
      await storeBlocks(f.volume, blocks);
      const up = uploader(f);
      assert.equal(up.status().dirtyBlocks, 8);
      assert.equal(up.status().dirtyBytes, 8 * BLOCK);
      await up.flush();

      const status = up.status();
      assert.equal(status.dirtyBlocks, 0);
      assert.equal(status.dirtyBytes, 0);
      assert.equal(status.lastError, undefined);
      const packs = await f.remote.list('pack');
      // Packs of about 3 blocks: more than one, and each one put once.
      assert.ok(packs.length >= 2 && packs.length <= 4, `${packs.length} packs`);
      assert.equal(status.packsUploaded, packs.length);
      assert.equal(f.remote.calls.put, packs.length);
      assert.equal(status.bytesUploaded, packs.reduce((n, p) => n + p.size, 0));
      // Every block is in exactly one pack, found through the pack's own index.
      const indexed: Buffer[] = [];
      for (const p of packs) indexed.push(...(await readPackIndex(f.remote, p)).map((e) => e.hash));
      assert.deepEqual(hexes(indexed), hexes(blocks.map((b) => b.hash)));
      // Clean now: nothing to do for a second flush.
      await up.flush();
      assert.equal(f.remote.calls.put, packs.length);
      await up.close();
    } finally {
      await f.close();
    }
  });

  it('starts a pack without a flush once a pack\'s worth is dirty', async () => {
    const f = await cacheFixture();
    try {
      const up = uploader(f, { packBytes: 2 * BLOCK });
      await storeBlocks(f.volume, randomBlocks(3));
      up.notify();
      await until(() => up.status().packsUploaded >= 1, 10_000, 'a pack uploaded');
      assert.ok(up.status().dirtyBlocks < 3);
      await up.close();
    } finally {
      await f.close();
    }
  });

  it('keeps blocks dirty when a put fails, and a later flush uploads them', async () => {
    const f = await cacheFixture();
    try {
      const blocks = randomBlocks(4);
      await storeBlocks(f.volume, blocks);
      const up = uploader(f, { packBytes: 16 * BLOCK });
      f.remote.failNext('put');
      await assert.rejects(up.flush(), /injected put failure/);
      assert.equal(up.status().dirtyBlocks, 4);
      assert.equal(up.status().packsUploaded, 0);
      assert.deepEqual(await f.remote.list('pack'), []);

      await up.flush();
      assert.equal(up.status().dirtyBlocks, 0);
      assert.equal(up.status().packsUploaded, 1);
      const [pack] = await f.remote.list('pack');
      assert.deepEqual(hexes((await readPackIndex(f.remote, pack)).map((e) => e.hash)), hexes(blocks.map((b) => b.hash)));
      await up.close();
    } finally {
      await f.close();
    }
  });

  it('retries a failed background upload on its own, saying why meanwhile', async () => {
    const f = await cacheFixture();
    try {
      await storeBlocks(f.volume, randomBlocks(2));
      const up = uploader(f, { idleMs: 10, retryMs: 30 });
      f.remote.failNext('put', 2);
      up.notify();
      await until(() => up.status().lastError !== undefined, 10_000, 'the first failure');
      assert.match(up.status().lastError!, /injected put failure/);
      assert.equal(up.status().dirtyBlocks, 2);
      await until(() => up.status().packsUploaded === 1, 10_000, 'the retried upload');
      assert.equal(up.status().dirtyBlocks, 0);
      assert.equal(up.status().lastError, undefined);
      assert.equal(f.remote.calls.put, 3);
      assert.equal(f.log.errors.filter((e) => /stay dirty/.test(e)).length, 2);
      await up.close();
    } finally {
      await f.close();
    }
  });

  it('close waits for the upload in progress and leaves the rest dirty', async () => {
    const f = await cacheFixture();
    try {
      await storeBlocks(f.volume, randomBlocks(2));
      const up = uploader(f);
      await up.close();
      up.notify();
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(up.status().dirtyBlocks, 2);
      assert.equal(f.remote.calls.put, 0);
    } finally {
      await f.close();
    }
  });
});
