import { Pool, types as pgTypes, type PoolClient, type QueryResult } from 'pg';
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
function isConnectionFailure(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (code.startsWith('08') || CONNECTION_STATES.has(code) || SOCKET_CODES.has(code))) return true;
  return code === undefined && LOST_MESSAGES.test(err.message);
}

/** Every change's BEGIN: its transaction id, and the start time of the server running it. */
const BEGIN = 'BEGIN; SELECT txid_current() AS xid, pg_postmaster_start_time()::text AS server';

/**
 * A check every change makes in its transaction before running (a mount session's hold on
 * the volume, see pg-mount-session.ts): `expression` is one more column of the BEGIN's
 * SELECT, in the same round trip, named `held`; when it is false, `refused` is called and
 * its error is the change's answer (EIO), and the change is not run.
 */
export interface ChangeGuard {
  expression: string;
  refused(): Error;
}

/** txid_status of an id the server has not given out ("in the future"). */
const INVALID_PARAMETER = '22023';

/** Options of a PgSession. */
export interface PgSessionOptions {
  readOnly?: boolean;
  /** How long to try to reach the server again before EIO (RECONNECT_WAIT_MS; shorter only in tests). */
  reconnectWaitMs?: number;
  /** Where to say that the server was lost and found again (default: stderr). */
  warn?: (msg: string) => void;
}

/**
 * The connection failed after a COMMIT was sent and before its reply: the transaction
 * `xid` may have committed, with `result` its answer; PgSession asks the server which.
 */
class CommitUnknown<T> extends Error {
  constructor(
    readonly failure: Error,
    readonly commit: CommitId,
    readonly result: T,
  ) {
    super(`the connection to PostgreSQL failed while a change was committing (${failure.message})`);
  }
}

/** A transaction, by its id and the start time of the server (its incarnation) that ran it. */
interface CommitId {
  xid: number;
  server: string;
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
 * server rolled it back, nothing of it happened. When the connection failed after the
 * COMMIT was sent and before its reply came, the transaction's id (taken with its BEGIN,
 * in the same round trip) says what happened: once connected again, txid_status answers
 * committed (the change is done: its answer, computed before the COMMIT, is returned),
 * aborted (it is run again), or nothing (the id is too old to know: EIO for that call).
 * So no change is ever done twice (a second create would say EEXIST to its own file, a
 * second free would return no blocks and leak them) nor answered wrongly.
 *
 * Commits are asynchronous (synchronous_commit = off): committed and visible to every
 * client at once, on disk within PostgreSQL's WAL writer delay (200 ms), which is its own
 * group commit; `barrier` commits synchronously, which flushes the WAL past every earlier
 * commit. A restart keeps every commit (a shutdown flushes the WAL); a crash of the server
 * loses the commits its WAL writer had not written yet, and a barrier after it would flush
 * nothing of them. So the first change after a connection failed or the server started
 * again since this client's last change committed asks whether that change survived: its transaction id is past the ids
 * the server has given out since (ids of lost transactions are given out again), or
 * txid_status says it is not committed, and it was lost. Then the server lost changes
 * this client was told were made, and blocks they released could be dropped by a caller
 * trusting a barrier: from then on every barrier answers EIO (a remount starts over from
 * what the database holds), said once in the log. Only this client's own changes are
 * followed; several machines writing at once are not handled yet.
 */
export class PgSession {
  readonly pool: Pool;
  private lastChange: Promise<unknown> = Promise.resolve();
  private readonly reconnectWaitMs: number;
  /** Where the session says what it recovers from (PgSessionOptions.warn). */
  readonly warn: (msg: string) => void;
  /** Set while the server cannot be reached: said once in the log, not per operation. */
  private outage = false;
  /** The last change committed, until a later change finds the server that committed it still running. */
  private lastCommit: CommitId | undefined;
  /** The server lost changes it had acknowledged (a crash): barriers answer EIO. */
  private lostChanges = false;
  /** A connection failed since the last change committed: the next change asks whether that one survived. */
  private suspect = false;
  private guard: ChangeGuard | undefined;

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
   * Runs `fn` as one transaction after the changes called before it, again on a conflict or
   * a failed connection. `closing`, asked after `fn` succeeded, may give one more statement
   * (without parameters) to run last in the transaction, sent with its COMMIT in one round
   * trip (the change feed's notice).
   */
  change<T>(fn: (c: PoolClient) => Promise<T>, closing?: () => string | undefined): Promise<T> {
    return this.inOrder(() => this.reconnecting(() => this.attempts(fn, closing)));
  }

  /**
   * A synchronous commit: every commit before it is on disk when it returns. EIO, and
   * from then on always, when the server lost changes it had acknowledged (see the class).
   */
  barrier(statement: (c: PoolClient) => Promise<unknown>): Promise<void> {
    return this.change(async (c) => {
      if (this.lostChanges) fail(E.EIO, 'PostgreSQL lost acknowledged changes; mount the volume again');
      await c.query('SET LOCAL synchronous_commit = on');
      await statement(c);
    });
  }

  /** From now on every change first checks `guard` (see ChangeGuard). */
  guardChanges(guard: ChangeGuard): void {
    this.guard = guard;
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
   * most reconnectWaitMs; then EIO. Any other error is the operation's answer. A change
   * whose COMMIT's reply was lost is not run again before the server says it did not commit.
   */
  private async reconnecting<T>(op: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + this.reconnectWaitMs;
    let unknown: CommitUnknown<T> | undefined;
    for (let pause = RECONNECT_FIRST_PAUSE_MS; ; pause = Math.min(2 * pause, RECONNECT_MAX_PAUSE_MS)) {
      let failure: Error;
      try {
        if (unknown) {
          const status = await this.commitStatus(unknown.commit.xid);
          this.reached();
          if (status === 'committed') {
            this.lastCommit = unknown.commit;
            return unknown.result;
          }
          if (status === 'aborted') unknown = undefined; // nothing of it happened: run it again
          else if (status !== 'in progress') fail(E.EIO, `${unknown.message}; whether it took effect cannot be known`);
          // In progress: the old connection's backend has not finished yet; ask again after a pause.
          if (unknown) throw unknown.failure;
          continue;
        }
        const result = await op();
        this.reached();
        return result;
      } catch (err) {
        if (err instanceof CommitUnknown) unknown = err as CommitUnknown<T>;
        else if (!isConnectionFailure(err)) throw err;
        failure = err as Error;
      }
      this.lost(failure);
      const left = deadline - Date.now();
      if (left <= 0) fail(E.EIO, `PostgreSQL unreachable for ${Math.round(this.reconnectWaitMs / 1000)} s: ${failure.message}`);
      await new Promise((resolve) => setTimeout(resolve, Math.min(pause, left)));
    }
  }

  /** What the server says of transaction `xid`: committed, aborted, in progress, or null (too old to know). */
  private async commitStatus(xid: number, on: Pool | PoolClient = this.pool): Promise<string | null> {
    try {
      const r = await on.query('SELECT txid_status($1) AS status', [xid]);
      return (r.rows[0] as { status: string | null }).status;
    } catch (err) {
      // "in the future": a server that crashed gives out the ids of lost transactions again.
      if ((err as { code?: string }).code === INVALID_PARAMETER) return 'aborted';
      throw err;
    }
  }

  /**
   * Called at the start of each change with its transaction: when a connection failed or
   * the server started again since this client's last change committed, whether that
   * change survived (see the class). A crash of one server process makes PostgreSQL
   * start all of them again from its WAL, without a new start time, but it ends every
   * connection; a connection that was not open through a restart sees the new start time.
   */
  private async checkLastCommit(c: PoolClient, now: CommitId): Promise<void> {
    const last = this.lastCommit;
    if (!last || (last.server === now.server && !this.suspect)) return;
    this.suspect = false;
    // Ids at or past ours were given out again by the new server: ours was lost. Else no
    // change of ours ran there yet, so an id before ours is still our transaction.
    // Null: too old for the server to remember, so long on its disk.
    const status = now.xid > last.xid ? await this.commitStatus(last.xid, c) : 'aborted';
    const survived = status === 'committed' || status === null;
    this.lastCommit = undefined;
    if (survived || this.lostChanges) return;
    this.lostChanges = true;
    this.warn(
      'PostgreSQL lost changes it had acknowledged (it crashed before writing them to its disk): what this mount shows may differ from the database, and every sync now answers EIO; unmount and mount the volume again',
    );
  }

  /** Says once per outage that the server cannot be reached. */
  private lost(err: Error): void {
    this.suspect = true;
    if (this.outage) return;
    this.outage = true;
    this.warn(`lost the connection to PostgreSQL (${err.message}); operations wait up to ${Math.round(this.reconnectWaitMs / 1000)} s for it to come back`);
  }

  private reached(): void {
    if (!this.outage) return;
    this.outage = false;
    this.warn('connected to PostgreSQL again');
  }

  private async attempts<T>(fn: (c: PoolClient) => Promise<T>, closing?: () => string | undefined): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      let broken: Error | undefined;
      let commit: CommitId | undefined;
      let committing: { result: T } | undefined;
      try {
        // The transaction's id and its server's start with its BEGIN, in one round trip:
        // what a lost COMMIT reply, or a change lost in a crash, is asked about.
        const guard = this.guard;
        const begun = (await client.query(guard ? `${BEGIN}, ${guard.expression} AS held` : BEGIN)) as unknown as QueryResult[];
        const row = begun[1].rows[0] as CommitId & { held?: boolean };
        commit = { xid: row.xid, server: row.server };
        await this.checkLastCommit(client, commit);
        if (guard && row.held === false) throw guard.refused();
        const result = await fn(client);
        const last = closing?.();
        committing = { result };
        await client.query(last === undefined ? 'COMMIT' : `${last}; COMMIT`);
        this.lastCommit = commit;
        return result;
      } catch (err) {
        if (isConnectionFailure(err)) {
          broken = err as Error;
          if (committing && commit) throw new CommitUnknown(err as Error, commit, committing.result);
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
