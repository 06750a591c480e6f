/**
 * Runs in a worker thread: copies the metadata database into a compressed snapshot. A
 * connection of its own sees only committed data, in one read transaction (a consistent
 * snapshot, while the daemon goes on writing through WAL), and VACUUM INTO and gzip take
 * their time here instead of on the thread that serves FUSE requests.
 */
import Database from 'better-sqlite3';
import { readFileSync, rmSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { gzipSync } from 'node:zlib';

interface Job {
  source: string;
  /** A path that does not exist yet, beside the source. */
  scratch: string;
}

const job = workerData as Job;
try {
  const db = new Database(job.source, { readonly: true, fileMustExist: true });
  try {
    db.prepare('VACUUM INTO ?').run(job.scratch);
  } finally {
    db.close();
  }
  const raw = readFileSync(job.scratch);
  const gz = gzipSync(raw, { level: 6 });
  parentPort?.postMessage({ ok: true, rawBytes: raw.length, data: gz });
} catch (err) {
  parentPort?.postMessage({ ok: false, error: (err as Error).message });
} finally {
  rmSync(job.scratch, { force: true });
}
