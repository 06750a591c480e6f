import pino from 'pino';
import { openSync } from 'node:fs';

export interface Logger {
  error(msg: string, err?: unknown): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  flush(): void;
}

/** Log text held in memory while the log's disk is full; beyond it, lines are dropped. */
const LOG_BUFFER_BYTES = 1024 * 1024;

/** The daemon's log: JSON lines appended to a file in the volume (mode 0600). */
export function fileLogger(path: string, verbose: boolean): Logger {
  const fd = openSync(path, 'a', 0o600);
  // The log usually lives on the volume's own disk, which may fill: a line that cannot
  // be written is dropped (at most LOG_BUFFER_BYTES wait for space), never thrown. An
  // unhandled 'error' here would kill the daemon, and the mount with it.
  const destination = pino.destination({ fd, sync: true, maxLength: LOG_BUFFER_BYTES });
  destination.on('error', () => undefined);
  const log = pino({ level: verbose ? 'debug' : 'info', base: { pid: process.pid } }, destination);
  return {
    error: (msg, err) => (err === undefined ? log.error(msg) : log.error({ err }, msg)),
    warn: (msg) => log.warn(msg),
    info: (msg) => log.info(msg),
    debug: (msg) => log.debug(msg),
    flush: () => destination.flushSync(),
  };
}
