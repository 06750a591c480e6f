/**
 * Joining a PostgreSQL volume from another machine (src/cli/pg-join.ts): the local cache
 * directory is created once (its own block store, the volume's settings, meta.url) and
 * reused after; a volume without a remote, and a directory that is another volume's, are
 * refused in one line with exit code 2. A real server; the volumes made by `pogfs init`.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { UsageError } from '../src/cli/errors';
import { defaultJoinCacheDir, joinPostgresVolume } from '../src/cli/pg-join';
import { Volume } from '../src/vfs/volume';
import { pogfs, pogfsOk } from './support/mount';
import { queryPostgres, startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

const server = startPostgres();

describe('joining a PostgreSQL volume from another machine', () => {
  const dir = tempDir('pogfs-join-');

  it('creates the cache directory once, with the volume\'s settings and URL, and reuses it after', async () => {
    const url = server.createDatabase();
    const remote = join(dir, 'remote');
    pogfsOk(['init', join(dir, 'vol'), '--meta', url, '--remote', `local:${remote}`, '--compression', 'lz4', '--block-size', '64K']);
    const cache = join(dir, 'cache');
    const notices: string[] = [];
    assert.equal(await joinPostgresVolume(url, { cacheDir: cache, notice: (l) => notices.push(l) }), cache);
    assert.equal(notices.length, 1);
    assert.equal(fs.readFileSync(join(cache, 'meta.url'), 'utf8').trim(), url);
    const v = Volume.open(cache);
    try {
      assert.equal(v.metaUrl, url);
      assert.equal(v.settings.remote, `local:${remote}`);
      assert.equal(v.settings.compression, 'lz4');
      assert.equal(v.blockSize, 64 * 1024);
      assert.ok(v.sharesBlocks);
    } finally {
      await v.close();
    }
    // Something only this cache has survives the second join: the directory was reused.
    fs.writeFileSync(join(cache, 'marker'), 'x');
    assert.equal(await joinPostgresVolume(url, { cacheDir: cache, notice: (l) => notices.push(l) }), cache);
    assert.equal(notices.length, 1, 'nothing created the second time');
    assert.ok(fs.existsSync(join(cache, 'marker')));

    // Without --cache-dir: under XDG_CACHE_HOME, named by the volume's UUID.
    const uuid = (await queryPostgres(url, 'SELECT uuid FROM superblock'))[0].uuid as string;
    const saved = process.env.XDG_CACHE_HOME;
    process.env.XDG_CACHE_HOME = join(dir, 'xdg-cache');
    try {
      const made = await joinPostgresVolume(url, { notice: () => undefined });
      assert.equal(made, join(dir, 'xdg-cache', 'pogfs', uuid));
      assert.equal(made, defaultJoinCacheDir(uuid));
      assert.ok(Volume.exists(made));
    } finally {
      if (saved === undefined) delete process.env.XDG_CACHE_HOME;
      else process.env.XDG_CACHE_HOME = saved;
    }

    // The cache of this database is not the cache of another one.
    const other = server.createDatabase();
    pogfsOk(['init', join(dir, 'vol-other'), '--meta', other, '--remote', `local:${join(dir, 'remote-other')}`]);
    await assert.rejects(joinPostgresVolume(other, { cacheDir: cache, notice: () => undefined }), (err: unknown) => {
      assert.ok(err instanceof UsageError && err.exitCode === 2, String(err));
      assert.match(err.message, /is the cache of .+, not of .+: give another --cache-dir/);
      return true;
    });
  });

  it('refuses a volume without a remote in one line, exit code 2, creating nothing', async () => {
    const url = server.createDatabase();
    pogfsOk(['init', join(dir, 'local-only'), '--meta', url]);
    const cache = join(dir, 'cache-local-only');
    await assert.rejects(joinPostgresVolume(url, { cacheDir: cache, notice: () => undefined }), (err: unknown) => {
      assert.ok(err instanceof UsageError && err.exitCode === 2, String(err));
      assert.match(err.message, /has no remote: its blocks are only in the volume directory of the machine that created it/);
      return true;
    });
    assert.ok(!fs.existsSync(cache));

    const mnt = join(dir, 'mnt');
    fs.mkdirSync(mnt);
    const r = pogfs(['mount', url, mnt, '--cache-dir', cache]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /has no remote/);
    assert.ok(!fs.existsSync(cache));

    // A password in the URL is refused without being printed.
    const withPassword = url.replace('postgres://', 'postgres://someone:hunter2@');
    const p = pogfs(['mount', withPassword, mnt, '--cache-dir', cache]);
    assert.equal(p.status, 2, p.stderr);
    assert.equal(p.stderr.trim().split('\n').length, 1, p.stderr);
    assert.match(p.stderr, /carries a password/);
    assert.doesNotMatch(p.stderr, /hunter2/);
    assert.ok(!fs.existsSync(cache));
  });
});
