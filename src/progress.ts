/**
 * Where a long job says how far it is: a command's progress output (src/cli/
 * progress-output.ts), or the daemon's control socket for work done on a command's behalf.
 * Updates may come for every item: a sink throttles them itself.
 */
export interface ProgressSink {
  /** A new phase begins (rate and ETA restart). */
  start(phase: string): void;
  /** `done` of `total` items; `bytes` so far, for a rate in MB/s (else items/s). */
  update(done: number, total: number, bytes?: number): void;
}

/** A phase and its numbers, as the daemon sends them on the control socket. */
export interface ProgressEvent {
  phase: string;
  done: number;
  total: number;
  bytes?: number;
}
