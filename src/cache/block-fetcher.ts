import type { RemoteIndex, SharedPackIndex } from '../meta/remote-index';
import type { ReadProgress, Remote } from '../remote/remote';
import type { BlockRead, BlockStore } from '../store/block-store';
import { decodeMembersAsync } from '../store/block-verify';

/**
 * Fetches blocks missing from the local store out of their packs on the remote.
 *
 * A block's pack row names the stored value holding it (a loose block, or a whole
 * super-chunk); the value is downloaded with a ranged read, every block in it is checked
 * against its BLAKE3 key (DESIGN invariant 2), and the value is stored locally. Values
 * wanted together (read-ahead) that sit close in one pack are fetched with one request,
 * so a streamed file costs one call per range rather than one per block. Concurrent
 * requests for one block share one download. A value whose bytes fail their key is
 * downloaded once more; failing again, its blocks read as EIO.
 */

export interface FetcherOptions {
  /** Largest single ranged read. */
  maxRangeBytes: number;
  /** Values at most this far apart in a pack are fetched in one read (the gap is downloaded too). */
  maxGapBytes: number;
  /** Downloads at once. */
  concurrency: number;
  log: { error(msg: string, err?: unknown): void; warn(msg: string): void };
  /** Told of blocks just made local (the evictor counts them as used now, so read-ahead is not evicted before it is read). */
  onInstalled?: (hashes: readonly Buffer[]) => void;
  /**
   * A volume several machines share: where to look for blocks the local index does not
   * know (another machine uploaded them); what is found is recorded in the local index.
   * Fetched blocks are then kept whether or not this store counts a reference to them.
   */
  shared?: SharedPackIndex;
}

export interface FetcherStats {
  /** Ranged reads made. */
  reads: number;
  bytes: number;
  blocks: number;
  /** Values whose bytes failed their keys (each counted once per download). */
  corrupt: number;
  failures: number;
}

interface Value {
  pack: number;
  name: string;
  remoteId: string;
  offset: number;
  length: number;
}

const key = (hash: Buffer) => hash.toString('latin1');
const valueKey = (v: Value) => `${v.pack}:${v.offset}`;

export class BlockFetcher {
  private readonly inflight = new Map<string, Promise<BlockRead>>();
  private running = 0;
  private readonly queue: (() => void)[] = [];
  readonly stats: FetcherStats = { reads: 0, bytes: 0, blocks: 0, corrupt: 0, failures: 0 };

  constructor(
    private readonly store: BlockStore,
    private readonly index: RemoteIndex,
    private readonly remote: Remote,
    private readonly options: FetcherOptions,
  ) {}

  /** Makes one block local: 'ok' once it is, 'missing' when no pack holds it, 'corrupt' when the remote's bytes are wrong. */
  fetchOne(hash: Buffer): Promise<BlockRead> {
    return this.fetch([hash]).get(key(hash)) ?? Promise.resolve('missing');
  }

  /** Starts fetching every listed block not held locally; the promises say how each ended. */
  fetch(hashes: readonly Buffer[]): Map<string, Promise<BlockRead>> {
    return this.fetchFrom(hashes, this.options.shared !== undefined);
  }

  /** `fetch`; with `askShared`, blocks the local index does not know are looked up in the shared index first. */
  private fetchFrom(hashes: readonly Buffer[], askShared: boolean): Map<string, Promise<BlockRead>> {
    const out = new Map<string, Promise<BlockRead>>();
    const unknown: Buffer[] = [];
    const byValue = new Map<string, { value: Value; hashes: Buffer[] }>();
    for (const hash of hashes) {
      const k = key(hash);
      if (out.has(k)) continue;
      const running = this.inflight.get(k);
      if (running) {
        out.set(k, running);
        continue;
      }
      if (this.store.has(hash)) {
        out.set(k, Promise.resolve('ok'));
        continue;
      }
      const loc = this.index.locate(hash);
      if (!loc) {
        if (askShared) unknown.push(hash);
        else out.set(k, Promise.resolve('missing'));
        continue;
      }
      const vk = `${loc.pack}:${loc.valueOffset}`;
      let v = byValue.get(vk);
      if (!v) byValue.set(vk, (v = { value: { pack: loc.pack, name: loc.name, remoteId: loc.remoteId, offset: loc.valueOffset, length: loc.valueLength }, hashes: [] }));
      v.hashes.push(hash);
    }
    for (const range of this.ranges([...byValue.values()])) {
      // One outcome per value, settled as soon as that value is installed (or cannot be).
      const outcomes = new Map<string, { done: Promise<Map<string, BlockRead>>; settle: (r: Map<string, BlockRead>) => void }>();
      for (const v of range.values) {
        let settle!: (r: Map<string, BlockRead>) => void;
        const done = new Promise<Map<string, BlockRead>>((resolve) => (settle = resolve));
        outcomes.set(valueKey(v.value), { done, settle });
      }
      const settle = (v: Value, r: Map<string, BlockRead>) => outcomes.get(valueKey(v))?.settle(r);
      this.limited(() => this.fetchRange(range.values.map((v) => v.value), settle)).catch((err: unknown) => {
        // Not a remote failure (fetchRange settles those itself) but a bug: nobody may wait forever.
        this.options.log.error('installing fetched blocks failed', err);
        for (const v of range.values) settle(v.value, this.unreachable(v.value));
      });
      for (const v of range.values) {
        const done = outcomes.get(valueKey(v.value))!.done;
        // Shared: blocks the local index placed in a pack that could not be read may have moved (a gc elsewhere).
        const outcome = askShared ? done.then((results) => this.relocateMissing(v.value, v.hashes, results)) : done;
        for (const hash of v.hashes) {
          const k = key(hash);
          const p: Promise<BlockRead> = outcome
            .then((results) => results.get(k) ?? 'missing')
            .finally(() => {
              if (this.inflight.get(k) === p) this.inflight.delete(k);
            });
          this.inflight.set(k, p);
          out.set(k, p);
        }
      }
    }
    if (unknown.length > 0) this.fetchUnknown(unknown, out);
    return out;
  }

  /**
   * Blocks the local index does not know: asked of the shared index in one query, the
   * packs found recorded locally, then fetched as any other (those still unknown: missing).
   */
  private fetchUnknown(hashes: Buffer[], out: Map<string, Promise<BlockRead>>): void {
    const shared = this.options.shared!;
    const placeholders = new Map<string, Promise<BlockRead>>();
    const fetched = shared.locate(hashes).then(
      (packs) => {
        for (const pack of packs) this.index.recordPack(pack);
        // In the same tick: the placeholders give way to the real fetches, which no other caller can start between.
        for (const [k, p] of placeholders) if (this.inflight.get(k) === p) this.inflight.delete(k);
        return this.fetchFrom(hashes, false);
      },
      (err: unknown) => {
        this.stats.failures++;
        this.options.log.error('looking up blocks in the shared pack index failed', err);
        return new Map<string, Promise<BlockRead>>();
      },
    );
    for (const hash of hashes) {
      const k = key(hash);
      const p: Promise<BlockRead> = fetched
        .then((results) => results.get(k) ?? 'missing')
        .finally(() => {
          if (this.inflight.get(k) === p) this.inflight.delete(k);
        });
      placeholders.set(k, p);
      this.inflight.set(k, p);
      out.set(k, p);
    }
  }

  /**
   * A volume several machines share: blocks of `value` that came out missing (its pack
   * could not be read) are asked of the shared index again. A gc on another machine may
   * have deleted the pack this machine's index names (moving the blocks' entries to a new
   * pack, or finding them dead): the stale local entries are dropped, the packs the
   * shared index names now are recorded, and the blocks are fetched from there, once.
   */
  private async relocateMissing(value: Value, hashes: readonly Buffer[], results: Map<string, BlockRead>): Promise<Map<string, BlockRead>> {
    const missing = hashes.filter((h) => (results.get(key(h)) ?? 'missing') === 'missing');
    if (missing.length === 0) return results;
    let packs;
    try {
      packs = await this.options.shared!.locate(missing);
    } catch (err) {
      this.options.log.error('looking up blocks in the shared pack index again failed', err);
      return results;
    }
    const now = new Map<string, string>();
    for (const p of packs) for (const e of p.entries) now.set(key(e.hash), p.name);
    // Where the shared index still names the same pack, it is only unreachable now.
    const stale = missing.filter((h) => now.get(key(h)) !== value.name);
    if (stale.length === 0) return results;
    this.index.deleteEntries(stale);
    for (const p of packs) if (p.name !== value.name) this.index.recordPack(p);
    const found = stale.filter((h) => now.has(key(h))).length;
    this.options.log.warn(`pack ${value.name} could not be read and the shared index no longer places ${stale.length} of its blocks there (a gc): ${found} found in other packs`);
    // Out of the in-flight map first: the fetch below must not wait for the one this is part of.
    for (const h of stale) this.inflight.delete(key(h));
    const again = this.fetchFrom(stale, false);
    const merged = new Map(results);
    for (const h of stale) merged.set(key(h), await (again.get(key(h)) ?? Promise.resolve<BlockRead>('missing')));
    return merged;
  }

  /** Values grouped into ranged reads: same pack, in offset order, close together, bounded in size. */
  private ranges(values: { value: Value; hashes: Buffer[] }[]): { values: { value: Value; hashes: Buffer[] }[] }[] {
    values.sort((a, b) => a.value.pack - b.value.pack || a.value.offset - b.value.offset);
    const out: { values: { value: Value; hashes: Buffer[] }[] }[] = [];
    let cur: { values: { value: Value; hashes: Buffer[] }[]; start: number; end: number; pack: number } | undefined;
    for (const v of values) {
      const end = v.value.offset + v.value.length;
      if (cur && cur.pack === v.value.pack && v.value.offset - cur.end <= this.options.maxGapBytes && end - cur.start <= this.options.maxRangeBytes) {
        cur.values.push(v);
        cur.end = Math.max(cur.end, end);
        continue;
      }
      cur = { values: [v], start: v.value.offset, end, pack: v.value.pack };
      out.push(cur);
    }
    return out;
  }

  /**
   * Downloads the values with one ranged read and installs each as soon as its bytes are
   * in (a reader waits for its block, not for the end of the range), telling `settle`
   * how each value's blocks ended. Never rejects: a failure settles the rest as missing.
   */
  private async fetchRange(values: Value[], settle: (v: Value, results: Map<string, BlockRead>) => void): Promise<void> {
    const start = values[0].offset;
    const end = Math.max(...values.map((v) => v.offset + v.length));
    // Values in offset order (ranges() sorts them); `next` is the first not yet handed to install.
    let next = 0;
    const installing: Promise<void>[] = [];
    const take = (data: Buffer, filled: number) => {
      while (next < values.length && values[next].offset + values[next].length - start <= filled) {
        const v = values[next++];
        // A view, not a copy: an attempt's buffer is only ever written past `filled`.
        installing.push(this.installChecked(v, data.subarray(v.offset - start, v.offset - start + v.length)).then((r) => settle(v, r)));
      }
    };
    try {
      take(await this.download(values[0], start, end - start, take), end - start);
    } catch (err) {
      this.stats.failures++;
      this.options.log.error(`fetching ${end - start} bytes of pack ${values[0].name} failed`, err);
      // The remote could not be read: the blocks are not lost, only unreachable now.
      for (const v of values.slice(next)) settle(v, this.unreachable(v));
    }
    await Promise.all(installing);
  }

  /** Every block of a value as 'missing': not lost, only not reachable now. */
  private unreachable(v: Value): Map<string, BlockRead> {
    return new Map(this.index.valueMembers(v.pack, v.offset).map((m) => [key(m.hash), 'missing' as BlockRead]));
  }

  /** Installs a downloaded value; when its bytes fail their keys, downloads it once more. */
  private async installChecked(v: Value, bytes: Buffer): Promise<Map<string, BlockRead>> {
    const members = this.index.valueMembers(v.pack, v.offset);
    let r = await this.install(v, bytes, members);
    if ([...r.values()].includes('corrupt')) {
      // Bytes damaged in transit are not bytes damaged on the remote: one more try.
      try {
        r = await this.install(v, await this.download(v, v.offset, v.length), members);
      } catch (err) {
        this.options.log.error(`fetching ${v.length} bytes of pack ${v.name} again failed`, err);
      }
    }
    return r;
  }

  private async download(v: Value, offset: number, length: number, onProgress?: ReadProgress): Promise<Buffer> {
    const data = await this.remote.read({ kind: 'pack', name: v.name, id: v.remoteId }, offset, length, onProgress);
    this.stats.reads++;
    this.stats.bytes += data.length;
    return data;
  }

  /** Verifies every block of a downloaded value and stores the value with the blocks that passed. */
  private async install(v: Value, value: Buffer, members: { hash: Buffer; blockOffset: number; length: number }[]): Promise<Map<string, BlockRead>> {
    const result = new Map<string, BlockRead>();
    const verified = await decodeMembersAsync(
      Buffer.from(value),
      members.map((m) => ({ hash: m.hash, offset: m.blockOffset, length: m.length })),
    );
    const good: typeof members = [];
    for (const [i, m] of members.entries()) {
      const ok = verified[i] !== undefined;
      result.set(key(m.hash), ok ? 'ok' : 'corrupt');
      if (ok) good.push(m);
    }
    if (good.length < members.length) {
      this.stats.corrupt++;
      this.options.log.warn(`pack ${v.name} bytes ${v.offset}-${v.offset + v.length - 1}: ${members.length - good.length} of ${members.length} blocks do not match their BLAKE3 key`);
    }
    if (good.length > 0) {
      // A super-chunk with a bad member is kept for its good ones only if its decoded bytes are whole.
      const installed = await this.store.installFetched(Buffer.from(value), good, this.options.shared !== undefined);
      this.stats.blocks += installed;
      this.options.onInstalled?.(good.map((m) => m.hash));
    }
    return result;
  }

  private limited<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const run = () => {
        this.running++;
        fn()
          .then(resolve, reject)
          .finally(() => {
            this.running--;
            this.queue.shift()?.();
          });
      };
      if (this.running < this.options.concurrency) run();
      else this.queue.push(run);
    });
  }
}
