/**
 * The PostgreSQL metadata engine against the conformance suite every engine passes (with
 * its two-client part: two pools, and a client in another thread, on one database), on a
 * real server this file starts (test/support/postgres.ts), one database per test.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MetadataError } from '../src/meta/meta-db';
import { openMetaEngine } from '../src/meta/registry';
import { metaConformance } from './meta-conformance';
import { startPostgres } from './support/postgres';
import { newVolumeInit } from './support/volume-init';

const server = startPostgres();


metaConformance('postgres', async () => {
  const url = server.createDatabase();
  const engine = await openMetaEngine(url, { create: newVolumeInit() });
  return { engine, url, connect: () => openMetaEngine(url) };
});

describe('the postgres: engine URL', () => {
  it('opens by postgres: and postgresql: and refuses a database without a volume, or a second volume', async () => {
    const url = server.createDatabase();
    await assert.rejects(openMetaEngine(url, { readOnly: true }), (err: Error) => err instanceof MetadataError && /no pogfs schema/.test(err.message));
    const created = await openMetaEngine(url, { create: newVolumeInit() });
    assert.equal(created.url, url);
    await created.close();
    const again = await openMetaEngine(url.replace(/^postgres:/, 'postgresql:'));
    assert.equal((await again.superblock()).block_size, 131072);
    assert.equal(typeof (await again.getattr(1)).ino, 'number');
    await again.close();
    await assert.rejects(openMetaEngine(url, { create: newVolumeInit() }), (err: Error) => err instanceof MetadataError && /already holds a pogfs volume/.test(err.message));
  });

  it('refuses a password in the URL without repeating it', async () => {
    for (const url of [
      `postgres://${server.user}:hunter2secret@localhost/db?host=${encodeURIComponent(server.socketDir)}`,
      `postgres://${server.user}@localhost/db?password=hunter2secret&host=${encodeURIComponent(server.socketDir)}`,
    ]) {
      await assert.rejects(openMetaEngine(url), (err: Error) => {
        assert.ok(err instanceof MetadataError);
        assert.match(err.message, /PGPASSWORD/);
        assert.doesNotMatch(err.message, /hunter2/);
        return true;
      });
    }
    await assert.rejects(openMetaEngine('postgres:just-a-name'), /postgres:\/\/USER@HOST/);
    await assert.rejects(openMetaEngine(`postgres://${server.user}@localhost/?host=x`), /database name is missing/);
  });

  it('names the database in a connection failure', async () => {
    const url = server.url('no_such_database');
    await assert.rejects(openMetaEngine(url), (err: Error) => err instanceof MetadataError && err.message.includes(url) && /does not exist/.test(err.message));
  });
});
