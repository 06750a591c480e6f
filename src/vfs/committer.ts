import type { MetaEngine } from '../meta/engine';
import type { BlockWriter } from './block-writer';
import type { FileContent, PreparedCommit } from './file-content';
import type { Reclaimer } from './reclaimer';

interface Request {
  content: FileContent;
  waiters: { resolve: () => void; reject: (err: unknown) => void }[];
}

/**
 * Makes file content durable in rounds: every file whose commit was asked for while the
 * previous round ran goes into the next one, which costs one LMDB commit for all their
 * new blocks, one metadata transaction for all their rows, and one sync of each. Parallel
 * writers, the periodic writeback and closes that do not wait for durability therefore
 * share the two fsyncs a commit needs instead of paying them per file.
 *
 * Order within a round keeps DESIGN invariant 1: blocks durable, then rows durable, then
 * replaced blocks released. Rounds run one at a time, so a file's commits stay in order.
 */
/** A commit nobody waits for waits this long for others to share its round. */
const LAZY_ROUND_MS = 200;
/** ... unless this many files are already waiting. */
const LAZY_ROUND_FILES = 512;

export class Committer {
  private waiting = new Map<FileContent, Request>();
  private looping = false;
  private urgent = false;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;

  constructor(
    private readonly meta: Pick<MetaEngine, 'commitContent' | 'barrier'>,
    private readonly writer: BlockWriter,
    private readonly reclaimer: Reclaimer,
  ) {}

  /**
   * Resolves once the file's content as of now is durable (with its size and times). An
   * urgent commit (fsync, a close that must be durable) starts a round at once; others
   * wait up to LAZY_ROUND_MS for company.
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
    try {
      await this.writer.drain();
      await this.meta.commitContent(
        prepared.map(([r, p]) => ({ ino: r.content.ino, rows: p.rows, size: p.size, storedBytes: p.stored, attrs: r.content.takeTimes(p) })),
      );
      for (const [r, p] of prepared) r.content.applyCommit(p);
      await this.meta.barrier();
    } catch (err) {
      for (const [r, p] of prepared) r.content.abortCommit(p);
      throw err;
    } finally {
      for (const [r] of prepared) r.content.endCommit();
    }
    this.reclaimer.release(prepared.flatMap(([, p]) => p.releases));
  }
}
