import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { GENERATION_KEY, MetaBackup, generationName, listGenerations, type MetaBackupOptions } from '../src/cache/meta-backup';
import { PackUploader } from '../src/cache/pack-uploader';
import { downloadNewestMetadata, indexPacks } from '../src/cache/restore';
import { MetaDb } from '../src/meta/meta-db';
import { BLOCK, cacheFixture, randomBlocks, storeBlocks, type CacheFixture } from './support/cache';
import { tempDir } from './support/tmp';

/** Metadata backups to a local: remote and restores from them, in-process. */

function uploaderOf(f: CacheFixture): PackUploader {
  return new PackUploader(f.volume.ledger, f.volume.meta, f.remote, f.volume.packer(), { packBytes: 64 * BLOCK, idleMs: 60_000, parallel: 1, retryMs: 60_000, log: f.log });
}

function backupOf(f: CacheFixture, up: PackUploader, options: Partial<MetaBackupOptions> = {}): MetaBackup {
  return new MetaBackup(f.volume.meta, f.remote, { keep: 3, holdReleases: () => () => undefined, flushBlocks: () => up.flush(), log: f.log, ...options });
}

describe('MetaBackup and restore', () => {
  it('a generation restores the metadata it was taken of, and the packs uploaded since are indexed from the remote', async () => {
    const f = await cacheFixture();
    const up = uploaderOf(f);
    try {
      const before = randomBlocks(3);
      await storeBlocks(f.volume, before);
      const backup = backupOf(f, up);
      const result = await backup.backup('test');
      assert.equal(result.generation, 1);
      assert.ok(result.compressedBytes > 0 && result.compressedBytes < result.rawBytes);
      assert.deepEqual(backup.lastResult, result);
      // The backup uploaded the dirty blocks first: the snapshot knows their pack.
      assert.equal(up.status().dirtyBlocks, 0);
      assert.deepEqual((await listGenerations(f.remote)).map((g) => g.name), [generationName(1)]);

      const after = randomBlocks(2);
      await storeBlocks(f.volume, after);
      await up.flush();

      const restoredPath = join(tempDir(), 'meta.db');
      const restored = await downloadNewestMetadata(f.remote, restoredPath);
      assert.equal(restored.generation, 1);
      const meta = MetaDb.open(restoredPath);
      try {
        assert.equal(meta.remote.state(GENERATION_KEY), '1');
        assert.deepEqual(meta.totals(), f.volume.meta.totals());
        for (const b of before) assert.ok(meta.remote.locate(b.hash), 'known to the generation');
        for (const b of after) assert.equal(meta.remote.locate(b.hash), undefined, 'uploaded after it');
        const scan = await indexPacks(f.remote, meta);
        assert.deepEqual(scan, { packs: 1, blocks: 2, unreadable: [] });
        for (const b of after) assert.ok(meta.remote.locate(b.hash), 'indexed from the pack');
      } finally {
        meta.close();
      }
    } finally {
      await up.close();
      await f.close();
    }
  });

  it('holds block releases from before the snapshot until the generation is on the remote', async () => {
    const f = await cacheFixture();
    const up = uploaderOf(f);
    try {
      await storeBlocks(f.volume, randomBlocks(2));
      const events: string[] = [];
      const backup = backupOf(f, up, {
        holdReleases: () => {
          events.push('hold');
          return () => events.push(`release after ${f.remote.calls.put} puts`);
        },
        flushBlocks: async () => {
          events.push('flush');
          await up.flush();
        },
      });
      await backup.backup('test');
      // One pack, then the generation; the releases are let go only after both.
      assert.deepEqual(events, ['hold', 'flush', 'flush', 'release after 2 puts']);
    } finally {
      await up.close();
      await f.close();
    }
  });

  it('numbers generations and keeps the newest few', async () => {
    const f = await cacheFixture();
    const up = uploaderOf(f);
    try {
      const backup = backupOf(f, up, { keep: 2 });
      for (let i = 1; i <= 4; i++) assert.equal((await backup.backup(`run ${i}`)).generation, i);
      assert.deepEqual((await listGenerations(f.remote)).map((g) => g.generation), [4, 3]);
    } finally {
      await up.close();
      await f.close();
    }
  });

  it('a failed upload of a generation is reported, lets the releases go, and the next backup succeeds', async () => {
    const f = await cacheFixture();
    const up = uploaderOf(f);
    try {
      let released = 0;
      const backup = backupOf(f, up, { holdReleases: () => () => released++ });
      f.remote.failNext('put');
      await assert.rejects(backup.backup('test'), /injected put failure/);
      assert.match(backup.lastError ?? '', /injected put failure/);
      assert.equal(released, 1);
      assert.deepEqual(await listGenerations(f.remote), []);
      assert.ok(f.log.errors.some((e) => /metadata backup \(test\)/.test(e)));

      const ok = await backup.backup('again');
      assert.equal(backup.lastError, undefined);
      assert.equal(released, 2);
      assert.deepEqual((await listGenerations(f.remote)).map((g) => g.generation), [ok.generation]);
    } finally {
      await up.close();
      await f.close();
    }
  });

  it('a restore skips a damaged newest generation for the one before it', async () => {
    const f = await cacheFixture();
    const up = uploaderOf(f);
    try {
      const backup = backupOf(f, up);
      await backup.backup('one');
      await backup.backup('two');
      const [newest] = await listGenerations(f.remote);
      writeFileSync(join(f.remoteDir, newest.id), 'not gzip');
      const restored = await downloadNewestMetadata(f.remote, join(tempDir(), 'meta.db'));
      assert.equal(restored.generation, 1);
    } finally {
      await up.close();
      await f.close();
    }
  });
});
