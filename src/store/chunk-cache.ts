/**
 * A bounded LRU of decoded super-chunks, so that reading the blocks of one super-chunk
 * one after another (a directory of small files, read in the order they were written)
 * decompresses it once, not once per block. Capacity is in decoded bytes; 0 keeps
 * nothing (each read decompresses). Loads of one chunk that overlap share one
 * decompression.
 */

export interface DecodedChunk {
  data: Buffer;
  /** Offsets of blocks already checked against their BLAKE3 key since this chunk was decoded. */
  verified: Set<number>;
}

export interface ChunkCacheStats {
  capacityBytes: number;
  bytes: number;
  chunks: number;
  hits: number;
  misses: number;
}

export class ChunkCache {
  private readonly entries = new Map<number, DecodedChunk>();
  private readonly loading = new Map<number, Promise<DecodedChunk>>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;

  constructor(private capacityBytes: number) {}

  /** The decoded chunk if cached (it becomes the most recently used). */
  get(chunk: number): DecodedChunk | undefined {
    const e = this.entries.get(chunk);
    if (!e) return undefined;
    this.hits++;
    this.entries.delete(chunk);
    this.entries.set(chunk, e);
    return e;
  }

  /** The decoded chunk, from the cache or from `decode` (shared with a load already running). */
  load(chunk: number, decode: () => Promise<Buffer>): Promise<DecodedChunk> {
    const cached = this.get(chunk);
    if (cached) return Promise.resolve(cached);
    const running = this.loading.get(chunk);
    if (running) return running;
    this.misses++;
    const p = decode().then(
      (data) => {
        this.loading.delete(chunk);
        return this.insert(chunk, data);
      },
      (err: unknown) => {
        this.loading.delete(chunk);
        throw err;
      },
    );
    this.loading.set(chunk, p);
    return p;
  }

  /** Decodes synchronously on a miss (maintenance paths, never the FUSE thread's hot path). */
  loadSync(chunk: number, decode: () => Buffer): DecodedChunk {
    const cached = this.get(chunk);
    if (cached) return cached;
    this.misses++;
    return this.insert(chunk, decode());
  }

  /** Adds a chunk whose blocks are known good (just packed from verified blocks). */
  insert(chunk: number, data: Buffer, verifiedOffsets: Iterable<number> = []): DecodedChunk {
    this.drop(chunk);
    const e: DecodedChunk = { data, verified: new Set(verifiedOffsets) };
    if (this.capacityBytes <= 0 || data.length > this.capacityBytes) return e;
    this.entries.set(chunk, e);
    this.bytes += data.length;
    for (const [id, old] of this.entries) {
      if (this.bytes <= this.capacityBytes) break;
      this.entries.delete(id);
      this.bytes -= old.data.length;
    }
    return e;
  }

  /** Forgets a chunk (deleted or rewritten). */
  drop(chunk: number): void {
    const e = this.entries.get(chunk);
    if (!e) return;
    this.entries.delete(chunk);
    this.bytes -= e.data.length;
  }

  resize(capacityBytes: number): void {
    this.capacityBytes = capacityBytes;
    for (const [id, old] of this.entries) {
      if (this.bytes <= capacityBytes) break;
      this.entries.delete(id);
      this.bytes -= old.data.length;
    }
  }

  stats(): ChunkCacheStats {
    return { capacityBytes: this.capacityBytes, bytes: this.bytes, chunks: this.entries.size, hits: this.hits, misses: this.misses };
  }
}
