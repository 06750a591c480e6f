/**
 * How a long command shows its progress (`fsck`, `gc`, `pin`, mounting from a remote,
 * the Drive view's first scan): a status line redrawn on a terminal's stderr, or, with
 * `--json --progress`, one JSON object per line on stderr, so that stdout stays the one
 * result document a script parses. Without `--progress`, the line shows on a terminal
 * only; `--progress` without `--json` forces it where stderr is not a terminal (each
 * update then a line of its own, since a pipe cannot be redrawn).
 */
import { mbPerSecond } from '../format';
import type { ProgressEvent, ProgressSink } from '../progress';

/** A command's progress output: a ProgressSink that also shows the daemon's events. */
export interface ProgressDisplay extends ProgressSink {
  /** False when nothing would be shown (then the daemon need not send progress at all). */
  readonly enabled: boolean;
  /** Shows a progress event of work done elsewhere (the daemon): a new phase restarts rate and ETA. */
  show(e: ProgressEvent): void;
  /** The phase is over: erases a status line, or writes the last JSON object held back. */
  clear(): void;
}

/** What `--progress` and `--json` ask for. */
export interface ProgressFlags {
  progress?: boolean;
  json?: boolean;
}

export function progressDisplay(flags: ProgressFlags, stream: NodeJS.WriteStream = process.stderr): ProgressDisplay {
  if (flags.progress && flags.json) return new JsonProgress(stream);
  return new ProgressLine(stream, !!flags.progress || !!stream.isTTY);
}

/** Rate, time left, and the numbers of one moment of a phase. */
interface Reading {
  done: number;
  /** 0 when the total is not known (a scan that counts as it goes). */
  total: number;
  bytes?: number;
  /** Bytes per second when bytes are counted, else items per second. */
  rate: number;
  /** Undefined when the total (or the rate) is not known yet. */
  etaSeconds?: number;
}

function reading(done: number, total: number, bytes: number | undefined, phaseStart: number): Reading {
  const secs = (Date.now() - phaseStart) / 1000;
  const rate = secs > 0 ? (bytes ?? done) / secs : 0;
  const etaSeconds = total > 0 && done >= total ? 0 : total > 0 && done > 0 ? ((total - done) * secs) / done : undefined;
  return { done, total, bytes, rate, etaSeconds };
}

/**
 * A single status line on stderr: phase, done/total, rate and time left. On a terminal
 * it is redrawn in place at most 5 times a second; elsewhere (forced by --progress) each
 * update is a line, at most one a second.
 */
export class ProgressLine implements ProgressDisplay {
  private last = 0;
  private shown = false;
  private phaseStart = 0;
  private phase = '';
  private readonly redraw: boolean;

  constructor(
    private readonly stream: NodeJS.WriteStream = process.stderr,
    readonly enabled: boolean = !!process.stderr.isTTY,
  ) {
    this.redraw = !!stream.isTTY;
  }

  start(phase: string): void {
    this.phase = phase;
    this.phaseStart = Date.now();
    this.last = 0;
  }

  /** `done`/`total` items (total 0: not known); `bytes` so far for a rate in MB/s (else items/s). */
  update(done: number, total: number, bytes?: number): void {
    if (!this.enabled) return;
    const t = Date.now();
    if (t - this.last < (this.redraw ? 200 : 1000)) return;
    this.last = t;
    const r = reading(done, total, bytes, this.phaseStart);
    const secs = (t - this.phaseStart) / 1000;
    const rate = bytes !== undefined ? `${mbPerSecond(bytes, secs).toFixed(0)} MB/s` : `${r.rate.toFixed(0)}/s`;
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
    const line = total > 0 ? `${this.phase}: ${done}/${total} (${pct.toFixed(0)}%) ${rate}, ETA ${formatEta(r.etaSeconds ?? 0)}` : `${this.phase}: ${done} (${rate})`;
    if (this.redraw) {
      this.stream.write(`\r\x1b[K${line}`);
      this.shown = true;
    } else this.stream.write(`${line}\n`);
  }

  show(e: ProgressEvent): void {
    if (e.phase !== this.phase) this.start(e.phase);
    if (e.total > 0) this.update(e.done, e.total, e.bytes);
  }

  clear(): void {
    if (this.shown) this.stream.write('\r\x1b[K');
    this.shown = false;
  }
}

/**
 * `--json --progress`: `{"progress":{"phase","done","total","bytes","rate","etaSeconds"}}`
 * lines on stderr, about one a second, plus each phase's last numbers (written when the
 * next phase starts or the command clears the display). `total` is null when not known,
 * `bytes` when not counted, `etaSeconds` until it can be estimated; `rate` is bytes per
 * second when bytes are counted, else items per second.
 */
export class JsonProgress implements ProgressDisplay {
  readonly enabled = true;
  private phase = '';
  private phaseStart = 0;
  private lastWrite = 0;
  /** The newest numbers not written yet. */
  private pending: Reading | undefined;

  constructor(
    private readonly stream: NodeJS.WritableStream = process.stderr,
    private readonly everyMs = 1000,
  ) {}

  start(phase: string): void {
    this.flush();
    this.phase = phase;
    this.phaseStart = Date.now();
    this.lastWrite = 0;
  }

  update(done: number, total: number, bytes?: number): void {
    this.pending = reading(done, total, bytes, this.phaseStart);
    if (Date.now() - this.lastWrite >= this.everyMs) this.flush();
  }

  show(e: ProgressEvent): void {
    if (e.phase !== this.phase) this.start(e.phase);
    if (e.total > 0 || e.done > 0) this.update(e.done, e.total, e.bytes);
  }

  clear(): void {
    this.flush();
  }

  private flush(): void {
    const r = this.pending;
    if (!r) return;
    this.pending = undefined;
    this.lastWrite = Date.now();
    const progress = {
      phase: this.phase,
      done: r.done,
      total: r.total > 0 ? r.total : null,
      bytes: r.bytes ?? null,
      rate: Math.round(r.rate),
      etaSeconds: r.etaSeconds === undefined ? null : Math.round(r.etaSeconds),
    };
    this.stream.write(`${JSON.stringify({ progress })}\n`);
  }
}

function formatEta(seconds: number): string {
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, '0')}`;
}
