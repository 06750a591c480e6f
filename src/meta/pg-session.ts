import { Pool, types as pgTypes, type PoolClient } from 'pg';
import { E, fail } from '../posix/errors';

/** How often a change is tried when PostgreSQL reports a conflict with another client. */
const MAX_ATTEMPTS = 20;

/** PostgreSQL's SQLSTATEs for "try the transaction again": serialization failure, deadlock. */
const RETRYABLE = new Set(['40001', '40P01']);

/** Connections per client: reads run in parallel, changes one at a time (see PgSession). */
const POOL_SIZE = 4;

/**
 * How long an operation keeps trying to reach the server again after its connection
 * failed (a restart, a crash, a dropped network) before it answers EIO: long enough for a
 * restart of PostgreSQL, short enough that a server gone for good does not hang every
 * caller (and through the mount, every process touching it) without an answer.
 */
export const RECONNECT_WAIT_MS = 30_000;

/** The first and the longest pause between two tries to reach the server again. */
const RECONNECT_FIRST_PAUSE_MS = 50;
const RECONNECT_MAX_PAUSE_MS = 1_000;

/** A connection attempt that gets no answer is given up after this (and tried again, within the wait). */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * SQLSTATEs of a lost or refused connection: class 08 (connection exception), and 57P01
 * admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now (starting up, shutting down).
 */
const CONNECTION_STATES = new Set(['57P01', '57P02', '57P03']);
/** Socket errors of a server not there (ENOENT: the Unix socket file is gone while it is down). */
const SOCKET_CODES = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH']);
/** The pg client's own words for a connection that ended under it (these errors carry no code). */
const LOST_MESSAGES = /Connection terminated|not queryable|Client was closed|timeout exceeded when trying to connect|connection timeout/i;

/** Whether `err` says the connection to the server failed (not that the server refused the statement). */
export function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (code.startsWith('08') || CONNECTION_STATES.has(code) || SOCKET_CODES.has(code))) return true;
  return code === undefined && LOST_MESSAGES.test(err.message);
}

/** Options of a PgSession. */
export interface PgSessionOptions {
  readOnly?: boolean;
  /** How long to try to reach the server again before EIO (RECONNECT_WAIT_MS; shorter only in tests). */
  reconnectWaitMs?: number;
  /** Where to say that the server was lost and found again (default: stderr). */
  warn?: (msg: string) => void;
}

/** The connection failed after a COMMIT was sent and before its reply: whether it committed is unknown. */
class CommitUnknown extends Error {
  constructor(cause: Error) {
    super(`the connection to PostgreSQL failed while a change was committing (${cause.message}); whether it took effect is not known, so it is not done again`);
  }
}

/** Thrown inside a transaction whose reads before its locks were overtaken by another client: run it again. */
export class Restart extends Error {}

/**
 * int8 and numeric as JS numbers (inode numbers, sizes, times, counts, sums), not the
 * strings pg gives by default; a value past 2^53 (only the creation time in ns) as a bigint.
 */
const INT8_OID = 20;
const NUMERIC_OID = 1700;
function parseWide(text: string): number | bigint {
  const n = Number(text);
  return Number.isSafeInteger(n) || !/^-?\d+$/.test(text) ? n : BigInt(text);
}
const typeParsers = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    (oid === INT8_OID || oid === NUMERIC_OID) && format !== 'binary' ? parseWide : pgTypes.getTypeParser(oid, format)) as typeof pgTypes.getTypeParser,
};

/**
 * One client's connections to the metadata database, and the order of its changes.
 *
 * Changes run one after another in call order, each as one transaction on one connection,
 * again when PostgreSQL reports a deadlock or serialization failure or the change finds
 * that another client overtook its unlocked reads (Restart); a read waits for the changes
 * called before it. That is the SQLite engine's order (its calls complete when made):
 * without it a setattr called after a commitContent of the same file could reach the
 * server first and lose to the older times. Clients of other processes and machines meet
 * at the row locks instead.
 *
 * A failed connection (PostgreSQL restarted or crashed, the network dropped) is not an
 * answer: the operation runs again on a new connection, after a growing pause, until it
 * succeeds or RECONNECT_WAIT_MS has passed, then fails with EIO. The order of calls holds
 * through it, as the next change waits for the one reconnecting. A read runs again as it
 * is. A transaction runs again when its connection failed before its COMMIT was sent: the
 * server then rolled it back, nothing of it happened. When the connection failed after
 * the COMMIT was sent and before its reply came, whether it committed cannot be known: a
 * change declared idempotent (writing absolute values, as commitContent and setattr do)
 * runs again, which leaves the same rows either way; any other change (a create, a
 * rename, a free that returns the blocks it released) answers EIO for that one call
 * rather than risk doing it twice (a second create would say EEXIST to its own file,
 * a second free would return no blocks and leak them). The caller sees EIO, and the
 * metadata is whole either way: committed or not, never half.
 *
 * Commits are asynchronous (synchronous_commit = off): committed and visible to every
 * client at once, on disk within PostgreSQL's WAL writer delay (200 ms), which is its own
 * group commit; `barrier` commits synchronously, which flushes the WAL past every earlier
 * commit.
 */
export class PgSession {
  readonly pool: Pool;
  private lastChange: Promise<unknown> = Promise.resolve();
  private readonly reconnectWaitMs: number;
  private readonly warn: (msg: string) => void;
  /** Set while the server cannot be reached: said once in the log, not per operation. */
  private outage = false;

  constructor(connectionString: string, options: PgSessionOptions) {
    this.reconnectWaitMs = options.reconnectWaitMs ?? RECONNECT_WAIT_MS;
    this.warn = options.warn ?? ((msg) => process.stderr.write(`pogfs: ${msg}\n`));
    this.pool = new Pool({
      connectionString,
      max: POOL_SIZE,
      types: typeParsers,
      options: `-c synchronous_commit=off${options.readOnly ? ' -c default_transaction_read_only=on' : ''}`,
      application_name: 'pogfs',
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      // A peer gone without a word (a machine or a network down) is found by TCP keepalives.
      keepAlive: true,
    });
    // An idle connection the server closed (a restart) is dropped by the pool; the next
    // operation connects again. Without a listener the error would end the process.
    this.pool.on('error', (err) => this.lost(err));
    // The pool listens only to its idle connections: a connection in use that the server
    // closes between two statements would otherwise emit an 'error' nobody hears, which
    // ends the process. Its next statement fails instead, and is tried again.
    this.pool.on('connect', (client) => client.on('error', (err) => this.lost(err)));
  }

  /** Runs a read (statements that change nothing) after the changes called before it, again on a failed connection. */
  async read<T>(fn: (pool: Pool) => Promise<T>): Promise<T> {
    await this.settled();
    return this.reconnecting(() => fn(this.pool));
  }

  /** Resolves once the changes called so far have committed (or failed). */
  async settled(): Promise<void> {
    await this.lastChange;
  }

  /**
   * Runs `fn` as one transaction after the changes called before it, again on a conflict
   * or a failed connection; `idempotent`: running it twice leaves what running it once
   * does, so it runs again also when the reply to its COMMIT was lost (see the class).
   */
  change<T>(fn: (c: PoolClient) => Promise<T>, options: { idempotent?: boolean } = {}): Promise<T> {
    return this.inOrder(() => this.reconnecting(() => this.attempts(fn, options.idempotent === true)));
  }

  /**
   * Runs a change that is one statement (atomic on its own) after the changes called
   * before it. It must be idempotent: on a failed connection it runs again, whether or
   * not the server committed it.
   */
  changeStatement<T>(fn: (pool: Pool) => Promise<T>): Promise<T> {
    return this.inOrder(() => this.reconnecting(() => fn(this.pool)));
  }

  /** A synchronous commit: every commit before it is on disk when it returns. */
  barrier(statement: (c: PoolClient) => Promise<unknown>): Promise<void> {
    return this.change(async (c) => {
      await c.query('SET LOCAL synchronous_commit = on');
      await statement(c);
    });
  }

  async close(): Promise<void> {
    await this.settled();
    await this.pool.end();
  }

  private inOrder<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.lastChange.then(fn);
    this.lastChange = result.catch(() => undefined);
    return result;
  }

  /**
   * Runs `op` until it does not fail for a lost connection, with growing pauses, for at
   * most reconnectWaitMs; then EIO. Any other error is the operation's answer.
   */
  private async reconnecting<T>(op: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.reconnectWaitMs;
    for (let pause = RECONNECT_FIRST_PAUSE_MS; ; pause = Math.min(2 * pause, RECONNECT_MAX_PAUSE_MS)) {
      try {
        const result = await op();
        this.reached();
        return result;
      } catch (err) {
        if (err instanceof CommitUnknown) fail(E.EIO, err.message);
        if (!isConnectionFailure(err)) throw err;
        this.lost(err as Error);
        const left = deadline - Date.now();
        if (left <= 0) fail(E.EIO, `PostgreSQL unreachable for ${Math.round(this.reconnectWaitMs / 1000)} s: ${(err as Error).message}`);
        await new Promise((resolve) => setTimeout(resolve, Math.min(pause, left)));
      }
    }
  }

  /** Says once per outage that the server cannot be reached. */
  private lost(err: Error): void {
    if (this.outage) return;
    this.outage = true;
    this.warn(`lost the connection to PostgreSQL (${err.message}); operations wait up to ${Math.round(this.reconnectWaitMs / 1000)} s for it to come back`);
  }

  private reached(): void {
    if (!this.outage) return;
    this.outage = false;
    this.warn('connected to PostgreSQL again');
  }

  private async attempts<T>(fn: (c: PoolClient) => Promise<T>, idempotent: boolean): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      let broken: Error | undefined;
      let commitSent = false;
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        commitSent = true;
        await client.query('COMMIT');
        return result;
      } catch (err) {
        if (isConnectionFailure(err)) {
          broken = err as Error;
          if (commitSent && !idempotent) throw new CommitUnknown(err as Error);
          throw err;
        }
        await client.query('ROLLBACK').catch((e: Error) => {
          broken = e;
        });
        const retry = err instanceof Restart || RETRYABLE.has((err as { code?: string }).code ?? '');
        if (!retry || attempt >= MAX_ATTEMPTS) throw err;
      } finally {
        client.release(broken);
      }
      // A little, growing, random wait, so that two clients that collided do not collide again.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(100, 2 ** attempt)));
    }
  }
}
