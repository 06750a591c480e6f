/** The log's settings, apart from the logger so the command line reads them without loading pino. */

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Where the log goes: a file (JSON lines, mode 0600), or `-` for stderr (systemd's journal). */
export const STDERR_LOG = '-';

/** A log file past this size is renamed to FILE.1 (replacing an older one) and started again. */
export const DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024;

export interface LogOptions {
  level: LogLevel;
  /** Rotate a log file past this many bytes; 0 never rotates (logrotate does it). */
  maxBytes: number;
}
