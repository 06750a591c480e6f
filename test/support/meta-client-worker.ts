/**
 * A second metadata client in its own thread (its own connection), for the conformance
 * suite's interleaving test: it makes entries and links in one directory and changes one
 * field of a shared inode while the main thread does the same with other names and fields.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openMetaEngine } from '../../src/meta/registry';
import { S_IFDIR, S_IFREG } from '../../src/posix/file-system';

interface Job {
  url: string;
  dir: number;
  file: number;
  n: number;
}

async function run(job: Job): Promise<void> {
  const m = await openMetaEngine(job.url);
  try {
    let clock = 1_800_000_000;
    const t = () => ({ s: ++clock, ns: 1 });
    for (let i = 0; i < job.n; i++) {
      await m.mknod(job.dir, Buffer.from(`w${i}`), { mode: (i % 5 === 0 ? S_IFDIR : S_IFREG) | 0o644, uid: 0, gid: 0 }, t());
      await m.link(job.file, job.dir, Buffer.from(`wlink${i}`), t());
      await m.setattr(job.file, { gid: i });
      if (i % 3 === 0) await m.rename(job.dir, Buffer.from(`w${i}`), job.dir, Buffer.from(`wmoved${i}`), 0, t());
    }
  } finally {
    await m.close();
  }
}

run(workerData as Job).then(
  () => parentPort?.postMessage({ ok: true }),
  (err: unknown) => parentPort?.postMessage({ ok: false, error: String((err as Error).stack ?? err) }),
);
