/**
 * systemd's readiness protocol (`Type=notify`): when the service manager set
 * NOTIFY_SOCKET, a mount daemon says READY=1 (with MAINPID, so a `pogfs mount` that
 * detaches its daemon works under `NotifyAccess=all`) once the mount answers, STATUS=
 * lines while it gets there, and STOPPING=1 when it begins to unmount. Without
 * NOTIFY_SOCKET every call here does nothing. The datagram is sent by the FUSE addon
 * (Node's dgram has no Unix datagram sockets).
 */
import { constants } from 'node:os';
import { sendDatagram } from '../fuse/session';
import type { Logger } from './log';

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

let stoppingSent = false;

/** Sends `KEY=VALUE` lines; a failure is logged once per call and never thrown (the mount matters more). */
function send(fields: Record<string, string | number>, log: Pick<Logger, 'warn'>): void {
  const socket = process.env.NOTIFY_SOCKET;
  if (!socket) return;
  // A newline would start another field: STATUS text is one line.
  const message = Object.entries(fields).map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`).join('\n');
  let errno: number;
  try {
    errno = sendDatagram(socket, message);
  } catch (err) {
    log.warn(`cannot notify the service manager at ${socket}: ${(err as Error).message}`);
    return;
  }
  if (errno !== 0) log.warn(`cannot notify the service manager at ${socket}: ${ERRNO_NAMES.get(errno) ?? `errno ${errno}`}`);
}

/** The mount answers requests: READY=1 and this process as the service's main pid. */
export function notifyReady(status: string, log: Pick<Logger, 'warn'>): void {
  send({ READY: 1, MAINPID: process.pid, STATUS: status }, log);
}

/** What the daemon is doing, for `systemctl status` (callers keep it to about one a second). */
export function notifyStatus(status: string, log: Pick<Logger, 'warn'>): void {
  send({ STATUS: status }, log);
}

/** The daemon begins to unmount (a signal, or `pogfs umount`): sent once. */
export function notifyStopping(log: Pick<Logger, 'warn'>): void {
  if (stoppingSent) return;
  stoppingSent = true;
  send({ STOPPING: 1, STATUS: 'unmounting' }, log);
}
