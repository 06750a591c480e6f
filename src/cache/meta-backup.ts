import type { MetaSnapshot } from '../meta/engine';
import type { MetaDb } from '../meta/meta-db';
import type { Remote, RemoteObject } from '../remote/remote';

/**
 * Backs the metadata database up to the remote, as numbered, compressed generations
 * (`meta-0000000042.db.gz`), the last few kept, so another machine can mount the volume
 * from the remote alone (see restore.ts).
 *
 * A generation must never name a block the remote lacks. So: releases of blocks are held
 * (a block a snapshot names must not be deleted before it is uploaded), the snapshot is
 * taken (committed data only, in a worker), everything dirty is uploaded, and only then
 * is the snapshot put on the remote and the releases let go.
 */

export interface MetaBackupOptions {
  keep: number;
  /** Holds block releases; returns the function that lets them go. */
  holdReleases: () => () => void;
  /** Uploads every dirty block. */
  flushBlocks: () => Promise<void>;
  log: { info(msg: string): void; error(msg: string, err?: unknown): void };
}

export interface BackupResult {
  generation: number;
  rawBytes: number;
  compressedBytes: number;
  seconds: number;
}

const NAME = /^meta-(\d{10})\.db\.gz$/;
export const GENERATION_KEY = 'backup-generation';

export function generationName(generation: number): string {
  return `meta-${String(generation).padStart(10, '0')}.db.gz`;
}

/** Metadata generations on the remote, newest first. */
export async function listGenerations(remote: Remote): Promise<(RemoteObject & { generation: number })[]> {
  const out: (RemoteObject & { generation: number })[] = [];
  for (const o of await remote.list('meta')) {
    const m = NAME.exec(o.name);
    if (m) out.push({ ...o, generation: Number(m[1]) });
  }
  return out.sort((a, b) => b.generation - a.generation);
}

export class MetaBackup {
  private running: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private changesAtLast = -1;
  lastResult: BackupResult | undefined;
  lastError: string | undefined;

  constructor(
    private readonly meta: MetaSnapshot & Pick<MetaDb, 'remote' | 'durableTransaction'>,
    private readonly remote: Remote,
    private readonly options: MetaBackupOptions,
  ) {}

  /** Backs up every `seconds` while something changed (0: never on a timer). */
  schedule(seconds: number): void {
    if (seconds <= 0) return;
    this.timer = setInterval(() => {
      if (this.changes() === this.changesAtLast) return;
      this.backup('periodic').catch(() => undefined);
    }, seconds * 1000);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Makes and uploads a new generation; backups run one at a time. */
  backup(reason: string): Promise<BackupResult> {
    const run = this.running.then(() => this.run(reason));
    this.running = run.catch(() => undefined);
    return run;
  }

  private changes(): number {
    return this.meta.changeCount();
  }

  private async run(reason: string): Promise<BackupResult> {
    const started = performance.now();
    const letGo = this.options.holdReleases();
    try {
      // Uploading first puts the packs' rows into the snapshot (a restore then need not read
      // their indexes); the flush after it uploads what was written in between.
      await this.options.flushBlocks();
      // Committed data is what the snapshot's own connection sees: commit the open group first.
      this.meta.commitGroup();
      const changes = this.changes();
      const generation = Number(this.meta.remote.state(GENERATION_KEY) ?? '0') + 1;
      // The snapshot says which generation it is, so a machine restoring it knows.
      this.meta.durableTransaction(() => this.meta.remote.setState(GENERATION_KEY, String(generation)));
      const snap = await this.meta.snapshot();
      await this.options.flushBlocks();
      await this.remote.put('meta', generationName(generation), snap.data);
      this.changesAtLast = changes;
      const result = { generation, rawBytes: snap.rawBytes, compressedBytes: snap.data.length, seconds: (performance.now() - started) / 1000 };
      this.lastResult = result;
      this.lastError = undefined;
      this.options.log.info(`metadata backup ${generationName(generation)} (${reason}): ${snap.rawBytes} bytes, ${snap.data.length} compressed, ${result.seconds.toFixed(2)} s`);
      await this.prune();
      return result;
    } catch (err) {
      this.lastError = (err as Error).message;
      this.options.log.error(`metadata backup (${reason}) to ${this.remote.description} failed`, err);
      throw err;
    } finally {
      letGo();
    }
  }

  /** Deletes generations beyond the newest `keep`. */
  private async prune(): Promise<void> {
    const all = await listGenerations(this.remote);
    for (const old of all.slice(this.options.keep)) await this.remote.delete(old);
  }
}
