import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { CacheEvictor } from '../../src/cache/cache-evictor';
import { LocalRemote } from '../../src/remote/local-remote';
import { RemoteError, type PutOptions, type ReadProgress, type Remote, type RemoteCounters, type RemoteKind, type RemoteLock, type RemoteObject } from '../../src/remote/remote';
import { hashBlock } from '../../src/store/hash';
import type { Compression } from '../../src/store/codec';
import { Volume } from '../../src/vfs/volume';
import { tempDir } from './tmp';

/**
 * The cache layer's classes in-process, over real parts: a volume's SQLite metadata and
 * LMDB block store in a temp directory, and a `local:` remote beside it. The one fake is
 * FaultyRemote, which fails chosen calls of the real remote (a fault a directory cannot
 * be made to produce on demand).
 */

export const BLOCK = 128 * 1024;

/** Collects what the cache layer logs, so a test can assert on it (and the run stays quiet). */
export class TestLog {
  readonly errors: string[] = [];
  readonly warnings: string[] = [];
  readonly infos: string[] = [];
  error(msg: string, err?: unknown): void {
    this.errors.push(err instanceof Error ? `${msg}: ${err.message}` : msg);
  }
  warn(msg: string): void {
    this.warnings.push(msg);
  }
  info(msg: string): void {
    this.infos.push(msg);
  }
}

type Method = 'put' | 'read';

/** A remote whose next calls of a method fail (as a remote does after its own retries): everything else goes to the real one. */
export class FaultyRemote implements Remote {
  readonly calls: Record<Method, number> = { put: 0, read: 0 };
  private readonly failing: Record<Method, number> = { put: 0, read: 0 };

  constructor(readonly inner: Remote) {}

  get description(): string {
    return this.inner.description;
  }

  /** The next `count` calls of `method` reject with a RemoteError ('io'). */
  failNext(method: Method, count = 1): void {
    this.failing[method] += count;
  }

  private fault(method: Method): void {
    this.calls[method]++;
    if (this.failing[method] > 0) {
      this.failing[method]--;
      throw new RemoteError(`injected ${method} failure`, 'io');
    }
  }

  init(): Promise<void> {
    return this.inner.init();
  }
  async put(kind: RemoteKind, name: string, data: Buffer, options?: PutOptions): Promise<RemoteObject> {
    this.fault('put');
    return this.inner.put(kind, name, data, options);
  }
  async read(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>, offset?: number, length?: number, onProgress?: ReadProgress): Promise<Buffer> {
    this.fault('read');
    return this.inner.read(object, offset, length, onProgress);
  }
  list(kind: RemoteKind): Promise<RemoteObject[]> {
    return this.inner.list(kind);
  }
  delete(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>): Promise<void> {
    return this.inner.delete(object);
  }
  readLock(): Promise<RemoteLock | undefined> {
    return this.inner.readLock();
  }
  acquireLock(lock: RemoteLock, options?: { force?: boolean }): Promise<void> {
    return this.inner.acquireLock(lock, options);
  }
  releaseLock(owner: string): Promise<void> {
    return this.inner.releaseLock(owner);
  }
  counters(): RemoteCounters {
    return this.inner.counters();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface CacheFixture {
  volume: Volume;
  /** The remote's directory (packs/, meta/). */
  remoteDir: string;
  remote: FaultyRemote;
  log: TestLog;
  close(): Promise<void>;
}

/**
 * A new volume with a `local:` remote. Stored values are raw and loose by default (no
 * compression, no super-chunks), so a test can find a block's bytes in a pack.
 */
export async function cacheFixture(settings: { compression?: Compression; superchunks?: boolean } = {}): Promise<CacheFixture> {
  const dir = tempDir('pogfs-cache-');
  const remoteDir = join(dir, 'remote');
  const volume = Volume.create(join(dir, 'vol'), { remote: `local:${remoteDir}`, compression: settings.compression ?? 'none', superchunks: settings.superchunks ?? false });
  const remote = new FaultyRemote(new LocalRemote(remoteDir));
  await remote.init();
  return {
    volume,
    remoteDir,
    remote,
    log: new TestLog(),
    async close() {
      await volume.close();
      await remote.close();
    },
  };
}

/** Random blocks (incompressible, all distinct) and their keys. */
export function randomBlocks(count: number, size = BLOCK): { hash: Buffer; data: Buffer }[] {
  return Array.from({ length: count }, () => {
    const data = randomBytes(size);
    return { hash: hashBlock(data), data };
  });
}

/** Stores blocks with one reference each: with a remote, they are dirty until uploaded. */
export async function storeBlocks(volume: Volume, blocks: readonly { hash: Buffer; data: Buffer }[]): Promise<void> {
  await volume.store.acquire(blocks);
  await volume.store.flushed();
}

/** Resolves once `done()` holds, polling; rejects after `ms`. */
export async function until(done: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Evicts every clean block from the fixture's local store (what eviction does under pressure). */
export async function evictAll(f: CacheFixture): Promise<void> {
  await new CacheEvictor(f.volume.ledger, f.volume.meta.remote, { cacheBytes: 0, lowWater: 0, log: f.log }).maybeEvict();
}

/** Flips every bit of one byte of a file (a damaged pack, say). */
export function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    const one = Buffer.alloc(1);
    readSync(fd, one, 0, 1, offset);
    one[0] ^= 0xff;
    writeSync(fd, one, 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}
