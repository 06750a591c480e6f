import assert from 'node:assert/strict';
import { constants } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { RemoteCache } from '../src/cache/remote-cache';
import { readPackIndex } from '../src/cache/restore';
import { ROOT_INO, PogFs } from '../src/vfs/filesystem';
import { BLOCK, cacheFixture, evictAll, flipByte, randomBlocks, type CacheFixture } from './support/cache';
import { b, quietLog, root } from './support/fs';

/**
 * The cache under the filesystem, in-process: what a program reads through PogFs when
 * the local store has given its blocks up (fetched, or EIO for damaged bytes, never wrong
 * bytes), and pinned trees kept local.
 */

const O_RDWR = 2;

interface Stack {
  f: CacheFixture;
  cache: RemoteCache;
  fs: PogFs;
  close(): Promise<void>;
}

async function stack(): Promise<Stack> {
  const f = await cacheFixture();
  const cache = new RemoteCache(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), { cacheBytes: 64 * BLOCK, packBytes: 64 * BLOCK, readaheadBytes: 0, uploadIdleMs: 60_000, log: f.log });
  const fs = new PogFs(f.volume, { syncOnClose: true, commitIntervalMs: 5000, metadataCommitMs: 1000, cache, readaheadBytes: 0 }, quietLog);
  return {
    f,
    cache,
    fs,
    async close() {
      await fs.shutdown();
      await cache.close();
      await f.close();
    },
  };
}

/** Writes a file of `data` through PogFs and closes it; its inode. */
async function writeFile(fs: PogFs, name: string, data: Buffer): Promise<number> {
  const e = await fs.create(ROOT_INO, b(name), 0o644, O_RDWR, root);
  await fs.write(e.attr.ino, e.fh, data, 0, root);
  await fs.flush(e.attr.ino, e.fh);
  fs.release(e.attr.ino, e.fh, 0);
  // The close parked its blocks in the metadata: into the store (and the cache's ledger) now.
  await fs.durability.move();
  return e.attr.ino;
}

/** Reads `length` bytes at `offset` as a program would: the bytes, or the errno. */
async function readFile(fs: PogFs, ino: number, offset: number, length: number): Promise<Buffer | number> {
  const o = await fs.open(ino, 0, root);
  try {
    return await fs.read(ino, o.fh, length, offset);
  } catch (err) {
    return (err as { errno?: number }).errno ?? -1;
  } finally {
    fs.release(ino, o.fh, 0);
  }
}

describe('RemoteCache under PogFs', () => {
  it('a file whose blocks were evicted reads back whole from the remote', async () => {
    const s = await stack();
    try {
      const data = Buffer.concat(randomBlocks(3).map((x) => x.data));
      const ino = await writeFile(s.fs, 'f', data);
      await s.cache.flush();
      await evictAll(s.f);
      assert.equal(s.cache.status().localBytes, 0);
      const back = await readFile(s.fs, ino, 0, data.length);
      assert.ok(Buffer.isBuffer(back) && back.equals(data));
      assert.equal(s.cache.status().reads.misses, 3);
    } finally {
      await s.close();
    }
  });

  it('a damaged pack byte is EIO for the reader of that block, and the file\'s other blocks still read', async () => {
    const s = await stack();
    try {
      const blocks = randomBlocks(3);
      const ino = await writeFile(s.fs, 'f', Buffer.concat(blocks.map((x) => x.data)));
      await s.cache.flush();
      await evictAll(s.f);
      const [pack] = await s.f.remote.list('pack');
      const second = (await readPackIndex(s.f.remote, pack)).find((e) => e.hash.equals(blocks[1].hash))!;
      flipByte(join(s.f.remoteDir, pack.id), second.valueOffset + second.valueLength - 100);

      assert.equal(await readFile(s.fs, ino, BLOCK, BLOCK), constants.errno.EIO);
      assert.equal(await readFile(s.fs, ino, BLOCK + 10, 10), constants.errno.EIO, 'any range of it');
      const first = await readFile(s.fs, ino, 0, BLOCK);
      assert.ok(Buffer.isBuffer(first) && first.equals(blocks[0].data));
      const third = await readFile(s.fs, ino, 2 * BLOCK, BLOCK);
      assert.ok(Buffer.isBuffer(third) && third.equals(blocks[2].data));
    } finally {
      await s.close();
    }
  });

  it('a pinned file is fetched whole and survives eviction until unpinned', async () => {
    const s = await stack();
    try {
      const blocks = randomBlocks(3);
      const pinned = await writeFile(s.fs, 'pinned', Buffer.concat(blocks.map((x) => x.data)));
      const other = randomBlocks(2);
      await writeFile(s.fs, 'other', Buffer.concat(other.map((x) => x.data)));
      await s.cache.flush();
      await evictAll(s.f);

      const result = await s.cache.pin(pinned);
      assert.deepEqual(result, { ino: pinned, blocks: 3, bytes: 3 * BLOCK, fetched: 3, failed: 0 });
      assert.equal(s.cache.status().pinnedBytes, 3 * BLOCK);
      await evictAll(s.f);
      for (const x of blocks) assert.equal(s.f.volume.store.has(x.hash), true, 'pinned blocks stay');

      assert.deepEqual(await s.cache.unpin(pinned), { ino: pinned, unpinned: true });
      await evictAll(s.f);
      for (const x of blocks) assert.equal(s.f.volume.store.has(x.hash), false, 'evictable again');
    } finally {
      await s.close();
    }
  });
});
