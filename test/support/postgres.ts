/**
 * A real PostgreSQL server for a test file: Debian's `postgresql` package (installed by
 * scripts/install-system-deps.sh), `initdb` into a scratch directory, listening only on a
 * Unix socket in that directory (no TCP port to collide with anything), stopped and
 * deleted after the test file, also when it fails or exits early. The benchmark starts
 * one the same way (launchPostgres, in a directory of its own).
 *
 * PostgreSQL refuses to run as root: under root its programs run as the `postgres` system
 * user (which the package creates), and the scratch directory is handed to that user.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { tempDir } from './tmp';

export interface PostgresServer {
  /** The directory holding the server's Unix socket. */
  socketDir: string;
  /** The superuser the tests connect as (trust authentication, socket only). */
  user: string;
  /** A `postgres://` URL of the database `name` on this server. */
  url(name: string): string;
  /** Creates a new, empty database and returns its URL. */
  createDatabase(): string;
  /** Stops the server now, at once, as a crash would (it is also stopped after the test file). */
  stop(): void;
  /** Starts the stopped server again, on the same data and socket; returns once it accepts connections. */
  start(): void;
  /** Stops the server as an administrator does (`pg_ctl restart -m fast`: sessions are ended, commits flushed) and starts it again. */
  restart(): void;
}

/** The newest installed PostgreSQL's programs (Debian keeps each major version apart). */
export function postgresBinDir(): string {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base)
    ? readdirSync(base)
        .filter((v) => /^\d+(\.\d+)?$/.test(v) && existsSync(join(base, v, 'bin', 'initdb')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) throw new Error(`no PostgreSQL server under ${base}: install the postgresql package (scripts/install-system-deps.sh)`);
  return join(base, versions[0], 'bin');
}

const asRoot = (): boolean => process.getuid?.() === 0;

/** Runs a PostgreSQL program, as the postgres user when we are root; throws with its output on failure. */
function runPg(bin: string, program: string, args: string[], timeout = 60_000): SpawnSyncReturns<string> {
  const cmd = asRoot() ? ['runuser', '-u', 'postgres', '--', join(bin, program), ...args] : [join(bin, program), ...args];
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout });
  if (r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  return r;
}

let databases = 0;

/**
 * Starts a server for the current test file (call it at the top of the file: it is
 * stopped after the file); `settings` are more `-c name=value` server settings.
 */
export function startPostgres(settings: string[] = []): PostgresServer {
  const started: PostgresServer[] = [];
  const dir = tempDir('pogfs-pg-', () => started.forEach((s) => s.stop()));
  started.push(launchPostgres(dir, settings));
  return started[0];
}

/**
 * Starts a server whose data and socket live in the empty directory `dir` (the caller
 * removes it after `stop`); also stopped when the process exits.
 */
export function launchPostgres(dir: string, settings: string[] = []): PostgresServer {
  const bin = postgresBinDir();
  let running = false;
  const stop = (): void => {
    if (!running) return;
    running = false;
    try {
      runPg(bin, 'pg_ctl', ['stop', '-D', data, '-m', 'immediate', '-w'], 30_000);
    } catch (err) {
      process.stderr.write(`${(err as Error).message}\n`);
    }
  };
  const data = join(dir, 'data');
  const socketDir = join(dir, 'run');
  mkdirSync(socketDir);
  if (asRoot()) {
    const pgUser = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const pgGroup = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    if (pgUser.status !== 0) throw new Error('running as root needs the postgres system user (the postgresql package creates it)');
    for (const d of [dir, socketDir]) chownSync(d, Number(pgUser.stdout), Number(pgGroup.stdout));
  }
  const user = 'postgres';
  // --no-sync: the cluster is thrown away after the file; trust on the socket only.
  runPg(bin, 'initdb', ['-D', data, '-U', user, '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C', '--no-instructions']);
  const serverOptions = [
    `-k ${socketDir}`,
    "-c listen_addresses=''",
    '-c max_connections=200',
    '-c shared_buffers=32MB',
    // Short, so a deadlock the engine retries costs little time in the tests.
    '-c deadlock_timeout=100ms',
    ...settings.map((s) => `-c ${s}`),
  ].join(' ');
  const log = join(dir, 'server.log');
  const withLog = (err: unknown): Error => new Error(`${(err as Error).message}\n${existsSync(log) ? readFileSync(log, 'utf8') : ''}`);
  const start = (): void => {
    if (running) return;
    running = true;
    try {
      runPg(bin, 'pg_ctl', ['start', '-D', data, '-l', log, '-w', '-t', '60', '-o', serverOptions]);
    } catch (err) {
      throw withLog(err);
    }
  };
  start();
  // A test process killed outright still stops its server on the way out.
  process.once('exit', stop);

  const url = (name: string): string => `postgres://${user}@localhost/${name}?host=${encodeURIComponent(socketDir)}`;
  return {
    socketDir,
    user,
    url,
    createDatabase() {
      const name = `pogfs_test_${process.pid}_${++databases}`;
      runPg(bin, 'createdb', ['-h', socketDir, '-U', user, name]);
      return url(name);
    },
    stop,
    start,
    restart() {
      try {
        runPg(bin, 'pg_ctl', ['restart', '-D', data, '-l', log, '-m', 'fast', '-w', '-t', '60', '-o', serverOptions]);
      } catch (err) {
        throw withLog(err);
      }
    },
  };
}

/** The rows one query returns, on a connection of its own to `url` (a `postgres://` URL). */
export async function queryPostgres(url: string, text: string): Promise<Record<string, unknown>[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(text)).rows as Record<string, unknown>[];
  } finally {
    await c.end();
  }
}

/** How many rows inode `ino` has in the PostgreSQL volume at `url`: its inode row, its block rows and its open records. */
export async function inodeRowCounts(url: string, ino: number): Promise<{ inode: number; blocks: number; opens: number }> {
  const r = await queryPostgres(
    url,
    `SELECT (SELECT count(*) FROM inodes WHERE ino = ${ino})::int AS inode, (SELECT count(*) FROM blocks WHERE ino = ${ino})::int AS blocks,
            (SELECT count(*) FROM session_opens WHERE ino = ${ino})::int AS opens`,
  );
  return r[0] as { inode: number; blocks: number; opens: number };
}
