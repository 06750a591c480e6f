/**
 * `local:DIR`: a Remote in a local directory (the embedded default: no account needed).
 *
 *   DIR/packs/xx/NAME   packs, in subdirectories by the first two characters of the name
 *   DIR/meta/NAME       metadata backups
 *   DIR/lock.json       the writer lock
 *
 * Every write is durable and atomic: a temp file (a dot name, which listings skip) in the
 * same directory, fsync, rename over the final name, fsync of the directory.
 */
import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fsyncDir, writeDurably, writeTemp } from './durable-file';
import { assertObjectName, LOCK_NAME, packPrefix } from './object-names';
import { RemoteError, type PutOptions, type Remote, type RemoteCounters, type RemoteKind, type RemoteLock, type RemoteObject } from './remote';

export class LocalRemote implements Remote {
  readonly description: string;
  private readonly dir: string;
  private readonly counts: RemoteCounters = {};
  /** Directories known to exist durably, so a put does not mkdir and fsync each time. */
  private readonly madeDirs = new Set<string>();

  constructor(dir: string) {
    this.dir = resolve(dir);
    this.description = `local:${this.dir}`;
  }

  async init(): Promise<void> {
    this.count('init');
    await this.ensureDir(join(this.dir, 'packs'));
    await this.ensureDir(join(this.dir, 'meta'));
  }

  /** `fresh` changes nothing here: a rename over the old file replaces it at no extra cost. */
  async put(kind: RemoteKind, name: string, data: Buffer, _options?: PutOptions): Promise<RemoteObject> {
    this.count('put');
    assertObjectName(kind, name);
    const rel = relativePath(kind, name);
    const path = join(this.dir, rel);
    await this.ensureDir(dirname(path));
    await this.io(`put ${rel}`, () => writeDurably(path, data));
    this.add('bytes.up', data.length);
    return { kind, name, id: rel, size: data.length };
  }

  async read(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>, offset?: number, length?: number): Promise<Buffer> {
    this.count('read');
    assertObjectName(object.kind, object.name);
    const rel = relativePath(object.kind, object.name);
    const buf = await this.io(`read ${rel}`, async () => {
      let fh: FileHandle;
      try {
        fh = await open(join(this.dir, rel), 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new RemoteError(`${object.kind} ${object.name} is not in ${this.description}`, 'not-found');
        throw e;
      }
      try {
        const size = (await fh.stat()).size;
        const start = offset ?? 0;
        const want = length ?? Math.max(0, size - start);
        if (!Number.isInteger(start) || start < 0 || !Number.isInteger(want) || want < 0) throw new RemoteError(`bad range: offset ${offset}, length ${length}`, 'io');
        if (start + want > size) throw new RemoteError(`${rel}: range ${start}+${want} past the end of a ${size}-byte object`, 'io');
        return await readExactly(fh, start, want, rel);
      } finally {
        await fh.close();
      }
    });
    this.add('bytes.down', buf.length);
    return buf;
  }

  async list(kind: RemoteKind): Promise<RemoteObject[]> {
    this.count('list');
    return this.io(`list ${kind}`, async () => {
      const out: RemoteObject[] = [];
      const dirs = kind === 'meta' ? ['meta'] : (await entries(join(this.dir, 'packs'))).filter((e) => e.isDirectory()).map((e) => join('packs', e.name));
      for (const rel of dirs) {
        for (const e of await entries(join(this.dir, rel))) {
          if (!e.isFile() || e.name.startsWith('.')) continue;
          const info = await stat(join(this.dir, rel, e.name)).catch(() => undefined);
          if (!info) continue; // deleted meanwhile
          out.push({ kind, name: e.name, id: join(rel, e.name), size: info.size });
        }
      }
      return out;
    });
  }

  async delete(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>): Promise<void> {
    this.count('delete');
    assertObjectName(object.kind, object.name);
    const rel = relativePath(object.kind, object.name);
    await this.io(`delete ${rel}`, async () => {
      try {
        await unlink(join(this.dir, rel));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      await fsyncDir(dirname(join(this.dir, rel)));
    });
  }

  async readLock(): Promise<RemoteLock | undefined> {
    this.count('readLock');
    return this.io('read lock', () => this.currentLock());
  }

  /**
   * Takes the lock. A free lock is taken with link(2), which fails if lock.json appeared
   * meanwhile, so two local writers cannot both take a free lock; replacing a lock (same
   * owner, or force) is a rename.
   */
  async acquireLock(lock: RemoteLock, options: { force?: boolean } = {}): Promise<void> {
    this.count('acquireLock');
    await this.ensureDir(this.dir);
    const path = join(this.dir, LOCK_NAME);
    await this.io('take lock', async () => {
      // Bounded: each pass either takes the lock, refuses, or lost a race to a writer that took it.
      for (let pass = 0; pass < 3; pass++) {
        let holder: RemoteLock | undefined;
        let unreadable = false;
        try {
          holder = await this.currentLock();
        } catch (e) {
          // Force replaces even a lock file that is not a lock.
          if (!(options.force && e instanceof RemoteError && e.code === 'io')) throw e;
          unreadable = true;
        }
        if (holder && holder.owner !== lock.owner && !options.force) throw lockedError(this.description, holder);
        const temp = await writeTemp(path, Buffer.from(JSON.stringify(lock)));
        try {
          if (holder || unreadable) {
            await rename(temp, path);
          } else {
            try {
              await link(temp, path);
            } catch (e) {
              if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
              throw e;
            }
          }
        } finally {
          await rm(temp, { force: true });
        }
        await fsyncDir(this.dir);
        return;
      }
      const holder = await this.currentLock();
      throw lockedError(this.description, holder ?? lock);
    });
  }

  async releaseLock(owner: string): Promise<void> {
    this.count('releaseLock');
    await this.io('release lock', async () => {
      const holder = await this.currentLock().catch(() => undefined);
      if (holder?.owner !== owner) return;
      await unlink(join(this.dir, LOCK_NAME)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
      await fsyncDir(this.dir);
    });
  }

  counters(): RemoteCounters {
    return { ...this.counts };
  }

  async close(): Promise<void> {}

  private async currentLock(): Promise<RemoteLock | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.dir, LOCK_NAME), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    try {
      const v = JSON.parse(text) as Partial<RemoteLock>;
      if (typeof v.owner === 'string' && typeof v.host === 'string' && typeof v.pid === 'number' && typeof v.since === 'string') {
        return { owner: v.owner, host: v.host, pid: v.pid, since: v.since };
      }
    } catch {
      // fall through
    }
    throw new RemoteError(`${join(this.dir, LOCK_NAME)} is not a lock (remove it if no pogfs uses this remote)`, 'io');
  }

  /** mkdir -p, then fsync of each parent whose entry list changed. */
  private async ensureDir(path: string): Promise<void> {
    if (this.madeDirs.has(path)) return;
    await this.io(`mkdir ${path}`, async () => {
      const first = await mkdir(path, { recursive: true });
      if (first !== undefined) {
        // Bounded by the depth between the first directory made and `path`.
        for (let d = path; ; d = dirname(d)) {
          await fsyncDir(dirname(d));
          if (d === first || dirname(d) === d) break;
        }
      }
    });
    this.madeDirs.add(path);
  }

  /** Runs filesystem work; anything but a RemoteError becomes RemoteError 'io' naming the step and errno. */
  private async io<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof RemoteError) throw e;
      const err = e as NodeJS.ErrnoException;
      const code = err.code === 'ENOSPC' || err.code === 'EDQUOT' ? 'quota' : 'io';
      throw new RemoteError(`${this.description}: ${what}: ${err.code ?? err.message}`, code);
    }
  }

  private count(method: string): void {
    this.add(method, 1);
  }

  private add(name: string, n: number): void {
    this.counts[name] = (this.counts[name] ?? 0) + n;
  }
}

function relativePath(kind: RemoteKind, name: string): string {
  return kind === 'pack' ? join('packs', packPrefix(name), name) : join('meta', name);
}

async function entries(dir: string) {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

async function readExactly(fh: FileHandle, start: number, length: number, what: string): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(buf, done, length - done, start + done);
    if (bytesRead === 0) throw new RemoteError(`${what}: object ended after ${done} of ${length} bytes`, 'io');
    done += bytesRead;
  }
  return buf;
}

function lockedError(where: string, holder: RemoteLock): RemoteError {
  return new RemoteError(`${where} is locked by ${holder.host} (pid ${holder.pid}) since ${holder.since}`, 'locked');
}
