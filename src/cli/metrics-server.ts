import { createServer, type Server } from 'node:http';
import { constants } from 'node:os';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { FetcherStats } from '../cache/block-fetcher';
import type { FuseOpObserver } from '../fuse/session';
import type { RemoteCounters, RequestOutcome } from '../remote/remote';
import type { BlockStoreStats } from '../store/block-store';
import type { ChunkCacheStats } from '../store/chunk-cache';
import type { ChunkCacheStats as DriveChunkCacheStats } from '../driveview/chunk-cache';
import type { DownloadStats } from '../driveview/chunk-reader';
import { UsageError } from './errors';

/** What a mounted volume's store reports. */
export interface VolumeMetricsSources {
  chunkCache(): ChunkCacheStats;
  /** Bytes written but not yet committed to the block store. */
  writeBufferBytes(): number;
  /** Blocks in the store that the remote does not have yet (0 without a remote). */
  uploadPending(): { blocks: number; bytes: number };
  blockStore(): BlockStoreStats;
}

/** What the Drive view reports: its content-keyed chunk cache on disk and its ranged downloads. */
export interface DriveViewMetricsSources {
  chunkCache(): DriveChunkCacheStats;
  downloads(): DownloadStats;
}

/**
 * What a mount daemon's metrics are read from, when Prometheus scrapes (nothing is
 * counted twice): a volume's store, or a Drive view's cache; and the remote's client.
 */
export interface MetricsSources {
  volume?: VolumeMetricsSources;
  driveView?: DriveViewMetricsSources;
  remote?: {
    /** The remote client's own call counters (the ones `pogfs stats` prints). */
    calls(): RemoteCounters;
    /** HTTP requests by method and status (Drive; none for local:DIR). */
    requests(): RequestOutcome[];
    /** A volume's fetches into its local cache (absent for a Drive view). */
    fetch?(): FetcherStats;
    /** Block reads served by a volume's local cache (hits) or only after a fetch (misses). */
    reads?(): { hits: number; misses: number };
  };
}

/** Latency buckets (seconds): a cached getattr takes microseconds, a read that fetches from Drive seconds. */
const OP_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/** Sets a counter to a total kept elsewhere (a Prometheus counter only goes up, and so do these totals). */
function mirror(c: Counter, value: number, labels?: Record<string, string>): void {
  if (labels) c.inc(labels, value);
  else c.inc(value);
}

/**
 * The daemon's Prometheus metrics: FUSE ops are counted as they are answered (through
 * the session's observer), everything else is read from its owner at scrape time.
 */
export class DaemonMetrics implements FuseOpObserver {
  readonly registry = new Registry();
  private readonly opSeconds: Histogram;
  private readonly opErrors: Counter;
  private readonly bytesRead: Counter;
  private readonly bytesWritten: Counter;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    // Node's own: memory, CPU, and the event loop's lag, which every FUSE request waits on.
    collectDefaultMetrics({ register: this.registry });
    this.opSeconds = new Histogram({ name: 'pogfs_fuse_op_duration_seconds', help: 'FUSE requests by op: time from arrival to reply', labelNames: ['op'], buckets: OP_BUCKETS, registers });
    this.opErrors = new Counter({ name: 'pogfs_fuse_op_errors_total', help: 'FUSE requests answered with an error, by op and errno (ENOENT ...)', labelNames: ['op', 'errno'], registers });
    this.bytesRead = new Counter({ name: 'pogfs_read_bytes_total', help: 'bytes returned by FUSE reads', registers });
    this.bytesWritten = new Counter({ name: 'pogfs_written_bytes_total', help: 'bytes accepted by FUSE writes', registers });

    if (sources.volume) this.volumeMetrics(sources.volume);
    if (sources.driveView) this.driveViewMetrics(sources.driveView);
    if (sources.remote) this.remoteMetrics(sources.remote);
  }

  private volumeMetrics(volume: VolumeMetricsSources): void {
    const registers = [this.registry];
    const chunk = (pick: (s: ChunkCacheStats) => number) => () => pick(volume.chunkCache());
    new Counter({ name: 'pogfs_chunk_cache_hits_total', help: 'super-chunk reads served decoded from memory', registers, collect() { this.reset(); mirror(this, chunk((s) => s.hits)()); } });
    new Counter({ name: 'pogfs_chunk_cache_misses_total', help: 'super-chunk reads that had to decompress', registers, collect() { this.reset(); mirror(this, chunk((s) => s.misses)()); } });
    new Gauge({ name: 'pogfs_chunk_cache_bytes', help: 'decoded super-chunks held in memory', registers, collect() { this.set(chunk((s) => s.bytes)()); } });
    new Gauge({ name: 'pogfs_write_buffer_bytes', help: 'bytes written but not yet committed to the block store', registers, collect() { this.set(volume.writeBufferBytes()); } });
    new Gauge({ name: 'pogfs_upload_pending_bytes', help: 'bytes in the block store not yet on the remote (dirty)', registers, collect() { this.set(volume.uploadPending().bytes); } });
    new Gauge({ name: 'pogfs_upload_pending_blocks', help: 'blocks in the block store not yet on the remote (dirty)', registers, collect() { this.set(volume.uploadPending().blocks); } });
    const store = (pick: (s: BlockStoreStats) => number) => () => pick(volume.blockStore());
    new Gauge({ name: 'pogfs_block_store_blocks', help: 'distinct blocks in the local block store', registers, collect() { this.set(store((s) => s.blocks)()); } });
    new Gauge({ name: 'pogfs_block_store_stored_bytes', help: 'bytes the local block store holds (compressed, headers included)', registers, collect() { this.set(store((s) => s.storedBytes)()); } });
    new Gauge({ name: 'pogfs_block_store_unique_bytes', help: 'decoded bytes of the distinct blocks held', registers, collect() { this.set(store((s) => s.uniqueBytes)()); } });
  }

  private driveViewMetrics(view: DriveViewMetricsSources): void {
    const registers = [this.registry];
    const cache = (pick: (s: DriveChunkCacheStats) => number) => () => pick(view.chunkCache());
    new Counter({ name: 'pogfs_driveview_chunk_cache_hits_total', help: 'Drive view chunk reads served by the content-keyed cache', registers, collect() { this.reset(); mirror(this, cache((s) => s.hits)()); } });
    new Counter({ name: 'pogfs_driveview_chunk_cache_misses_total', help: 'Drive view chunk reads that waited for a download', registers, collect() { this.reset(); mirror(this, cache((s) => s.misses)()); } });
    new Gauge({ name: 'pogfs_driveview_chunk_cache_bytes', help: 'bytes of chunks the Drive view cache holds on disk', registers, collect() { this.set(cache((s) => s.bytes)()); } });
    new Gauge({ name: 'pogfs_driveview_chunk_cache_chunks', help: 'chunks the Drive view cache holds on disk', registers, collect() { this.set(cache((s) => s.chunks)()); } });
    new Gauge({ name: 'pogfs_driveview_chunk_cache_capacity_bytes', help: 'the bound of the Drive view cache (--cache-size)', registers, collect() { this.set(cache((s) => s.capacityBytes)()); } });
    new Counter({ name: 'pogfs_driveview_download_bytes_total', help: 'bytes downloaded from Drive by ranged reads', registers, collect() { this.reset(); mirror(this, view.downloads().bytes); } });
    new Counter({ name: 'pogfs_driveview_downloads_total', help: 'ranged reads from Drive', registers, collect() { this.reset(); mirror(this, view.downloads().downloads); } });
    new Counter({ name: 'pogfs_driveview_md5_mismatches_total', help: 'files read through whose bytes did not match Drive\'s md5 (served as EIO)', registers, collect() { this.reset(); mirror(this, view.downloads().md5Mismatches); } });
  }

  private remoteMetrics(remote: NonNullable<MetricsSources['remote']>): void {
    const registers = [this.registry];
    // The remote client's counter names: methods (files.list, put ...), retry.REASON
    // (429, 5xx, network, 401 ...) and bytes.up / bytes.down.
    new Counter({
      name: 'pogfs_remote_calls_total', help: 'remote (Drive or local:DIR) calls made, by method', labelNames: ['method'], registers,
      collect() {
        this.reset();
        for (const [name, n] of Object.entries(remote.calls())) if (!/^(retry|bytes)\./.test(name)) mirror(this, n, { method: name });
      },
    });
    new Counter({
      name: 'pogfs_remote_retries_total', help: 'remote calls retried, by what answered (HTTP status, network, short body ...)', labelNames: ['status'], registers,
      collect() {
        this.reset();
        for (const [name, n] of Object.entries(remote.calls())) if (name.startsWith('retry.')) mirror(this, n, { status: name.slice('retry.'.length) });
      },
    });
    new Counter({
      name: 'pogfs_remote_bytes_total', help: 'bytes moved to and from the remote', labelNames: ['direction'], registers,
      collect() {
        this.reset();
        for (const [name, n] of Object.entries(remote.calls())) if (name.startsWith('bytes.')) mirror(this, n, { direction: name.slice('bytes.'.length) });
      },
    });
    new Counter({
      name: 'pogfs_remote_requests_total', help: 'Drive HTTP requests (each attempt), by method and status: ok, or a failure\'s HTTP code, network or error', labelNames: ['method', 'status'], registers,
      collect() {
        this.reset();
        for (const r of remote.requests()) mirror(this, r.requests, { method: r.method, status: r.status });
      },
    });
    const fetch = remote.fetch?.bind(remote);
    const reads = remote.reads?.bind(remote);
    if (reads) {
      new Counter({ name: 'pogfs_remote_cache_hits_total', help: 'block reads served by the local cache of the remote', registers, collect() { this.reset(); mirror(this, reads().hits); } });
      new Counter({ name: 'pogfs_remote_cache_misses_total', help: 'block reads that waited for a fetch from the remote', registers, collect() { this.reset(); mirror(this, reads().misses); } });
    }
    if (fetch) {
      new Counter({ name: 'pogfs_remote_fetched_blocks_total', help: 'blocks fetched from the remote (read-ahead and pins included)', registers, collect() { this.reset(); mirror(this, fetch().blocks); } });
      new Counter({ name: 'pogfs_remote_fetch_bytes_total', help: 'bytes downloaded to fill the local cache', registers, collect() { this.reset(); mirror(this, fetch().bytes); } });
      new Counter({ name: 'pogfs_remote_fetch_failures_total', help: 'fetches from the remote that failed (corrupt values included)', registers, collect() { this.reset(); const f = fetch(); mirror(this, f.failures + f.corrupt); } });
    }
  }

  opDone(op: string, seconds: number, errno: number, bytes: number): void {
    this.opSeconds.observe({ op }, seconds);
    if (errno !== 0) this.opErrors.inc({ op, errno: ERRNO_NAMES.get(errno) ?? String(errno) });
    else if (bytes > 0) {
      if (op === 'read') this.bytesRead.inc(bytes);
      else if (op === 'write') this.bytesWritten.inc(bytes);
    }
  }
}

export interface MetricsServer {
  /** Where it listens, as http://HOST:PORT/metrics (the port chosen when 0 was asked). */
  url: string;
  close(): Promise<void>;
}

/** Serves GET /metrics in Prometheus text format; anything else is 404. */
export async function serveMetrics(metrics: DaemonMetrics, address: { host: string; port: number }, onError: (err: unknown) => void): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('pogfs: only GET /metrics is served here\n');
      return;
    }
    metrics.registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
      (err: unknown) => {
        onError(err);
        res.writeHead(500, { 'content-type': 'text/plain' }).end('pogfs: collecting metrics failed (see the log)\n');
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'the port is in use' : err.code === 'EADDRNOTAVAIL' ? 'no such local address' : err.message;
      reject(new UsageError(`--metrics ${address.host}:${address.port}: cannot listen: ${why}`));
    });
    server.listen(address.port, address.host, () => resolve());
  });
  server.on('error', onError);
  const bound = server.address() as AddressInfo;
  const host = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return {
    url: `http://${host}:${bound.port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
