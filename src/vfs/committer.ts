import { BlocksNotPublished, type ContentCommit, type MetaEngine } from '../meta/engine';
import { E, fail } from '../posix/errors';
import type { BlockWriter } from './block-writer';
import type { Durability } from './durability';
import type { FileContent, PreparedCommit } from './file-content';
import type { Reclaimer } from './reclaimer';

interface Request {
  content: FileContent;
  waiters: { resolve: () => void; reject: (err: unknown) => void }[];
}

/**
 * Commits file content in rounds: every file whose commit was asked for while the
 * previous round ran goes into the next one, which costs one metadata transaction for
 * all their rows (and at most one LMDB commit for their new blocks), handed to the OS
 * without waiting for the disk (see Durability: the last few blocks are parked in that
 * transaction; a sync point makes it durable).
 *
 * Order within a round keeps DESIGN invariant 1: blocks durable in the store or parked
 * with the rows, then rows committed; replaced blocks are released only after a sync
 * point. Rounds run one at a time, so a file's commits stay in order.
 */
/** A commit nobody waits for waits this long for others to share its round. */
const LAZY_ROUND_MS = 200;
/** ... unless this many files are already waiting. */
const LAZY_ROUND_FILES = 512;
/** Commits of a round refused for blocks gc removed from the shared index, uploaded again each time, before EIO. */
const REPUBLISH_ATTEMPTS = 5;

export class Committer {
  private waiting = new Map<FileContent, Request>();
  private looping = false;
  private urgent = false;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly meta: Pick<MetaEngine, 'commitContent' | 'commitGroup'>,
    private readonly writer: BlockWriter,
    private readonly reclaimer: Reclaimer,
    private readonly durability: Durability,
    /**
     * A volume several machines share: gets the blocks stored so far onto the remote and
     * into the shared pack index, before a round commits rows that reference them (DESIGN
     * invariant 1 across machines). The files of one round share one upload.
     */
    private readonly publishBlocks?: () => Promise<void>,
    /**
     * With publishBlocks: makes blocks the local store holds go up to the remote again
     * (marked dirty), when a commit was refused because gc on some machine removed them
     * from the shared index (BlocksNotPublished); rejects when the store lacks some.
     */
    private readonly republishBlocks?: (hashes: readonly Buffer[]) => Promise<void>,
  ) {}

  /**
   * Resolves once the file's content as of now is committed (with its size and times),
   * safe from a crash of the daemon, not yet synced. An urgent commit (close, fsync)
   * starts a round at once; others wait up to LAZY_ROUND_MS for company.
   */
  commit(content: FileContent, urgent: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const queued = this.waiting.get(content);
      if (queued) queued.waiters.push({ resolve, reject });
      else this.waiting.set(content, { content, waiters: [{ resolve, reject }] });
      if (urgent || this.waiting.size >= LAZY_ROUND_FILES) this.urgent = true;
      if (!this.looping) void this.loop();
      else if (this.urgent) this.wake?.();
    });
  }

  /** Waits until a round is due: something urgent, enough files, or LAZY_ROUND_MS. */
  private due(): Promise<void> {
    if (this.urgent) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = () => {
        if (this.timer) clearTimeout(this.timer);
        this.timer = undefined;
        this.wake = undefined;
        resolve();
      };
      this.timer = setTimeout(() => this.wake?.(), LAZY_ROUND_MS);
    });
  }

  private async loop(): Promise<void> {
    this.looping = true;
    // Requests made in the same tick join the first round.
    await Promise.resolve();
    while (this.waiting.size > 0) {
      await this.due();
      this.urgent = false;
      const batch = [...this.waiting.values()];
      this.waiting = new Map();
      const round = this.round(batch);
      for (const r of batch) r.content.committing = round.catch(() => undefined);
      try {
        await round;
        for (const r of batch) for (const w of r.waiters) w.resolve();
      } catch (err) {
        for (const r of batch) for (const w of r.waiters) w.reject(err);
      }
    }
    this.looping = false;
  }

  private async round(batch: Request[]): Promise<void> {
    const prepared: [Request, PreparedCommit][] = [];
    for (const r of batch) {
      const p = r.content.prepareCommit();
      if (p) prepared.push([r, p]);
    }
    if (prepared.length === 0) return;
    const parking = this.durability.parking;
    let parked = parking ? this.writer.park() : [];
    try {
      await this.writer.drain();
      await this.publishBlocks?.();
      const commits = prepared.map(([r, p]) => ({ ino: r.content.ino, rows: p.rows, size: p.size, storedBytes: p.stored, attrs: r.content.takeAttrs(p) }));
      if (parking && parked.length > 0) {
        const seq = await parking.commitContentParking(
          commits,
          parked.map((b) => ({ hash: b.hash, data: b.data })),
        );
        this.writer.parkedAt(parked, seq);
        parked = [];
        this.durability.parked();
      } else await this.commitPublished(commits);
      for (const [r, p] of prepared) r.content.applyCommit(p);
      // The open group holds the files' names and attributes too: all handed to the OS now.
      await this.meta.commitGroup();
    } catch (err) {
      if (parked.length > 0) this.writer.unpark(parked);
      for (const [r, p] of prepared) r.content.abortCommit(p);
      throw err;
    } finally {
      for (const [r] of prepared) r.content.endCommit();
    }
    this.reclaimer.release(prepared.flatMap(([, p]) => p.releases));
  }

  /**
   * commitContent; on a volume several machines share, a commit refused because blocks it
   * names lost their pack to a gc (BlocksNotPublished: a block this store kept, uploaded by
   * another machine, or written here before, was not uploaded again) uploads those blocks
   * again and commits again. Never a row naming a block no pack holds: EIO instead.
   */
  private async commitPublished(commits: ContentCommit[]): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.meta.commitContent(commits);
        return;
      } catch (err) {
        if (!(err instanceof BlocksNotPublished) || !this.republishBlocks || !this.publishBlocks) throw err;
        if (attempt >= REPUBLISH_ATTEMPTS) fail(E.EIO, `${err.message}, after ${attempt} uploads of them`);
        try {
          await this.republishBlocks(err.hashes);
        } catch (cause) {
          fail(E.EIO, (cause as Error).message);
        }
        await this.publishBlocks();
      }
    }
  }
}
