import type { AttrChange } from '../meta/engine';
import type { BlockRow } from '../meta/meta-db';
import { hashBlock } from '../store/hash';
import type { BlockRead } from '../store/block-store';
import type { BlockWriter } from './block-writer';
import { E, FsError } from '../posix/errors';

/** A block of the file as the block index knows it. */
interface BlockRef {
  hash: Buffer;
  len: number;
}

/** What one file's commit writes: block rows, the size, the attributes held back (times of its writes, setattrs), and the references it then drops. */
export interface PreparedCommit {
  rows: Map<number, BlockRef | undefined>;
  releases: Buffer[];
  size: number;
  stored: number;
  attrs: AttrChange;
}

/**
 * A block being written. `buf` holds its first bytes and grows as writes reach further
 * (a 1 KiB file must not cost a 128 KiB allocation); bytes past `len` are zero.
 */
interface PendingBlock {
  buf: Buffer;
  len: number;
}

export interface ContentLog {
  error(msg: string, err?: unknown): void;
}

/** What the file starts from: its inode number, committed size and block map. */
export interface ContentOrigin {
  ino: number;
  size: number;
  blocks: readonly BlockRow[];
  /** Names the file for people (its path), for log lines about damaged blocks. */
  describe: (ino: number) => string;
}

/** Blocks a file may hold in memory before its full ones are hashed and handed to the store. */
const MAX_PENDING_BLOCKS = 256;

/**
 * The content of one regular file while it is open: the block list, blocks being
 * written, and the size, shared by every handle on the file so each sees the others'
 * writes at once.
 *
 * Writes land in full-size pending buffers (read-modify-write of partial blocks). A
 * pending block is sealed (hashed, handed to the BlockWriter) when a write reaches its
 * end, when too many are pending, or at commit. `commit()` waits until every sealed
 * block is durable in the store and only then writes the block index and size in one
 * durable SQLite transaction; replaced blocks are released after that (invariant 1).
 */
export class FileContent {
  private readonly blocks = new Map<number, BlockRef>();
  private readonly pending = new Map<number, PendingBlock>();
  /** Indexes whose entry in `blocks` differs from the committed index. */
  private readonly changed = new Set<number>();
  /** References to drop once the next commit is durable. */
  private toRelease: Buffer[] = [];
  /** The commit round this file is part of, if any (set by the Committer). */
  committing: Promise<void> = Promise.resolve();
  readonly ino: number;
  /** The size with every write so far (`committedSize` is what the metadata holds). */
  size: number;
  /** Size as last committed. */
  committedSize: number;
  /**
   * Attribute changes held back until the content is committed (one field update with
   * the size): the mtime and ctime of writes, and the setattrs made while the file is
   * open with changes to commit (a program that writes a file, then sets its times,
   * owner and mode before closing it, as tar and cp do, costs no metadata write per call).
   */
  private held: AttrChange = {};
  /** What commit rounds under way took from `held`: still the truth until they end. */
  private committingAttrs: AttrChange = {};
  /** True when something differs from what is committed. */
  dirty = false;
  /** Commit rounds that took changes from here and have not ended (durable or failed). */
  private inFlight = 0;
  /** Writes and truncates waiting for a block to load, in order (see `after`). */
  private gate: Promise<void> | undefined;
  /** Where the last read ended, and how far read-ahead has been asked for (block index). */
  private lastReadEnd = -1;
  private readaheadTo = 0;

  private readonly describe: (ino: number) => string;

  constructor(
    origin: ContentOrigin,
    private readonly blockSize: number,
    private readonly writer: BlockWriter,
    private readonly log: ContentLog,
    /** Blocks to fetch ahead of a sequential reader (0: none). */
    private readonly readaheadBlocks = 0,
  ) {
    this.ino = origin.ino;
    this.size = origin.size;
    this.describe = origin.describe;
    for (const b of origin.blocks) this.blocks.set(b.idx, { hash: b.hash, len: b.len });
    this.committedSize = origin.size;
  }

  /** Records the time of a change to the content (committed with it). */
  touch(t: { s: number; ns: number }): void {
    this.held = { ...this.held, mtime: t, ctime: t };
  }

  /** Holds `change` back for the next commit, over what is held already (and makes sure one comes). */
  holdAttrs(change: AttrChange): void {
    this.held = { ...this.held, ...change };
    this.dirty = true;
  }

  /** Takes what is held back, to be written now by the caller (nothing may be under way: see `idle`). */
  takeHeldAttrs(): AttrChange {
    const held = this.held;
    this.held = {};
    return held;
  }

  /** The attribute changes not in the engine yet: held back, or taken by a commit still under way. */
  pendingAttrs(): AttrChange {
    return { ...this.committingAttrs, ...this.held };
  }

  /** The bytes at [offset, offset+length) clipped to the size; a promise when a super-chunk must be decompressed first. */
  read(offset: number, length: number): Buffer | Promise<Buffer> {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return Buffer.alloc(0);
    const out = Buffer.allocUnsafe(end - offset);
    const B = this.blockSize;
    if (this.readaheadBlocks > 0) this.readAhead(offset, end);
    let waits: Promise<void>[] | undefined;
    for (let idx = Math.floor(offset / B); idx * B < end; idx++) {
      const blockStart = idx * B;
      const from = Math.max(offset, blockStart) - blockStart;
      const to = Math.min(end, blockStart + B) - blockStart;
      const at = blockStart + from - offset;
      const p = this.pending.get(idx);
      if (p) {
        const copied = from < p.buf.length ? p.buf.copy(out, at, from, Math.min(to, p.buf.length)) : 0;
        if (copied < to - from) out.fill(0, at + copied, at + to - from);
        continue;
      }
      const ref = this.blocks.get(idx);
      if (!ref) {
        out.fill(0, at, at + to - from);
        continue;
      }
      const r = this.writer.read(ref.hash, from, to - from, out, at);
      if (typeof r === 'string') this.checkRead(r, idx, ref);
      else (waits ??= []).push(r.then((res) => this.checkRead(res, idx, ref)));
    }
    return waits ? Promise.all(waits).then(() => out) : out;
  }

  /**
   * A reader going forward (near where the last read ended, or at the start) gets the
   * next blocks fetched ahead, a window at a time: asked for again only once it has read
   * half of what was asked, so the fetches come in few large ranges, not one per block.
   */
  private readAhead(offset: number, end: number): void {
    const B = this.blockSize;
    const sequential = offset === 0 || Math.abs(offset - this.lastReadEnd) <= 4 * B;
    this.lastReadEnd = end;
    if (!sequential) {
      this.readaheadTo = 0;
      return;
    }
    const next = Math.ceil(end / B);
    const window = this.readaheadBlocks;
    if (next + window / 2 < this.readaheadTo) return;
    const from = Math.max(Math.floor(offset / B), this.readaheadTo);
    const to = Math.min(next + window, Math.ceil(this.size / B));
    this.readaheadTo = to;
    // The blocks of this read, when not asked for already (a reader starting, or after a
    // seek), go first on their own: the reader waits for them, not for a whole window.
    this.prefetchBlocks(from, Math.min(next, to));
    this.prefetchBlocks(Math.max(from, next), to);
  }

  private prefetchBlocks(from: number, to: number): void {
    const hashes: Buffer[] = [];
    for (let idx = from; idx < to; idx++) {
      const ref = this.blocks.get(idx);
      if (ref && !this.pending.has(idx)) hashes.push(ref.hash);
    }
    if (hashes.length > 0) this.writer.prefetch(hashes);
  }

  /**
   * Applies a write. Usually at once; when a partly overwritten block has to be read
   * first and that means decompressing a super-chunk, the write waits for it (and the
   * file's later writes and truncates wait behind it, so they apply in order).
   */
  write(data: Buffer, offset: number): void | Promise<void> {
    if (this.gate) return this.after(() => this.writeNow(data, offset));
    const running = this.writeNow(data, offset);
    if (running) return this.after(() => running);
  }

  private writeNow(data: Buffer, offset: number): Promise<void> | undefined {
    const B = this.blockSize;
    const end = offset + data.length;
    const partial: number[] = [];
    const first = Math.floor(offset / B);
    const last = Math.floor((end - 1) / B);
    if (data.length > 0) {
      if (offset % B !== 0) partial.push(first);
      if (end % B !== 0 && !(last === first && partial.length > 0)) partial.push(last);
    }
    const loading = this.load(partial);
    if (loading) return loading.then(() => this.applyWrite(data, offset));
    this.applyWrite(data, offset);
    return undefined;
  }

  private applyWrite(data: Buffer, offset: number): void {
    const B = this.blockSize;
    const end = offset + data.length;
    for (let idx = Math.floor(offset / B); idx * B < end; idx++) {
      const blockStart = idx * B;
      const from = Math.max(offset, blockStart) - blockStart;
      const to = Math.min(end, blockStart + B) - blockStart;
      if (from === 0 && to === B) {
        // The write covers the whole block: store a view of the request's own buffer
        // (ours to keep) instead of copying it.
        this.pending.delete(idx);
        this.seal(idx, data.subarray(blockStart - offset, blockStart - offset + B));
        continue;
      }
      const p = this.pendingBlock(idx, to);
      data.copy(p.buf, from, blockStart + from - offset, blockStart + to - offset);
      if (to > p.len) p.len = to;
      // A write that reaches the end of a block is sequential enough: seal it now so
      // hashing and storing overlap with the writes that follow.
      if (to === B) {
        this.pending.delete(idx);
        this.seal(idx, p.buf.subarray(0, p.len));
      }
    }
    if (end > this.size) this.size = end;
    this.dirty = true;
    if (this.pending.size > MAX_PENDING_BLOCKS) this.sealAll();
  }

  /** Cuts or extends the file; waits like `write` when the new last block must be read first. */
  truncate(size: number): void | Promise<void> {
    if (this.gate) return this.after(() => this.truncateNow(size));
    const running = this.truncateNow(size);
    if (running) return this.after(() => running);
  }

  private truncateNow(size: number): Promise<void> | undefined {
    const B = this.blockSize;
    const loading = size < this.size && size % B !== 0 ? this.load([Math.ceil(size / B) - 1]) : undefined;
    if (loading) return loading.then(() => this.applyTruncate(size));
    this.applyTruncate(size);
    return undefined;
  }

  private applyTruncate(size: number): void {
    const B = this.blockSize;
    if (size < this.size) {
      const keep = Math.ceil(size / B); // blocks [0, keep) survive
      for (const idx of [...this.pending.keys()]) if (idx >= keep) this.pending.delete(idx);
      for (const [idx, ref] of [...this.blocks]) {
        if (idx < keep) continue;
        this.blocks.delete(idx);
        this.toRelease.push(ref.hash);
        this.changed.add(idx);
      }
      const cut = size % B;
      if (cut !== 0) {
        // Bytes past the new end inside the last block must read as zeros if the
        // file grows again: cut them off the block itself.
        const idx = keep - 1;
        const p = this.pending.get(idx);
        const ref = this.blocks.get(idx);
        if (p && p.len > cut) {
          p.buf.fill(0, cut);
          p.len = cut;
        } else if (!p && ref && ref.len > cut) {
          const loaded = this.pendingBlock(idx, cut);
          loaded.buf.fill(0, cut);
          loaded.len = cut;
        }
      }
    }
    this.size = size;
    this.dirty = true;
  }

  /**
   * The stored block at `idx` when it can be shared by reference: undefined for a hole,
   * 'bytes' when the block has uncommitted bytes in memory (those are copied as bytes).
   */
  blockForSharing(idx: number): { hash: Buffer; len: number } | 'bytes' | undefined {
    if (this.pending.has(idx)) return 'bytes';
    return this.blocks.get(idx);
  }

  /**
   * Makes block `idx` the given stored block (taking a reference on it in the store, no
   * bytes read or written) or, given undefined, a hole; the file grows to `sizeAtLeast`.
   * Runs behind the file's waiting writes.
   */
  shareBlock(idx: number, ref: { hash: Buffer; len: number } | undefined, sizeAtLeast: number): void | Promise<void> {
    const step = () => {
      this.dropBlock(idx);
      if (ref) {
        this.writer.share(ref.hash);
        this.blocks.set(idx, { hash: ref.hash, len: ref.len });
      }
      if (sizeAtLeast > this.size) this.size = sizeAtLeast;
      this.dirty = true;
    };
    if (this.gate) return this.after(step);
    step();
  }

  /**
   * Deallocates [offset, offset+length) clipped to the size (fallocate PUNCH_HOLE and
   * ZERO_RANGE): whole blocks are released, the partial ones at either edge rewritten
   * with zeros. The size does not change.
   */
  punchHole(offset: number, length: number): void | Promise<void> {
    const end = Math.min(offset + length, this.size);
    if (offset >= end) return;
    const B = this.blockSize;
    const firstWhole = Math.ceil(offset / B);
    const endWhole = Math.floor(end / B);
    const zeros = (from: number, to: number) => (to > from ? this.write(Buffer.alloc(to - from), from) : undefined);
    if (firstWhole >= endWhole) return zeros(offset, end); // inside one block
    const head = zeros(offset, firstWhole * B);
    const drop = () => {
      for (let idx = firstWhole; idx < endWhole; idx++) this.dropBlock(idx);
      this.dirty = true;
    };
    const middle = this.gate ? this.after(drop) : drop();
    const tail = zeros(endWhole * B, end);
    if (head || middle || tail) return Promise.all([head, middle, tail]).then(() => undefined);
  }

  /**
   * The offset SEEK_DATA (`data` true) or SEEK_HOLE finds from `offset`, in whole blocks
   * as the block map knows them (blocks with uncommitted bytes count as data); the end
   * of the file is a hole. Undefined for ENXIO (offset at or past the end, or no data after it).
   */
  seek(offset: number, data: boolean): number | undefined {
    const size = this.size;
    if (offset >= size) return undefined;
    const B = this.blockSize;
    const start = Math.floor(offset / B);
    const has = (idx: number) => this.blocks.has(idx) || this.pending.has(idx);
    if (data) {
      let found: number | undefined;
      for (const idx of this.blocks.keys()) if (idx >= start && (found === undefined || idx < found)) found = idx;
      for (const idx of this.pending.keys()) if (idx >= start && (found === undefined || idx < found)) found = idx;
      return found === undefined || found * B >= size ? undefined : Math.max(offset, found * B);
    }
    let idx = start;
    while (idx * B < size && has(idx)) idx++;
    return Math.min(size, Math.max(offset, idx * B));
  }

  /** Makes block `idx` a hole, releasing what it held (after the next commit). */
  private dropBlock(idx: number): void {
    this.pending.delete(idx);
    const old = this.blocks.get(idx);
    if (old) {
      this.blocks.delete(idx);
      this.toRelease.push(old.hash);
    }
    this.changed.add(idx);
  }

  /** Runs `step` once the file's waiting writes are done; later writes and truncates queue behind it. */
  private after(step: () => void | Promise<void>): Promise<void> {
    const run = (this.gate ?? Promise.resolve()).then(step);
    // A failed step fails only its own write; the queue goes on.
    const gate = run.then(
      () => undefined,
      () => undefined,
    );
    this.gate = gate;
    void gate.then(() => {
      if (this.gate === gate) this.gate = undefined;
    });
    return run;
  }

  /**
   * Makes the listed blocks pending (loaded for a read-modify-write). Undefined when that
   * was done at once; a promise when some had to wait for a super-chunk's decompression.
   */
  private load(indexes: readonly number[]): Promise<void> | undefined {
    let waits: Promise<void>[] | undefined;
    for (const idx of indexes) {
      if (this.pending.has(idx)) continue;
      const ref = this.blocks.get(idx);
      if (!ref) continue;
      const buf = Buffer.allocUnsafe(this.blockSize);
      const r = this.writer.read(ref.hash, 0, this.blockSize, buf, 0);
      const install = (res: BlockRead) => {
        this.checkRead(res, idx, ref);
        // The block may have been replaced while it loaded: only install what is still current.
        if (this.blocks.get(idx) === ref && !this.pending.has(idx)) this.pending.set(idx, { buf, len: ref.len });
      };
      if (typeof r === 'string') install(r);
      else (waits ??= []).push(r.then(install));
    }
    return waits ? Promise.all(waits).then(() => undefined) : undefined;
  }

  /** Adds the keys (hash as latin1) of every block the file's current content uses. */
  collectBlockKeys(into: Set<string>): void {
    for (const ref of this.blocks.values()) into.add(ref.hash.toString('latin1'));
  }

  /** Bytes held in stored blocks (holes excluded), for st_blocks. */
  storedBytes(): number {
    let n = 0;
    for (const ref of this.blocks.values()) n += ref.len;
    for (const [idx, p] of this.pending) if (!this.blocks.has(idx)) n += p.len;
    return n;
  }

  /**
   * Starts a commit (the Committer's first step, synchronous): seals pending blocks and
   * takes what differs from the committed state. Undefined when nothing does.
   */
  prepareCommit(): PreparedCommit | undefined {
    if (!this.dirty) return undefined;
    this.sealAll();
    const rows = new Map<number, BlockRef | undefined>();
    for (const idx of this.changed) rows.set(idx, this.blocks.get(idx));
    this.changed.clear();
    const releases = this.toRelease;
    this.toRelease = [];
    this.dirty = false;
    this.inFlight += 1;
    return { rows, releases, size: this.size, stored: this.storedBytes(), attrs: {} };
  }

  /**
   * Takes the attribute changes held so far into a prepared commit, at the last moment
   * before it is written (a setattr in between is then part of it).
   */
  takeAttrs(p: PreparedCommit): AttrChange {
    p.attrs = this.held;
    this.committingAttrs = { ...this.committingAttrs, ...this.held };
    this.held = {};
    return p.attrs;
  }

  /** The prepared commit's rows are in the metadata (after the blocks were durable). */
  applyCommit(p: PreparedCommit): void {
    this.committedSize = p.size;
  }

  /** The round that took a prepared commit has ended, durable or not. */
  endCommit(): void {
    this.inFlight -= 1;
    if (this.inFlight === 0) this.committingAttrs = {};
  }

  /**
   * Nothing to commit and no commit under way: only then is the committed state (the
   * engine's rows) the whole truth, so the content may be dropped and fsync need not wait.
   */
  get idle(): boolean {
    return !this.dirty && this.inFlight === 0;
  }

  /** The commit failed before it was durable: put the work back so a later one retries it. */
  abortCommit(p: PreparedCommit): void {
    for (const idx of p.rows.keys()) if (!this.changed.has(idx)) this.changed.add(idx);
    this.toRelease = p.releases.concat(this.toRelease);
    this.held = { ...p.attrs, ...this.held };
    this.dirty = true;
  }

  /** Everything the file references, committed or not: released when the inode is freed. */
  async discard(): Promise<Buffer[]> {
    await this.committing;
    this.pending.clear();
    await this.writer.drain();
    const uncommitted: Buffer[] = [];
    for (const idx of this.changed) {
      const ref = this.blocks.get(idx);
      if (ref) uncommitted.push(ref.hash);
    }
    const released = [...this.toRelease, ...uncommitted];
    this.toRelease = [];
    this.changed.clear();
    this.dirty = false;
    return released;
  }

  /** The pending block `idx` (loaded by `load` if it has stored bytes), with room for `need` bytes. */
  private pendingBlock(idx: number, need: number): PendingBlock {
    let p = this.pending.get(idx);
    if (p) {
      if (p.buf.length < need) {
        const grown = Buffer.alloc(Math.min(this.blockSize, Math.max(need, p.buf.length * 2)));
        p.buf.copy(grown, 0, 0, p.len);
        p.buf = grown;
      }
      return p;
    }
    if (this.blocks.has(idx)) {
      // Callers load stored blocks first; one that could only be read asynchronously is a bug here.
      if (this.load([idx])) throw new FsError(E.EIO, `block ${idx} of inode ${this.ino} was not loaded before a partial write`);
      p = this.pending.get(idx);
      if (p) return p;
    }
    p = { buf: Buffer.alloc(Math.min(this.blockSize, Math.max(need, 4096))), len: 0 };
    this.pending.set(idx, p);
    return p;
  }

  /** A block that is missing or fails its hash is EIO plus a log line naming the file (path and inode) and range. */
  private checkRead(result: BlockRead, idx: number, ref: BlockRef): void {
    if (result === 'ok') return;
    const start = idx * this.blockSize;
    this.log.error(
      `${this.describe(this.ino)} (inode ${this.ino}): block ${idx} (bytes ${start}-${start + ref.len - 1}, ${ref.hash.toString('hex')}) is ` +
        (result === 'missing' ? 'missing from the block store (or its pack could not be fetched)' : 'corrupt: its bytes do not match their BLAKE3 hash') +
        '; reads of that range fail with EIO (run pogfs fsck)',
    );
    throw new FsError(E.EIO, `${result} block`);
  }

  private sealAll(): void {
    for (const [idx, p] of this.pending) this.seal(idx, p.buf.subarray(0, p.len));
    this.pending.clear();
  }

  /** Hashes a block's final bytes and hands them to the store; all-zero blocks become holes. */
  private seal(idx: number, data: Buffer): void {
    const old = this.blocks.get(idx);
    if (old) this.toRelease.push(old.hash);
    this.changed.add(idx);
    if (isZero(data)) {
      this.blocks.delete(idx);
      return;
    }
    const hash = hashBlock(data);
    this.blocks.set(idx, { hash, len: data.length });
    this.writer.add(hash, data);
  }
}

const ZEROS = Buffer.alloc(128 * 1024);

function isZero(data: Buffer): boolean {
  for (let at = 0; at < data.length; at += ZEROS.length) {
    const n = Math.min(ZEROS.length, data.length - at);
    if (data.compare(ZEROS, 0, n, at, at + n) !== 0) return false;
  }
  return true;
}
