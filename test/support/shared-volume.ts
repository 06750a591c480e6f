import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { RemoteCache } from '../../src/cache/remote-cache';
import { PgPackIndex } from '../../src/meta/pg-pack-index';
import { LocalRemote } from '../../src/remote/local-remote';
import { Volume } from '../../src/vfs/volume';
import type { TestLog } from './cache';
import { unmountAnyway } from './mount';
import { tempDir } from './tmp';

/** Where the tests put a PostgreSQL volume that several machines mount over a `local:` remote. */
export interface SharedVolumePlaces {
  dir: string;
  /** Machine A's volume directory (`pogfs init V --meta URL --remote local:R`). */
  volume: string;
  remote: string;
  /** The cache directories of machines B and C (`pogfs mount URL M --cache-dir C`). */
  cacheB: string;
  cacheC: string;
  /** The mount points of A, B and C (made). */
  ma: string;
  mb: string;
  mc: string;
}

/** A temporary directory for a shared volume; removing it unmounts C, B and A first, also after a failure. */
export function sharedVolumePlaces(prefix: string): SharedVolumePlaces {
  const dir = tempDir(prefix, () => {
    for (const m of [mc, mb, ma]) unmountAnyway(m);
  });
  const [ma, mb, mc] = ['ma', 'mb', 'mc'].map((m) => join(dir, m));
  for (const m of [ma, mb, mc]) mkdirSync(m);
  return { dir, volume: join(dir, 'vol'), remote: join(dir, 'remote'), cacheB: join(dir, 'cache-b'), cacheC: join(dir, 'cache-c'), ma, mb, mc };
}

/**
 * One machine of a shared volume, without a mount: a block store of its own (`DIR/NAME`)
 * and a remote cache over the shared `local:` remote (`DIR/remote`) and the database's
 * pack index at `url`. close() closes all of it.
 */
export async function sharedStoreMachine(url: string, dir: string, log: TestLog, name: string) {
  const remoteDir = join(dir, 'remote');
  const volume = Volume.create(join(dir, name), { remote: `local:${remoteDir}`, compression: 'none', superchunks: false });
  const remote = new LocalRemote(remoteDir);
  await remote.init();
  const shared = PgPackIndex.open(url);
  const cache = new RemoteCache(volume.ledger, volume.localPackIndex, remote, volume.packer(), {
    cacheBytes: 1 << 30,
    packBytes: 8 << 20,
    readaheadBytes: 0,
    uploadIdleMs: 60_000,
    log,
    shared,
  });
  return {
    volume,
    cache,
    shared,
    remote,
    async close() {
      await cache.close();
      await shared.close();
      await remote.close();
      await volume.close();
    },
  };
}
