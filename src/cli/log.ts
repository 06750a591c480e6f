import pino from 'pino';
import { openSync } from 'node:fs';

export interface Logger {
  error(msg: string, err?: unknown): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  flush(): void;
}

/** The daemon's log: JSON lines appended to a file in the volume (mode 0600). */
export function fileLogger(path: string, verbose: boolean): Logger {
  const fd = openSync(path, 'a', 0o600);
  const destination = pino.destination({ fd, sync: true });
  const log = pino({ level: verbose ? 'debug' : 'info', base: { pid: process.pid } }, destination);
  return {
    error: (msg, err) => (err === undefined ? log.error(msg) : log.error({ err }, msg)),
    warn: (msg) => log.warn(msg),
    info: (msg) => log.info(msg),
    debug: (msg) => log.debug(msg),
    flush: () => destination.flushSync(),
  };
}
