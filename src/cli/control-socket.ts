import { chmodSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { ProgressEvent, ProgressSink } from '../progress';

/**
 * A mounted volume's daemon answers requests of other pogfs commands (gc) on a Unix
 * socket inside the volume directory: one JSON line in, one JSON line out. The socket
 * is created with mode 0600 in a 0700 directory, so only the volume's owner reaches it.
 * Paths are relative to the volume directory (both sides chdir there) because socket
 * paths are limited to 107 bytes.
 */
export const CONTROL_SOCKET = 'control.sock';
const MAX_REQUEST = 64 * 1024;

export interface ControlRequest {
  /** gc: collect garbage (and repack); clone: a copy-on-write copy of a tree; snapshot-*: read-only snapshots; status: what the daemon holds in memory (caches, queues); refresh: a Drive view polls the changes feed now; sync: a writable Drive view answers once everything pending is on Drive; leave-pending: its unmount leaves pending uploads for the next mount. */
  op: 'gc' | 'status' | 'pin' | 'unpin' | 'refresh' | 'sync' | 'leave-pending' | 'clone' | 'snapshot-create' | 'snapshot-list' | 'snapshot-rm';
  dryRun?: boolean;
  /** pin, unpin, clone (the source), snapshot-create (the tree to freeze): a path inside the mount, relative to its root. */
  path?: string;
  /** clone: the new path, relative to the mount's root. */
  to?: string;
  /** snapshot-create, snapshot-rm: the snapshot's name. */
  name?: string;
  /** gc: repack super-chunks whose live share is below this (default: the volume's setting). */
  repackBelow?: number;
  /** gc: also rewrite super-chunks stored with another codec than the volume's current one. */
  recompress?: boolean;
  /** leave-pending: false takes an earlier request back (the unmount it was for did not go ahead). */
  leave?: boolean;
  /** Send `{"progress": ProgressEvent}` lines while working (a terminal shows them). */
  progress?: boolean;
}

/** At most this often, a progress line goes to the client. */
const PROGRESS_EVERY_MS = 200;

/** A ProgressSink that sends throttled progress lines down the socket; `flush` sends the last numbers held back. */
function socketProgress(sock: Socket): ProgressSink & { flush(): void } {
  let phase = '';
  let last = 0;
  let pending: ProgressEvent | undefined;
  const send = (e: ProgressEvent) => {
    pending = undefined;
    if (!sock.writable) return;
    last = Date.now();
    sock.write(`${JSON.stringify({ progress: e })}\n`);
  };
  const flush = () => {
    if (pending) send(pending);
  };
  return {
    start: (p) => {
      flush(); // the phase that ends shows its last numbers
      phase = p;
      send({ phase, done: 0, total: 0 });
      last = 0; // the phase's first numbers go out at once
    },
    update: (done, total, bytes) => {
      pending = { phase, done, total, ...(bytes === undefined ? {} : { bytes }) };
      if (Date.now() - last >= PROGRESS_EVERY_MS) send(pending);
    },
    flush,
  };
}

export function serveControl(handle: (req: ControlRequest, progress: ProgressSink | undefined) => Promise<unknown>, onError: (err: unknown) => void): Server {
  rmSync(CONTROL_SOCKET, { force: true });
  const server = createServer((sock) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', () => undefined);
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_REQUEST) sock.destroy();
        return;
      }
      const line = buf.slice(0, nl);
      buf = '';
      let req: ControlRequest;
      try {
        req = JSON.parse(line) as ControlRequest;
      } catch {
        sock.end(`${JSON.stringify({ error: 'the request is not JSON' })}\n`);
        return;
      }
      const progress = req.progress ? socketProgress(sock) : undefined;
      handle(req, progress).then(
        (result) => {
          progress?.flush();
          sock.end(`${JSON.stringify({ result })}\n`);
        },
        (err: Error) => {
          onError(err);
          sock.end(`${JSON.stringify({ error: err.message })}\n`);
        },
      );
    });
  });
  server.listen(CONTROL_SOCKET, () => chmodSync(CONTROL_SOCKET, 0o600));
  server.on('error', onError);
  return server;
}

/** How long a quick request (status) may wait for the daemon before the user is told it is stuck. */
export const CONTROL_ANSWER_MS = 30_000;

/**
 * Sends one request to the daemon of the volume in `volumeDir`. `timeoutMs` bounds the
 * wait for a request that should be quick; long work (gc, pin) passes Infinity, and may
 * pass `onProgress` to be told how far the daemon is.
 */
export function callControl<T>(volumeDir: string, req: ControlRequest, timeoutMs = CONTROL_ANSWER_MS, onProgress?: (e: ProgressEvent) => void): Promise<T> {
  if (onProgress) req = { ...req, progress: true };
  return new Promise((resolve, reject) => {
    // A socket path is limited to 108 bytes: connect by its name relative to the volume. Node
    // starts a Unix socket's connect synchronously, so the directory is restored at once.
    const cwd = process.cwd();
    process.chdir(volumeDir);
    let sock;
    try {
      sock = createConnection(CONTROL_SOCKET);
    } finally {
      process.chdir(cwd);
    }
    let buf = '';
    if (Number.isFinite(timeoutMs)) {
      sock.setTimeout(timeoutMs, () => {
        sock.destroy();
        reject(new Error(`the volume's daemon did not answer within ${Math.round(timeoutMs / 1000)} s (it may be stuck; see pogfs.log in ${volumeDir})`));
      });
    }
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on('data', (chunk: string) => {
      buf += chunk;
      // Progress lines come first, one per line; the answer is the last line.
      for (let nl = buf.indexOf('\n'); nl >= 0 && buf.startsWith('{"progress":'); nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          onProgress?.((JSON.parse(line) as { progress: ProgressEvent }).progress);
        } catch {
          // a garbled progress line is only a missed update
        }
      }
    });
    sock.on('error', (err) => reject(new Error(`cannot reach the volume's daemon: ${err.message}`)));
    sock.on('end', () => {
      try {
        const answer = JSON.parse(buf) as { result?: T; error?: string };
        if (answer.error !== undefined) reject(new Error(answer.error));
        else resolve(answer.result as T);
      } catch {
        reject(new Error('the daemon gave no answer'));
      }
    });
  });
}
