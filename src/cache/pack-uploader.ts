import type { LocalPackIndex } from './remote-cache';
import type { Remote, RemoteObject } from '../remote/remote';
import { packName } from '../remote/object-names';
import { hashHex, hashBlock } from '../store/hash';
import type { SuperChunkPacker } from '../store/super-chunk-packer';
import type { PackEntry, SharedPackIndex } from '../meta/remote-index';
import type { CacheLedger } from './cache-ledger';
import { PackBuilder } from './pack-format';

/**
 * Uploads dirty blocks to the remote in packs, in the order they were written, so the
 * blocks of one file sit together in a pack and a streamed read fetches them in few
 * requests. Writes never wait on the network: the uploader runs behind them, starting
 * a pack once a pack's worth is dirty or writing has paused, and on `flush`.
 *
 * Order per pack (DESIGN invariant 1 with the remote as the durable copy): the pack is
 * uploaded (the remote holds it durably when `put` resolves), then its rows are
 * committed to SQLite durably, and only then are its blocks marked clean, which is what
 * allows evicting them. A crash in between leaves an unreferenced pack (gc removes it)
 * or blocks still dirty (uploaded again): never a block whose only copy is gone.
 */

export interface UploaderOptions {
  /** Bytes of values per pack. */
  packBytes: number;
  /** A partial pack is uploaded once nothing new became dirty for this long (ms). */
  idleMs: number;
  /** Packs uploading at once. */
  parallel: number;
  /** After a failed upload, wait this long before trying again (ms). */
  retryMs: number;
  log: { error(msg: string, err?: unknown): void; info(msg: string): void };
  /** A volume several machines share: each pack is published here once the remote holds it, before its blocks count as clean. */
  shared?: SharedPackIndex;
}

export interface UploaderStatus {
  dirtyBlocks: number;
  dirtyBytes: number;
  uploading: boolean;
  packsUploaded: number;
  bytesUploaded: number;
  /** Upload rate over the last uploads (bytes/s), 0 before the first. */
  rateBytesPerSec: number;
  /** Seconds to upload what is dirty now at that rate (undefined without a rate). */
  etaSeconds: number | undefined;
  lastError: string | undefined;
}

/** Dirty entries looked at per step of building a pack. */
const SCAN_STEP = 4096;

export class PackUploader {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private closed = false;
  private packsUploaded = 0;
  private bytesUploaded = 0;
  private lastError: string | undefined;
  /** Recent uploads (time ms, bytes), for the rate. */
  private recent: { at: number; bytes: number; ms: number }[] = [];
  private waiters: (() => void)[] = [];
  /** Names of packs being uploaded whose rows are not committed yet (gc must not take them for orphans). */
  readonly inFlight = new Set<string>();
  /** Blocks in packs being uploaded (latin1 keys), which the next pack leaves out, and those packs' bytes. */
  private readonly sendingHashes = new Set<string>();
  private sendingBytes = 0;
  /** Set while uploadAll waits with a slot free: calling it makes it look for another pack. */
  private wake: (() => void) | undefined;
  /** The run queued behind the current one, if any (see kick). */
  private queued: { all: boolean } | undefined;
  /** Listeners told after each pack (the cache evicts, blocked writers wake). */
  onUploaded: (() => void) | undefined;

  constructor(
    private readonly ledger: CacheLedger,
    private readonly meta: LocalPackIndex,
    private readonly remote: Remote,
    private readonly packer: SuperChunkPacker,
    private readonly options: UploaderOptions,
  ) {
    if (ledger.dirtyStats().blocks > 0) this.notify();
  }

  /** New blocks are dirty: upload a pack now if there is a pack's worth, else once writing pauses. */
  notify(): void {
    if (this.closed) return;
    if (this.ledger.dirtyStats().bytes - this.sendingBytes >= this.options.packBytes) {
      // A run waiting with a slot free takes it at once; otherwise one is queued.
      if (this.wake) this.wake();
      else this.kick(false);
    }
    // Armed after every write, so what is left past the last full pack goes up once writing pauses.
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.kick(true), this.options.idleMs);
    this.timer.unref();
  }

  /** Uploads everything dirty now; resolves when it is on the remote (rejects if the remote fails). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    let failure: unknown;
    const step = this.running.then(async () => {
      try {
        await this.uploadAll(true);
      } catch (err) {
        failure = err;
      }
    });
    this.running = step;
    await step;
    if (failure) throw failure;
  }

  /** Resolves after the next pack is uploaded (or an upload fails): what a blocked writer waits for. */
  uploaded(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  status(): UploaderStatus {
    const d = this.ledger.dirtyStats();
    const cutoff = Date.now() - 60_000;
    this.recent = this.recent.filter((r) => r.at >= cutoff);
    const bytes = this.recent.reduce((n, r) => n + r.bytes, 0);
    const ms = this.recent.reduce((n, r) => n + r.ms, 0);
    const rate = ms > 0 ? (bytes * 1000) / ms : 0;
    return {
      dirtyBlocks: d.blocks,
      dirtyBytes: d.bytes,
      uploading: this.inFlight.size > 0,
      packsUploaded: this.packsUploaded,
      bytesUploaded: this.bytesUploaded,
      rateBytesPerSec: rate,
      etaSeconds: rate > 0 ? d.bytes / rate : undefined,
      lastError: this.lastError,
    };
  }

  /** Stops scheduling and waits for an upload in progress (nothing is lost: dirty stays dirty). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /**
   * Writers are waiting for room: upload what is dirty now, a partial pack too (a full one
   * may never come while they wait). After a failure the retry timer decides instead.
   */
  hurry(): void {
    if (this.closed || this.lastError !== undefined) return;
    this.wake?.();
    this.kick(true);
  }

  private kick(all: boolean): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    // One run waiting behind the current one is enough; it takes the widest request.
    if (this.queued) {
      this.queued.all ||= all;
      return;
    }
    const queued = (this.queued = { all });
    this.running = this.running.then(async () => {
      this.queued = undefined;
      try {
        await this.uploadAll(queued.all);
      } catch (err) {
        this.lastError = (err as Error).message;
        this.options.log.error(`uploading a pack to ${this.remote.description} failed; the blocks stay dirty and are tried again`, err);
        if (!this.closed) {
          this.timer = setTimeout(() => this.kick(true), this.options.retryMs);
          this.timer.unref();
        }
      }
    });
  }

  /**
   * Uploads full packs while there are enough dirty blocks (with `all`, the partial rest
   * too), `parallel` at a time: one pack's hashing and its rows' commit overlap another's
   * transfer, and a pack going up does not stall the next one behind a slow request.
   */
  private async uploadAll(all: boolean): Promise<void> {
    // Short blocks first go into super-chunks: packs then carry them compressed together.
    if (this.ledger.store.superChunks.queuedBlocks(1).length > 0) await this.packer.flush();
    const sending = new Set<Promise<void>>();
    let failure: { err: unknown } | undefined;
    for (;;) {
      while (sending.size < this.options.parallel && !failure) {
        const d = this.ledger.dirtyStats();
        if (d.blocks <= this.sendingHashes.size) break;
        // A partial pack goes only alone, and once per run: it holds everything dirty that is
        // not in a pack yet, which is what `all` asks for. Sending what was written since
        // would be a stream of tiny packs, two calls each, while writing goes on.
        const partial = d.bytes - this.sendingBytes < this.options.packBytes;
        if (partial && (!all || sending.size > 0)) break;
        const pack = await this.buildPack();
        if (pack === 'nothing') break;
        if (pack === 'cleaned') continue;
        if (partial) all = false;
        const p: Promise<void> = this.send(pack)
          .catch((err: unknown) => {
            failure ??= { err };
          })
          .finally(() => sending.delete(p));
        sending.add(p);
      }
      if (sending.size === 0) break;
      // Woken when a pack finishes, or when writers have dirtied another pack's worth.
      await Promise.race([...sending, new Promise<void>((resolve) => (this.wake = resolve))]);
      this.wake = undefined;
    }
    if (failure) throw failure.err;
  }

  /**
   * Builds a pack from the oldest dirty blocks no pack in flight holds. 'cleaned' when
   * the blocks looked at were all gone (marked clean, nothing to send), 'nothing' when
   * no such block was left.
   */
  private async buildPack(): Promise<OutgoingPack | 'cleaned' | 'nothing'> {
    const builder = new PackBuilder();
    const units = new Set<string>();
    const clean: Buffer[] = [];
    let after = -1;
    while (builder.size < this.options.packBytes) {
      const batch = this.ledger.dirtyBlocks(SCAN_STEP, after);
      if (batch.length === 0) break;
      for (const d of batch) {
        after = d.seq;
        if (this.sendingHashes.has(d.hash.toString('latin1'))) continue;
        const unit = this.ledger.uploadUnit(d.hash);
        if (!unit) {
          clean.push(d.hash); // dirty but gone: nothing to upload
          continue;
        }
        if (units.has(unit.key)) continue;
        units.add(unit.key);
        builder.add(unit.value, unit.members);
        for (const m of unit.members) clean.push(m.hash);
        if (builder.size >= this.options.packBytes) break;
      }
    }
    if (builder.blockCount === 0) {
      if (clean.length === 0) return 'nothing';
      await this.ledger.markClean(clean);
      return 'cleaned';
    }
    const { data, entries } = builder.finish();
    // Named by content: a pack uploaded twice (a retry after a crash) has the same name.
    return { name: packName(hashHex(hashBlock(data))), data, entries, clean };
  }

  /** Uploads one pack, then records its rows durably, then marks its blocks clean (in that order). */
  private async send(pack: OutgoingPack): Promise<void> {
    const { name, data, entries, clean } = pack;
    const keys = clean.map((h) => h.toString('latin1'));
    for (const k of keys) this.sendingHashes.add(k);
    this.sendingBytes += data.length;
    this.inFlight.add(name);
    const started = Date.now();
    try {
      const upload = async (): Promise<RemoteObject> => {
        const object = await this.remote.put('pack', name, data, { fresh: true });
        // Other machines find the blocks from now on; only then may rows there refer to them.
        await this.options.shared?.publish({ name, remoteId: object.id, size: data.length, entries });
        return object;
      };
      // Shared: no gc deletes an object of this name (an earlier pack of the same bytes) meanwhile.
      const shared = this.options.shared;
      const object = shared ? await shared.holdingName(name, upload) : await upload();
      const existing = this.meta.remote.packByName(name);
      if (existing) this.meta.remote.deletePack(existing.id);
      this.meta.durableTransaction(() => this.meta.remote.addPack(name, object.id, data.length, entries));
      await this.ledger.markClean(clean);
    } finally {
      for (const k of keys) this.sendingHashes.delete(k);
      this.sendingBytes -= data.length;
      this.inFlight.delete(name);
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
    const ms = Math.max(1, Date.now() - started);
    this.packsUploaded++;
    this.bytesUploaded += data.length;
    this.recent.push({ at: Date.now(), bytes: data.length, ms });
    this.lastError = undefined;
    this.onUploaded?.();
  }
}

interface OutgoingPack {
  name: string;
  data: Buffer;
  entries: PackEntry[];
  /** The dirty blocks it carries (and gone ones met while building it), marked clean once it is recorded. */
  clean: Buffer[];
}
