import { RemoteError } from './remote';

/**
 * Spaces out and bounds calls to a remote API: at most `concurrency` at once, and call
 * starts at least `spacingMs` apart. Waiting callers are served in arrival order.
 */
export class Pacer {
  private active = 0;
  private readonly waiting: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private nextStartAt = 0;
  private readonly timers = new Set<{ timer: NodeJS.Timeout; reject: (e: Error) => void }>();
  private closed = false;

  constructor(
    private readonly spacingMs: number,
    private readonly concurrency: number,
  ) {
    if (!(concurrency >= 1)) throw new Error(`pacer concurrency must be at least 1, not ${concurrency}`);
  }

  /** Runs `fn` once a slot is free and the spacing allows. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }

  /** A cancellable sleep: `close()` rejects it, so nothing waits on a closed remote. */
  sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      const entry = {
        timer: setTimeout(() => {
          this.timers.delete(entry);
          resolve();
        }, ms),
        reject,
      };
      this.timers.add(entry);
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Rejects every waiting caller and sleeper. */
  close(): void {
    this.closed = true;
    for (const w of this.waiting.splice(0)) w.reject(closedError());
    for (const t of this.timers) {
      clearTimeout(t.timer);
      t.reject(closedError());
    }
    this.timers.clear();
  }

  private async acquire(): Promise<void> {
    if (this.closed) throw closedError();
    if (this.active < this.concurrency) this.active++;
    else await new Promise<void>((resolve, reject) => this.waiting.push({ resolve, reject }));
    const now = Date.now();
    const startAt = Math.max(now, this.nextStartAt);
    this.nextStartAt = startAt + this.spacingMs;
    if (startAt > now) {
      try {
        await this.sleep(startAt - now);
      } catch (e) {
        this.release();
        throw e;
      }
    }
  }

  private release(): void {
    // The slot passes straight to the next waiter, so `active` never dips and lets a newcomer jump the queue.
    const next = this.waiting.shift();
    if (next) next.resolve();
    else this.active--;
  }
}

/** Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))). */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt - 1, 30));
  return Math.floor(random() * ceiling);
}

function closedError(): RemoteError {
  return new RemoteError('remote closed', 'io');
}
