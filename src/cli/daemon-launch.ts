import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import type { UsageError } from './errors';
import type { DaemonLogger } from './log';
import type { LogFlags } from './log-options';
import { findMount, fuseUnmount } from './mounts';
import { notifyStopping } from './service-notify';

/** The flags both mount commands take for their daemon (`pogfs mount`, `pogfs drive mount`). */
export interface DaemonFlags extends LogFlags {
  allowNonEmpty?: boolean;
  /** Internal: the launching command waits on an IPC channel for readiness. */
  ipcReady?: boolean;
  /** --metrics [ADDR:]PORT. */
  metrics?: string;
  /** Show progress even when stderr is not a terminal (JSON lines with --json). */
  progress?: boolean;
  json?: boolean;
}

/** What a daemon started with `--ipc-ready` tells the command that started it. */
export interface DaemonMessage {
  ready?: boolean;
  error?: string;
  exitCode?: number;
  notice?: string;
  progress?: number;
  elapsedMs?: number;
}

/** How long a daemon may stay silent while getting a mount ready (any message restarts the clock). */
/** How long a mount waits for its daemon (POGFS_READY_TIMEOUT_SECONDS; anything but a positive number: 120). */
const READY_TIMEOUT_MS = (() => {
  const s = Number(process.env.POGFS_READY_TIMEOUT_SECONDS);
  return (Number.isFinite(s) && s > 0 ? s : 120) * 1000;
})();

/**
 * Runs `argv` (a pogfs command line in the foreground with `--ipc-ready`) as a detached
 * daemon and resolves once it says the mount is ready, or why it is not, setting the
 * exit code. Every wait ends: a daemon silent for too long is stopped, and a mount it
 * may have made is detached, so nothing is left hanging. `what` names the daemon in
 * messages; `log` is where it writes.
 */
export function launchDaemon(argv: string[], o: { what: string; mountpoint: string; log: string; onProgress?: (m: DaemonMessage) => void }): Promise<void> {
  const child = spawn(process.execPath, argv, { detached: true, stdio: ['ignore', 'ignore', 'ignore', 'ipc'] });
  const mountpoint = resolve(o.mountpoint);
  return new Promise<void>((done) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (exitCode: number | undefined, line?: string) => {
      settled = true;
      clearTimeout(timer);
      if (line) console.error(line);
      if (exitCode !== undefined) process.exitCode = exitCode;
      if (child.connected) child.disconnect();
      child.unref();
      done();
    };
    const armTimer = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (settled) return;
        child.kill('SIGKILL');
        if (findMount(mountpoint)) fuseUnmount(mountpoint, true);
        finish(1, `pogfs: the ${o.what} (pid ${child.pid}) did not get the mount ready within ${READY_TIMEOUT_MS / 1000} s and was stopped; see ${o.log} for what it waited on, then try again (POGFS_READY_TIMEOUT_SECONDS sets the limit)`);
      }, READY_TIMEOUT_MS);
    };
    armTimer();
    child.on('message', (m: DaemonMessage) => {
      if (settled) return;
      armTimer();
      if (m.notice) console.error(m.notice);
      if (m.progress !== undefined) o.onProgress?.(m);
      if (m.ready) finish(undefined);
      else if (m.error) finish(m.exitCode ?? 2, `pogfs: ${m.error}`);
    });
    child.on('exit', (code, signal) => {
      if (settled) return;
      finish(1, `pogfs: the ${o.what} exited (${signal ?? `code ${code}`}) before the mount was ready; see ${o.log}`);
    });
  });
}

/**
 * The daemon's side of launchDaemon: where notices, progress and readiness go. Started
 * with `--ipc-ready`, they go to the launching command; in a plain `--foreground` run,
 * to this terminal. `finish()` sets the exit code of a mount that never got ready.
 */
export function daemonReporter(ipcReady: boolean | undefined): {
  notice: (line: string) => void;
  send?: (m: DaemonMessage) => void;
  onReady: (err?: UsageError) => void;
  finish: () => void;
} {
  const send = ipcReady && process.send ? (m: DaemonMessage) => process.send?.(m) : undefined;
  let failed: UsageError | undefined;
  return {
    notice: (line) => (send ? send({ notice: line }) : console.error(line)),
    send,
    onReady: (err) => {
      failed = err;
      if (send) {
        send(err ? { error: err.message, exitCode: err.exitCode } : { ready: true });
        process.disconnect?.();
      } else if (err) console.error(`pogfs: ${err.message}`);
    },
    finish: () => {
      if (failed) process.exitCode = failed.exitCode;
    },
  };
}

/**
 * What every mount daemon does with its process: DESIGN invariant 5 (a bug in some
 * background callback is logged, not fatal; the mount and every byte already written
 * stay), SIGTERM/SIGINT unmount lazily (and tell systemd STOPPING=1) (open files keep working until closed; never a
 * synchronous unmount here: it would flush dirty pages through this very thread), and
 * SIGHUP reopens the log (logrotate's postrotate: `kill -HUP PID`).
 */
export function keepDaemonProcess(log: DaemonLogger, unmountLazily: () => Promise<unknown>): void {
  const stop = (signal: string) => {
    log.info(`${signal}: unmounting`);
    notifyStopping(log);
    unmountLazily().catch((err) => log.error('unmount failed', err));
  };
  process.on('uncaughtException', (err) => log.error('uncaught exception (the mount stays up)', err));
  process.on('unhandledRejection', (err) => log.error('unhandled rejection (the mount stays up)', err));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    log.reopen();
    log.info('SIGHUP: log file reopened');
  });
}
