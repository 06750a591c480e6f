import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
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
