/**
 * The PostgreSQL metadata engine beside the SQLite one, measured in the same run:
 *   - `tar x` of the corpus and the cold stat walk (`find -printf '%s %m %u'` after a
 *     remount and drop_caches) on a mounted volume of each engine, PostgreSQL's time as a
 *     ratio of SQLite's (the volume section's helpers and corpus); and on a PostgreSQL
 *     volume several machines could share (a `local:` remote on the same disk: every
 *     close waits for its blocks' upload and publication);
 *   - metadata operations per second through openMetaEngine, without FUSE: each client
 *     repeats mknod, lookup, setattr, rename, unlink in a directory of its own, one client
 *     and then two at once (two engines on one volume; in one process, so two clients of
 *     PostgreSQL run their transactions in parallel on the server, while SQLite's take turns).
 * The server is the tests' (test/support/postgres.ts), started in a directory of its own
 * and stopped after; without PostgreSQL's programs the section is skipped in one line.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MetaEngine } from '../src/meta/engine';
import { newInode } from '../src/meta/meta-db';
import { openMetaEngine } from '../src/meta/registry';
import { ROOT_INO, S_IFDIR, S_IFREG } from '../src/posix/file-system';
import { launchPostgres, postgresBinDir, type PostgresServer } from '../test/support/postgres';
import type { Corpus } from './corpus';
import { pogfsTarget, tarAndColdWalk } from './volume-targets';

/** Rounds of the five operations per client (POGFS_BENCH_PG_OPS). */
const ROUNDS = Number(process.env.POGFS_BENCH_PG_OPS ?? 2000);
const OPS_PER_ROUND = 5;
/**
 * Each change commits on its own in both engines (PostgreSQL always does, asynchronously;
 * SQLite in WAL without a sync): a mount's SQLite group commit holds the write lock for
 * up to a second, which a second SQLite client would wait on until it gives up.
 */
const GROUP_COMMIT_MS = 0;

export type EngineName = 'sqlite' | 'postgres';
/** The volumes the small-file work runs on: each engine, and PostgreSQL with a remote (shared). */
export type SmallFilesVolume = EngineName | 'postgres-shared';
const SMALL_FILES_VOLUMES: readonly SmallFilesVolume[] = ['sqlite', 'postgres', 'postgres-shared'];

export interface PgBench {
  corpusEntries: number;
  smallFiles: Record<SmallFilesVolume, { tarSeconds: number; findSeconds: number }>;
  /** PostgreSQL's time over SQLite's. */
  tarRatio: number;
  findRatio: number;
  opsPerSecond: { engine: EngineName; clients: number; opsPerSecond: number }[];
}

export async function benchPostgres(work: string, pogfs: string, corpus: () => Corpus): Promise<PgBench | undefined> {
  try {
    postgresBinDir();
  } catch (err) {
    console.log(`bench: PostgreSQL section skipped: ${(err as Error).message}\n`);
    return undefined;
  }
  // Not under `work`: PostgreSQL runs as its own user when we are root, and must reach its directory.
  const serverDir = mkdtempSync(join(tmpdir(), 'pogfs-bench-pg-'));
  let server: PostgresServer | undefined;
  try {
    server = launchPostgres(serverDir);
    const smallFiles = {} as PgBench['smallFiles'];
    const the = corpus();
    for (const engine of SMALL_FILES_VOLUMES) {
      process.stdout.write(`measuring tar x and the cold stat walk on ${engine}...\n`);
      const initArgs = engine === 'sqlite' ? [] : ['--meta', server.createDatabase()];
      if (engine === 'postgres-shared') initArgs.push('--remote', `local:${mkdtempSync(join(work, 'pg-remote-'))}`);
      const t = pogfsTarget(pogfs, work, `meta-${engine}`, `pogfs on ${engine}`, { initArgs });
      try {
        const { tarSeconds, findSeconds } = await tarAndColdWalk(t, the);
        smallFiles[engine] = { tarSeconds, findSeconds };
      } finally {
        await t.stop();
      }
    }
    const opsPerSecond: PgBench['opsPerSecond'] = [];
    for (const engine of ['sqlite', 'postgres'] as const) {
      for (const clients of [1, 2]) {
        process.stdout.write(`measuring metadata operations on ${engine}, ${clients} client(s)...\n`);
        const url = engine === 'postgres' ? server.createDatabase() : `sqlite:${join(mkdtempSync(join(work, 'meta-ops-')), 'meta.db')}`;
        opsPerSecond.push({ engine, clients, opsPerSecond: await metadataOps(url, clients) });
      }
    }
    return {
      corpusEntries: the.entries,
      smallFiles,
      tarRatio: smallFiles.postgres.tarSeconds / smallFiles.sqlite.tarSeconds,
      findRatio: smallFiles.postgres.findSeconds / smallFiles.sqlite.findSeconds,
      opsPerSecond,
    };
  } finally {
    server?.stop();
    rmSync(serverDir, { recursive: true, force: true });
  }
}

/** Operations per second of `clients` engines on a new volume at `url`, each running ROUNDS rounds at once. */
async function metadataOps(url: string, clients: number): Promise<number> {
  const first = await openMetaEngine(url, {
    create: { blockSize: 131072, hashAlgorithm: 'blake3', root: newInode({ mode: S_IFDIR | 0o755, uid: 0, gid: 0, nlink: 2 }, now()) },
  });
  const engines: MetaEngine[] = [first];
  try {
    for (let i = 1; i < clients; i++) engines.push(await openMetaEngine(url));
    for (const e of engines) e.setGroupCommit(GROUP_COMMIT_MS);
    const dirs = await Promise.all(engines.map((e, i) => e.mknod(ROOT_INO, Buffer.from(`client-${i}`), { mode: S_IFDIR | 0o755, uid: 0, gid: 0 }, now())));
    const began = process.hrtime.bigint();
    await Promise.all(engines.map((e, i) => rounds(e, dirs[i].ino)));
    const secondsTaken = Number(process.hrtime.bigint() - began) / 1e9;
    return (clients * ROUNDS * OPS_PER_ROUND) / secondsTaken;
  } finally {
    for (const e of engines.reverse()) await e.close();
  }
}

/** The mixed workload of one client in directory `dir`, its last changes committed. */
async function rounds(e: MetaEngine, dir: number): Promise<void> {
  const file = { mode: S_IFREG | 0o644, uid: 0, gid: 0 };
  for (let i = 0; i < ROUNDS; i++) {
    const name = Buffer.from(`f${i}`);
    const renamed = Buffer.from(`g${i}`);
    const made = await e.mknod(dir, name, file, now());
    await e.lookup(dir, name);
    await e.setattr(made.ino, { size: i });
    await e.rename(dir, name, dir, renamed, 0, now());
    await e.unlink(dir, renamed, now());
  }
  await e.commitGroup();
}

function now(): { s: number; ns: number } {
  const ms = Date.now();
  return { s: Math.floor(ms / 1000), ns: (ms % 1000) * 1e6 };
}

export function printPostgres(r: PgBench): void {
  const sec = (n: number) => n.toFixed(2).padStart(9);
  console.log(`\nmetadata engines (corpus of ${r.corpusEntries} entries)       tar x     find`);
  const label: Record<SmallFilesVolume, string> = { sqlite: 'sqlite', postgres: 'postgres', 'postgres-shared': 'postgres, shared (local: remote)' };
  for (const v of SMALL_FILES_VOLUMES) {
    console.log(`${`pogfs on ${label[v]}`.padEnd(46)}${sec(r.smallFiles[v].tarSeconds)}${sec(r.smallFiles[v].findSeconds)}`);
  }
  const ratio = (v: SmallFilesVolume, of: 'tarSeconds' | 'findSeconds') => `${(r.smallFiles[v][of] / r.smallFiles.sqlite[of]).toFixed(2)}x`.padStart(9);
  console.log(`${'postgres / sqlite'.padEnd(46)}${ratio('postgres', 'tarSeconds')}${ratio('postgres', 'findSeconds')}`);
  console.log(`${'postgres, shared / sqlite'.padEnd(46)}${ratio('postgres-shared', 'tarSeconds')}${ratio('postgres-shared', 'findSeconds')}`);
  console.log('(seconds; find after a remount and drop_caches)\n');
  console.log(`metadata operations per second (mknod, lookup, setattr, rename, unlink; ${ROUNDS} rounds per client)`);
  console.log(`${''.padEnd(12)}${'1 client'.padStart(12)}${'2 clients'.padStart(12)}`);
  for (const engine of ['sqlite', 'postgres'] as const) {
    const cell = (clients: number) => (r.opsPerSecond.find((x) => x.engine === engine && x.clients === clients)?.opsPerSecond ?? 0).toFixed(0).padStart(12);
    console.log(`${engine.padEnd(12)}${cell(1)}${cell(2)}`);
  }
  console.log('');
}
