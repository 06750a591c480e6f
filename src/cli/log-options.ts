/** The log's settings, apart from the logger so the command line reads them without loading pino. */
import { resolve } from 'node:path';
import { UsageError } from './errors';

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

/** The log flags both mount commands take (`pogfs mount`, `pogfs drive mount`). */
export interface LogFlags {
  logLevel?: LogLevel;
  logFile?: string;
  logMaxSize?: number;
  verbose?: boolean;
  foreground?: boolean;
}

/**
 * The log a mount daemon opens: `logFile` undefined is the daemon's default file, `-`
 * is stderr (only in the foreground: a background daemon has no terminal), anything
 * else a file resolved against the directory the command was run in.
 */
export function logSettings(flags: LogFlags): { logFile: string | undefined; logOptions: LogOptions } {
  if (flags.logFile === STDERR_LOG && !flags.foreground) throw new UsageError('--log-file - (stderr) needs --foreground: a background daemon has no terminal');
  const logFile = flags.logFile === undefined || flags.logFile === STDERR_LOG ? flags.logFile : resolve(flags.logFile);
  return { logFile, logOptions: { level: flags.logLevel ?? (flags.verbose ? 'debug' : 'info'), maxBytes: flags.logMaxSize ?? DEFAULT_LOG_MAX_BYTES } };
}

/** The same settings as arguments for the daemon a background mount starts. */
export function logArgv(logFile: string | undefined, o: LogOptions): string[] {
  return [...(logFile ? ['--log-file', logFile] : []), '--log-level', o.level, '--log-max-size', String(o.maxBytes)];
}
