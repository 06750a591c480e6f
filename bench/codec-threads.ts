/**
 * Where LZ4 compression should run so it does not stall the FUSE requests the JavaScript
 * thread serves: on that thread (compressSync), on libuv's thread pool (lz4-napi's async
 * `compress`), or in worker threads (the block transferred there and back). For each, the
 * throughput of compressing 128 KiB text blocks, and how busy the JavaScript thread was
 * meanwhile (its event-loop utilization: 1.0 means nothing else could have run). The
 * reference is the synchronous path in the same run.
 */
import { compress, compressSync } from 'lz4-napi';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { textCorpus } from '../test/support/corpus';

const BLOCK = 128 * 1024;

export interface CodecThreadsRow {
  mode: string;
  mbPerSecond: number;
  /** Share of the wall time the JavaScript thread was busy (event-loop utilization). */
  jsBusy: number;
}

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { compressSync } = require(${JSON.stringify(require.resolve('lz4-napi'))});
parentPort.on('message', ({ id, buf }) => {
  const out = compressSync(Buffer.from(buf));
  const copy = new Uint8Array(out.length);
  copy.set(out);
  parentPort.postMessage({ id, buf: copy.buffer }, [copy.buffer]);
});`;

async function measure(mode: string, blocks: Buffer[], run: (blocks: Buffer[]) => Promise<void>): Promise<CodecThreadsRow> {
  const elu0 = performance.eventLoopUtilization();
  const t0 = performance.now();
  await run(blocks);
  const seconds = (performance.now() - t0) / 1000;
  // Utilization is accounted as the loop turns: let it turn once after a synchronous run.
  await new Promise((resolve) => setImmediate(resolve));
  const elu = performance.eventLoopUtilization(elu0);
  return { mode, mbPerSecond: (blocks.length * BLOCK) / seconds / 1e6, jsBusy: elu.utilization };
}

/** Keeps `depth` compressions in flight, as the block writer does while writes stream in. */
async function pipelined(blocks: Buffer[], depth: number, one: (b: Buffer) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < blocks.length) await one(blocks[next++]);
  };
  await Promise.all(Array.from({ length: depth }, lane));
}

export async function benchCodecThreads(mib = 128): Promise<CodecThreadsRow[]> {
  const text = textCorpus(8 << 20);
  const blocks: Buffer[] = [];
  for (let i = 0; blocks.length * BLOCK < mib * 2 ** 20; i = (i + 1) % Math.floor(text.length / BLOCK)) {
    blocks.push(Buffer.from(text.subarray(i * BLOCK, (i + 1) * BLOCK)));
  }
  const rows: CodecThreadsRow[] = [];
  rows.push(
    await measure('sync (JS thread)', blocks, async (bs) => {
      for (const b of bs) compressSync(b);
    }),
  );
  for (const depth of [2, 4]) rows.push(await measure(`async, ${depth} in flight`, blocks, (bs) => pipelined(bs, depth, (b) => compress(b))));
  for (const n of [1, 2]) {
    const workers = Array.from({ length: n }, () => new Worker(WORKER_SOURCE, { eval: true }));
    let id = 0;
    const waiting = new Map<number, () => void>();
    for (const w of workers) w.on('message', (m: { id: number }) => waiting.get(m.id)?.());
    const one = (b: Buffer) =>
      new Promise<void>((resolve) => {
        const my = id++;
        waiting.set(my, () => {
          waiting.delete(my);
          resolve();
        });
        // The copy a writer would make to hand its block over (it keeps its own for reads).
        const copy = new Uint8Array(b.length);
        copy.set(b);
        workers[my % n].postMessage({ id: my, buf: copy.buffer }, [copy.buffer]);
      });
    rows.push(await measure(`${n} worker thread${n > 1 ? 's' : ''}, ${2 * n} in flight`, blocks, (bs) => pipelined(bs, 2 * n, one)));
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return rows;
}

export function printCodecThreads(rows: CodecThreadsRow[]): void {
  const ref = rows[0];
  console.log('\nLZ4 compression of 128 KiB text blocks: where it runs (JS busy = share of time the FUSE thread could not serve)');
  for (const r of rows) {
    console.log(`${r.mode.padEnd(28)} ${r.mbPerSecond.toFixed(0).padStart(6)} MB/s (${(r.mbPerSecond / ref.mbPerSecond).toFixed(2)}x sync)  JS busy ${(100 * r.jsBusy).toFixed(0)}%`);
  }
}

if (require.main === module) {
  void benchCodecThreads().then(printCodecThreads);
}
