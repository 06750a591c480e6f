import pino from 'pino';
import { renameSync, statSync } from 'node:fs';
import { DEFAULT_LOG_MAX_BYTES, STDERR_LOG, type LogOptions } from './log-options';

export interface Logger {
  error(msg: string, err?: unknown): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  flush(): void;
}

/** The daemon's log, which SIGHUP reopens (after logrotate has moved the file away). */
export interface DaemonLogger extends Logger {
  /** Opens the log file by its name again; a no-op for stderr. Never throws. */
  reopen(): void;
}

/** Log text held in memory while the log's disk is full; beyond it, lines are dropped. */
const LOG_BUFFER_BYTES = 1024 * 1024;

/** The log of a command run next to a daemon (gc of an unmounted volume): the volume's log file. */
export function fileLogger(path: string, verbose: boolean): Logger {
  return openLog(path, { level: verbose ? 'debug' : 'info', maxBytes: DEFAULT_LOG_MAX_BYTES });
}

/** The daemon's log: JSON lines appended to `target` (a file, or `-` for stderr). */
export function openLog(target: string, o: LogOptions): DaemonLogger {
  // The log usually lives on the volume's own disk, which may fill: a line that cannot
  // be written is dropped (at most LOG_BUFFER_BYTES wait for space), never thrown. An
  // unhandled 'error' here would kill the daemon, and the mount with it.
  const toStderr = target === STDERR_LOG;
  const destination = toStderr
    ? pino.destination({ fd: 2, sync: true, maxLength: LOG_BUFFER_BYTES })
    : pino.destination({ dest: target, sync: true, maxLength: LOG_BUFFER_BYTES, mode: 0o600, append: true });
  destination.on('error', () => undefined);
  const reopen = (): void => {
    if (toStderr) return;
    try {
      destination.reopen();
    } catch {
      // Cannot open it again (the directory is gone, or full): keep writing where we were.
    }
  };
  let size = toStderr ? 0 : fileSize(target);
  // Counting bytes as lines pass costs less than a stat per line; rotation is a rename
  // and a reopen, so a reader tailing the old name keeps the whole old file.
  const sink = {
    write(line: string): boolean {
      destination.write(line);
      if (o.maxBytes > 0 && !toStderr) {
        size += Buffer.byteLength(line);
        if (size > o.maxBytes) {
          size = 0;
          try {
            renameSync(target, `${target}.1`);
          } catch {
            // Left in place: this file grows until the next try, it is never lost.
          }
          reopen();
        }
      }
      return true;
    },
  };
  const log = pino({ level: o.level, base: { pid: process.pid } }, sink);
  return {
    error: (msg, err) => (err === undefined ? log.error(msg) : log.error({ err }, msg)),
    warn: (msg) => log.warn(msg),
    info: (msg) => log.info(msg),
    debug: (msg) => log.debug(msg),
    flush: () => {
      try {
        destination.flushSync();
      } catch {
        // Full disk: what cannot be written waits in the buffer or is dropped.
      }
    },
    reopen: () => {
      reopen();
      size = toStderr ? 0 : fileSize(target);
    },
  };
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}
