import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

/** A compressed, consistent copy of the SQLite database at `path`, made off the JavaScript thread. */
export function snapshotDatabase(path: string): Promise<{ data: Buffer; rawBytes: number }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(join(__dirname, 'snapshot-worker.js'), {
      workerData: { source: path, scratch: `${path}.snapshot-${process.pid}-${Date.now()}` },
    });
    worker.once('message', (m: { ok: boolean; data?: Uint8Array; rawBytes?: number; error?: string }) => {
      if (m.ok && m.data) resolve({ data: Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength), rawBytes: m.rawBytes ?? 0 });
      else reject(new Error(`snapshot of the metadata failed: ${m.error ?? 'no data'}`));
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (code !== 0) reject(new Error(`the metadata snapshot worker exited with code ${code}`));
    });
  });
}
