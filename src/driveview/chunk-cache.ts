/**
 * The Drive view's chunk cache: file content in fixed-size chunks keyed by what the content
 * is (md5Checksum + size + chunk size + chunk index), not by path or file id, so a file
 * renamed or moved on Drive keeps its cache and identical files are cached once. Chunks
 * live as files under `<state>/chunks/`, indexed in the mirror database (which survives a
 * restart), evicted least recently used first to stay under the capacity. A small memory
 * LRU in front spares the disk the many kernel reads that fall into one chunk.
 */
import { mkdirSync, statfsSync } from 'node:fs';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MirrorDb } from './mirror-db';

export interface ChunkCacheStats {
  capacityBytes: number;
  bytes: number;
  chunks: number;
  hits: number;
  misses: number;
}

/**
 * Room a chunk never takes on the state directory's disk: 2% of it, at least 8 MiB,
 * kept for the mirror database (SQLite rolls a whole transaction back when it cannot
 * grow its log) and the log. A chunk that would eat into it stays in memory only.
 */
function diskReserve(totalBytes: number): number {
  return Math.max(8 * 1024 * 1024, totalBytes * 0.02);
}

/** Touches of recently used chunks are written to the index in batches. */
const TOUCH_BATCH = 512;
const EVICT_BATCH = 64;

export function contentKey(md5: string, size: number, chunkSize: number, index: number): string {
  return `${md5}.${size}.${chunkSize}.${index}`;
}

export class DiskChunkCache {
  private bytes: number;
  private chunks: number;
  private hits = 0;
  private misses = 0;
  private clock: number;
  private readonly touches = new Map<string, number>();
  private readonly memory = new Map<string, Buffer>();
  private memoryBytes = 0;
  private tmpSeq = 0;
  /** Bytes of chunk files being written now (not yet seen by statfs). */
  private writingBytes = 0;
  /** The disk was found full: said once in the log until a chunk fits again. */
  private diskFull = false;
  /** Content (md5.size.) whose chunks were dropped: a store of one still on its way is undone. */
  private readonly dropped = new Set<string>();

  constructor(
    private readonly dir: string,
    private readonly index: MirrorDb,
    private readonly capacityBytes: number,
    private readonly memoryCapacity: number,
    private readonly onError: (msg: string, err: unknown) => void,
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const s = index.chunkBytes();
    this.bytes = s.bytes;
    this.chunks = s.chunks;
    this.clock = Date.now();
  }

  stats(): ChunkCacheStats {
    return { capacityBytes: this.capacityBytes, bytes: this.bytes, chunks: this.chunks, hits: this.hits, misses: this.misses };
  }

  private path(key: string): string {
    return join(this.dir, key.slice(0, 2), key);
  }

  /** The chunk, from memory or disk; undefined when it is not cached. */
  async get(key: string): Promise<Buffer | undefined> {
    const m = this.memory.get(key);
    if (m) {
      this.memory.delete(key);
      this.memory.set(key, m);
      this.hits++;
      this.touch(key);
      return m;
    }
    if (!this.index.hasChunk(key)) {
      this.misses++;
      return undefined;
    }
    try {
      const data = await readFile(this.path(key));
      this.hits++;
      this.touch(key);
      this.remember(key, data);
      return data;
    } catch {
      // Evicted under us, or lost: a miss, and the index forgets it.
      this.forget(key);
      this.misses++;
      return undefined;
    }
  }

  /** Whether a chunk is cached (memory or disk), without reading it. */
  has(key: string): boolean {
    return this.memory.has(key) || this.index.hasChunk(key);
  }

  /** Keeps a chunk in memory only (content with no md5 to key it by on disk). */
  remember(key: string, data: Buffer): void {
    if (this.memoryCapacity <= 0 || data.length > this.memoryCapacity) return;
    const old = this.memory.get(key);
    if (old) this.memoryBytes -= old.length;
    this.memory.delete(key);
    this.memory.set(key, data);
    this.memoryBytes += data.length;
    for (const [k, v] of this.memory) {
      if (this.memoryBytes <= this.memoryCapacity) break;
      this.memory.delete(k);
      this.memoryBytes -= v.length;
    }
  }

  /** Stores a chunk (memory and disk), then evicts the least recently used beyond the capacity. */
  async put(key: string, data: Buffer): Promise<void> {
    const content = key.slice(0, key.indexOf('.', key.indexOf('.') + 1) + 1);
    if (this.dropped.has(content)) return;
    this.remember(key, data);
    if (this.capacityBytes <= 0 || data.length > this.capacityBytes || this.index.hasChunk(key)) return;
    if (!this.roomFor(data.length)) return;
    const path = this.path(key);
    const tmp = join(this.dir, `.tmp-${process.pid}-${this.tmpSeq++}`);
    this.writingBytes += data.length;
    try {
      mkdirSync(join(this.dir, key.slice(0, 2)), { recursive: true, mode: 0o700 });
      await writeFile(tmp, data, { mode: 0o600 });
      await rename(tmp, path);
      if (this.dropped.has(content)) {
        await rm(path, { force: true });
        this.dropMemory(key);
        return;
      }
    } catch (e) {
      await rm(tmp, { force: true });
      this.onError(`chunk cache: cannot store a chunk in ${this.dir}`, e);
      return;
    } finally {
      this.writingBytes -= data.length;
    }
    if (!this.index.hasChunk(key)) {
      try {
        this.index.addChunk(key, data.length, this.tick());
      } catch (e) {
        // The index could not grow (a full disk): the file is not worth keeping unindexed.
        await rm(path, { force: true });
        this.onError(`chunk cache: cannot index a chunk in ${this.dir}`, e);
        return;
      }
      this.bytes += data.length;
      this.chunks++;
    }
    await this.evict();
  }

  /** True when `bytes` more fit on the state directory's disk above its reserve. */
  private roomFor(bytes: number): boolean {
    let free: number;
    let total: number;
    try {
      const fs = statfsSync(this.dir);
      free = fs.bavail * fs.bsize;
      total = fs.blocks * fs.bsize;
    } catch {
      return true; // statfs failing says nothing about room: the write will tell
    }
    const fits = free - this.writingBytes - bytes >= diskReserve(total);
    if (!fits && !this.diskFull) this.onError(`chunk cache: the disk of ${this.dir} is full; chunks are served from memory until there is room`, undefined);
    this.diskFull = !fits;
    return fits;
  }

  /** Drops every chunk of one content (its md5 turned out wrong). */
  async dropContent(md5: string, size: number): Promise<void> {
    const prefix = `${md5}.${size}.`;
    this.dropped.add(prefix);
    for (const key of [...this.memory.keys()]) if (key.startsWith(prefix)) this.dropMemory(key);
    for (const key of this.index.chunkKeysWithPrefix(prefix)) {
      await rm(this.path(key), { force: true });
      this.forget(key);
    }
  }

  /** Writes pending recency updates to the index. */
  flush(): void {
    if (this.touches.size === 0) return;
    const uses = [...this.touches];
    this.touches.clear();
    this.index.touchChunks(uses);
  }

  private dropMemory(key: string): void {
    const m = this.memory.get(key);
    if (m) {
      this.memory.delete(key);
      this.memoryBytes -= m.length;
    }
  }

  private forget(key: string): void {
    const bytes = this.index.chunkSizeOf(key);
    if (bytes === undefined) return;
    this.index.removeChunk(key);
    this.chunks--;
    this.bytes -= bytes;
  }

  private tick(): number {
    this.clock = Math.max(this.clock + 1, Date.now());
    return this.clock;
  }

  private touch(key: string): void {
    this.touches.set(key, this.tick());
    if (this.touches.size >= TOUCH_BATCH) this.flush();
  }

  private async evict(): Promise<void> {
    if (this.bytes <= this.capacityBytes) return;
    this.flush();
    for (let guard = 0; this.bytes > this.capacityBytes && guard < 1_000_000; guard++) {
      const victims = this.index.oldestChunks(EVICT_BATCH);
      if (victims.length === 0) break;
      for (const v of victims) {
        if (this.bytes <= this.capacityBytes) break;
        this.index.removeChunk(v.key);
        this.bytes -= v.bytes;
        this.chunks--;
        this.dropMemory(v.key);
        await rm(this.path(v.key), { force: true });
      }
    }
  }
}
