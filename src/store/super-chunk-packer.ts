import type { BlockStore } from './block-store';
import { verifiedMember } from './block-verify';
import { Codec, decodeBlockAsync, encodeBlockAsync, isCompressed, type Locator } from './codec';

/**
 * Packs short blocks (small files, file tails) into super-chunks, and rewrites super-
 * chunks that are mostly dead.
 *
 * Either compressing codec packs (LZ4 or zstd: the volume's current one, see BlockStore.codec).
 *
 * Why short blocks only: LZ4 finds matches at most 64 KiB back, so a 128 KiB block has
 * nearly all the context it can use on its own; measured on /usr/include and
 * /usr/share/doc, packing every block into 1 MiB chunks stores 0.453 of the raw bytes,
 * packing only blocks shorter than the block size 0.452, per-block LZ4 0.493. Packing
 * full blocks would only make each read of one decompress its neighbours too.
 *
 * Why later, not at write time: a file closed with sync-on-close must be durable at once,
 * and alone it is a chunk of one. So short blocks are stored raw and queued (in write
 * order, so files written together are packed together), and this packer takes them a
 * chunk at a time once a chunk's worth is queued or the queue has been idle a moment.
 * Compression runs on libuv's thread pool; each chunk is swapped in by one durable
 * LMDB transaction that checks every block is still what it was when read, so reads,
 * releases and gc may go on meanwhile.
 */

export interface PackerOptions {
  /** Decoded bytes per super-chunk. */
  targetBytes: number;
  /** A partial chunk is packed once nothing new was queued for this long (ms). */
  idleMs: number;
  onError: (err: unknown) => void;
}

export interface RepackResult {
  /** Chunks rewritten (or, in a dry run, to be): those whose live share was below the threshold, and with `recompress` those in another codec. */
  sparseChunks: number;
  /** Of those, the chunks taken because their codec is not the volume's current one (`recompress`). */
  otherCodecChunks: number;
  /** Their stored bytes, and the stored bytes of the chunks that replaced them. */
  bytesBefore: number;
  bytesAfter: number;
  /** Live blocks moved into new chunks. */
  blocksMoved: number;
  chunksWritten: number;
}

/** Default size of a super-chunk (decoded). 2 MiB packs 0.4513 of the text above, 1 MiB 0.4516: not worth twice the work per miss. */
export const SUPER_CHUNK_BYTES = 1024 * 1024;
/** Queue entries read per step. */
const QUEUE_STEP = 4096;

interface Entry {
  hash: Buffer;
  data: Buffer;
  offset: number;
  from: 'loose' | Locator;
}

export class SuperChunkPacker {
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private closed = false;
  /** Chunks written so far (for logs and tests). */
  chunksWritten = 0;

  constructor(
    private readonly store: BlockStore,
    private readonly options: PackerOptions,
  ) {
    store.onQueued = (bytes) => this.queued(bytes);
    // Blocks queued before the last shutdown (or a crash) are packed soon after start.
    if (store.superChunks.queuedBlocks(1).length > 0) this.queued(0);
  }

  /** Packs everything queued now; resolves when done (gc, unmount). */
  flush(): Promise<void> {
    this.clearTimer();
    this.running = this.running.then(() => this.packQueue(true)).catch((err: unknown) => this.options.onError(err));
    return this.running;
  }

  /** Stops scheduling (the store is about to close); waits for a step in progress. */
  async close(): Promise<void> {
    this.closed = true;
    this.clearTimer();
    if (this.store.onQueued) this.store.onQueued = undefined;
    await this.running;
  }

  /**
   * Rewrites the super-chunks whose live share (live bytes / all bytes) is below
   * `threshold`: their live blocks go into new, full chunks, and the old ones are deleted
   * with their last block. With `recompress`, chunks stored with another codec than the
   * volume's current (compressing) one are rewritten too, whatever their live share: how a
   * volume tuned from lz4 to zstd (or back) converts what it holds. Safe while the volume
   * is in use (see commitChunk).
   */
  repack(threshold: number, recompress = false): Promise<RepackResult> {
    const result = emptyRepackResult();
    const step = this.running.then(() => this.repackSparse(threshold, recompress, result));
    this.running = step.then(
      () => undefined,
      () => undefined,
    );
    return step.then(() => result);
  }

  private queued(bytes: number): void {
    if (this.closed) return;
    this.queuedBytes += bytes;
    if (this.queuedBytes >= this.options.targetBytes) {
      this.clearTimer();
      this.running = this.running.then(() => this.packQueue(false)).catch((err: unknown) => this.options.onError(err));
      return;
    }
    // Re-armed by every new block: a partial chunk waits until writing pauses.
    this.clearTimer();
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.flush();
    }, this.options.idleMs);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Packs full chunks from the queue (and, with `all`, the partial rest too). */
  private async packQueue(all: boolean): Promise<void> {
    for (;;) {
      const packed = await this.packOne(all);
      if (!packed) break;
    }
    if (all) this.queuedBytes = 0;
  }

  /**
   * Packs the oldest queued blocks, up to a chunk's worth. Returns false when there was
   * nothing to do: an empty queue, or (unless `partial`) less than a chunk queued.
   */
  private async packOne(partial: boolean): Promise<boolean> {
    const target = this.options.targetBytes;
    const entries: Entry[] = [];
    const done: number[] = [];
    const seen = new Set<string>();
    let bytes = 0;
    let full = false;
    for (let more = true; more && !full; ) {
      const batch = this.store.superChunks.queuedBlocks(done.length + QUEUE_STEP).slice(done.length);
      more = batch.length === QUEUE_STEP;
      for (const q of batch) {
        const data = this.store.looseVerified(q.hash);
        const key = q.hash.toString('latin1');
        // Gone, packed already, listed twice, or corrupt (left alone for fsck and EIO).
        if (!data || seen.has(key)) {
          done.push(q.seq);
          continue;
        }
        if (bytes + data.length > target && entries.length > 0) {
          full = true;
          break;
        }
        done.push(q.seq);
        seen.add(key);
        entries.push({ hash: q.hash, data, offset: bytes, from: 'loose' });
        bytes += data.length;
      }
    }
    if (done.length === 0) return false;
    if (!partial && !full) {
      this.queuedBytes = bytes;
      return false;
    }
    this.queuedBytes = Math.max(0, this.queuedBytes - bytes);
    await this.writeChunk(entries, done);
    return true;
  }

  /**
   * Compresses `entries` as one super-chunk and swaps it in; returns the new chunk's
   * stored size (0 when none was written). A lone loose block, or loose blocks that do
   * not compress by 1/8 together, are not worth a chunk: they are compressed alone where
   * that pays and stay loose.
   */
  private async writeChunk(entries: Entry[], done: number[]): Promise<number> {
    const raw = entries.length === 1 ? entries[0].data : Buffer.concat(entries.map((e) => e.data));
    const codec = this.store.codec;
    const options = this.store.encodeOptions();
    const compressing = codec !== Codec.Raw;
    let value = entries.length > 1 && compressing ? await encodeBlockAsync(raw, codec, { ...options, probeBytes: 0 }) : undefined;
    if ((!value || !isCompressed(value)) && entries.every((e) => e.from === 'loose')) {
      const loose: { hash: Buffer; value: Buffer }[] = [];
      if (compressing) {
        for (const e of entries) {
          const v = await encodeBlockAsync(e.data, codec, options);
          if (isCompressed(v)) loose.push({ hash: e.hash, value: v });
        }
      }
      await this.store.superChunks.replaceLoose(loose, done);
      return 0;
    }
    // Blocks moving out of a sparse chunk must go somewhere: a chunk of its own, raw if need be.
    value ??= await encodeBlockAsync(raw, codec, { ...options, probeBytes: 0 });
    const members = entries.map((e) => ({ hash: e.hash, offset: e.offset, length: e.data.length, from: e.from }));
    const id = await this.store.superChunks.commitChunk(value, raw.length, members, done);
    if (id === undefined) return 0;
    this.chunksWritten++;
    // Its bytes were verified when read: the first reads of what was just written need no decompression.
    this.store.chunkCache.insert(id, raw, entries.map((e) => e.offset));
    return value.length;
  }

  private async repackSparse(threshold: number, recompress: boolean, result: RepackResult): Promise<void> {
    const sparse = repackCandidates(this.store, threshold, recompress, result);
    let entries: Entry[] = [];
    let bytes = 0;
    const flush = async () => {
      if (entries.length === 0) return;
      const stored = await this.writeChunk(entries, []);
      if (stored > 0) {
        result.chunksWritten++;
        result.blocksMoved += entries.length;
        result.bytesAfter += stored;
      }
      entries = [];
      bytes = 0;
    };
    for (const chunk of sparse) {
      const stored = this.store.superChunks.value(chunk);
      if (!stored) continue;
      result.bytesBefore += stored.length;
      let data: Buffer;
      try {
        data = await decodeBlockAsync(stored);
      } catch {
        continue; // a chunk that does not decode is fsck's to report; nothing moves out of it
      }
      // Members looked up after the decode: what moved or died meanwhile stays out.
      for (const m of this.store.superChunks.liveMembers(chunk)) {
        const bytesOf = verifiedMember(data, m.hash, m.offset, m.length);
        if (!bytesOf) continue; // a block that fails its key is fsck's to report too
        if (bytes + m.length > this.options.targetBytes) await flush();
        entries.push({ hash: m.hash, data: Buffer.from(bytesOf), offset: bytes, from: { chunk, offset: m.offset, length: m.length } });
        bytes += m.length;
      }
    }
    await flush();
    // A sparse chunk still there kept something that could not move (a corrupt block).
    for (const chunk of sparse) result.bytesAfter += this.store.superChunks.storedSize(chunk) ?? 0;
  }
}

export function emptyRepackResult(): RepackResult {
  return { sparseChunks: 0, otherCodecChunks: 0, bytesBefore: 0, bytesAfter: 0, blocksMoved: 0, chunksWritten: 0 };
}

/**
 * The super-chunks a repack rewrites: those whose live share is below `threshold`, and
 * with `recompress` (and a compressing codec set) those compressed with another codec
 * than the store's current one. Counts them into `result`.
 */
export function repackCandidates(store: BlockStore, threshold: number, recompress: boolean, result: RepackResult): number[] {
  const out: number[] = [];
  const convert = recompress && store.codec !== Codec.Raw;
  for (const { chunk, info } of store.superChunks.scanInfo()) {
    if (!info || info.totalBytes === 0) continue;
    const sparse = info.liveBytes / info.totalBytes < threshold;
    // Raw chunks stay: they are raw because compressing them did not pay.
    const kind = convert && !sparse ? store.superChunks.kind(chunk) : undefined;
    const otherCodec = (kind === Codec.Lz4 || kind === Codec.Zstd) && kind !== store.codec;
    if (!sparse && !otherCodec) continue;
    out.push(chunk);
    if (otherCodec) result.otherCodecChunks++;
  }
  result.sparseChunks = out.length;
  return out;
}
