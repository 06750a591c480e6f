import type { MetaBlockParking, MetaDurability } from '../meta/engine';
import type { BlockWriter } from './block-writer';

/**
 * DESIGN invariant 3. A close commits the file without waiting for the disk: its last
 * blocks are parked in the metadata, in the very transaction that commits its rows, and
 * that transaction is handed to the OS (the daemon may die from here; the file stays).
 * Blocks already on their way to the block store (a large file's) are awaited: the store
 * syncs every commit, so they are on disk before any row names them. No crash of the
 * machine can then leave a row without its bytes: the metadata reaches the disk in order
 * (SQLite's write-ahead log), parked bytes with their rows, and a file renamed over
 * another after its close is behind its content in that order.
 *
 * Parked blocks move into the block store shortly after, many per sync of it (`move`); the
 * store records the last one taken in the same commit, so each is taken once whatever
 * crashes, and a volume opened after a crash takes what is left (Volume.open).
 * A sync point (fsync, the commit interval, unmount) syncs the metadata: everything
 * committed before it is then durable.
 */
/**
 * How long a move waits after the one before, gathering more parked blocks. Moving as soon
 * as the store's last sync ended took 3 files per LMDB commit in a `tar x` of small files;
 * each commit costs the thread serving FUSE its callbacks and the disk a sync, and waiting
 * 30 ms to 1 s instead cut the daemon's CPU by a quarter and the tar's time by 15-20%.
 * Parked blocks are safe meanwhile (in the metadata) and readable (in the writer).
 */
const MOVE_GAP_MS = 100;

export class Durability {
  /** A move is queued behind the running one (it takes whatever was parked meanwhile). */
  private moveQueued = false;
  private stopped = false;
  private moving: Promise<void> = Promise.resolve();
  /** Metadata changes counted at the last sync point: an idle volume skips its syncs. */
  private changesAtSync = -1;

  constructor(
    private readonly writer: BlockWriter,
    private readonly meta: Pick<MetaDurability, 'barrier'>,
    /** Where closes park their last blocks; undefined when the metadata engine cannot hold them. */
    readonly parking: MetaBlockParking | undefined,
    /** The metadata's running count of changes (to tell an idle volume). */
    private readonly changeCount: () => number,
    private readonly onError: (err: unknown) => void,
    /** Runs after each sync point (the metadata's log moved into its database). */
    private readonly afterSync: () => void = () => undefined,
  ) {}

  /**
   * After a commit that parked blocks: moves them MOVE_GAP_MS after the move before has
   * ended. Moves run one at a time beside the closes (which never wait for them), so each
   * takes every block parked meanwhile: one commit and sync of the block store for many
   * files.
   */
  parked(): void {
    if (this.moveQueued || this.stopped) return;
    this.moveQueued = true;
    this.moving
      .then(() => new Promise((resolve) => setTimeout(resolve, MOVE_GAP_MS).unref()))
      .then(() => {
        this.moveQueued = false;
        // Unmounting moves what is left itself (after the store's last commit, not beside it).
        return this.stopped ? undefined : this.move();
      })
      .catch(this.onError);
  }

  /** Moves the parked blocks whose commit is done into the block store, then drops them from the metadata. */
  move(): Promise<void> {
    const run = this.moving.then(async () => {
      const seq = await this.writer.moveParked();
      if (seq !== undefined) await this.parking?.unpark(seq);
    });
    this.moving = run.catch(() => undefined);
    return run;
  }

  /** Makes everything committed so far durable against a power cut (one sync of the metadata). */
  async syncPoint(): Promise<void> {
    await this.meta.barrier();
    this.afterSync();
    this.changesAtSync = this.changeCount();
  }

  /** The commit interval's sync point: skipped when nothing changed since the last one. */
  async periodic(): Promise<void> {
    if (this.changeCount() === this.changesAtSync) return;
    await this.syncPoint();
  }

  /**
   * Before references are dropped: parked blocks first taken by the store (a count must
   * never pass through zero while a row still names the block), then a sync point.
   */
  async beforeRelease(): Promise<void> {
    await this.move();
    await this.syncPoint();
  }

  /** No more moves on their own (unmounting: the caller moves what is left). */
  stop(): void {
    this.stopped = true;
  }
}
