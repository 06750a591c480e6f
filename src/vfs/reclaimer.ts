import type { MetaDurability } from '../meta/engine';
import type { BlockStore } from '../store/block-store';

/**
 * Drops block references once the metadata that released them is durable (DESIGN
 * invariant 1): hashes wait here, and each round first makes the metadata durable,
 * then releases them in one LMDB transaction. A crash in between only leaks blocks.
 */
export class Reclaimer {
  private hashes: Buffer[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  /** Holds in place (a metadata backup in progress): releases wait in the queue. */
  private holds = 0;
  /** Told when the last hold goes. */
  private unheld: (() => void)[] = [];

  constructor(
    private readonly meta: Pick<MetaDurability, 'barrier'>,
    private readonly store: BlockStore,
    private readonly delayMs = 1000,
    private readonly onError: (err: unknown) => void = () => undefined,
  ) {}

  /** Queues references to drop; the caller has committed the metadata that released them. */
  release(hashes: readonly Buffer[]): void {
    if (hashes.length === 0) return;
    for (const h of hashes) this.hashes.push(h);
    if (this.hashes.length >= 4096) void this.run();
    else if (!this.timer) {
      this.timer = setTimeout(() => void this.run(), this.delayMs);
      this.timer.unref();
    }
  }

  /**
   * Keeps queued releases queued until the returned function is called: a metadata backup
   * in progress may name blocks that the live volume no longer uses, and those must stay
   * until the backup's blocks are on the remote.
   */
  hold(): () => void {
    this.holds++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.holds--;
      if (this.holds > 0) return;
      const waiting = this.unheld;
      this.unheld = [];
      for (const w of waiting) w();
      if (this.hashes.length > 0) void this.run();
    };
  }

  /** Resolves once nothing holds releases (a release made then cannot take a block a backup in progress names). */
  whenUnheld(): Promise<void> {
    if (this.holds === 0) return Promise.resolve();
    return new Promise((resolve) => this.unheld.push(resolve));
  }

  /** Releases everything queued now (unless held); resolves when done. */
  run(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.running = this.running.then(async () => {
      if (this.hashes.length === 0 || this.holds > 0) return;
      const batch = this.hashes;
      this.hashes = [];
      try {
        await this.meta.barrier();
        await this.store.release(batch);
      } catch (err) {
        this.onError(err);
      }
    });
    return this.running;
  }
}
