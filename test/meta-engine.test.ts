import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { MetadataError } from '../src/meta/meta-db';
import { metaEngineSchemes, openMetaEngine } from '../src/meta/registry';
import { metaConformance } from './meta-conformance';
import { tempDir } from './support/tmp';
import { newVolumeInit } from './support/volume-init';


metaConformance('sqlite', async () => {
  const url = `sqlite:${join(tempDir(), 'meta.db')}`;
  const engine = await openMetaEngine(url, { create: newVolumeInit() });
  return { engine, url, connect: () => openMetaEngine(url) };
});

describe('openMetaEngine', () => {
  it('opens engines by URL scheme and names the known ones for an unknown scheme', async () => {
    assert.deepEqual(metaEngineSchemes(), ['sqlite', 'postgres', 'postgresql']);
    const path = join(tempDir(), 'meta.db');
    const created = await openMetaEngine(`sqlite://${path}`, { create: newVolumeInit() });
    assert.equal(created.url, `sqlite:${path}`);
    await created.close();
    const opened = await openMetaEngine(`SQLITE:${path}`);
    assert.equal((await opened.superblock()).block_size, 131072);
    await opened.close();
    await assert.rejects(openMetaEngine('mysql://host/db'), (err: Error) => err instanceof MetadataError && /unknown metadata engine "mysql:".*known: sqlite:, postgres:, postgresql:/.test(err.message));
    await assert.rejects(openMetaEngine('/just/a/path'), /not a metadata engine URL/);
    await assert.rejects(openMetaEngine('sqlite:'), /needs the path/);
    await assert.rejects(openMetaEngine(`sqlite:${join(tempDir(), 'absent.db')}`), MetadataError);
  });
});
