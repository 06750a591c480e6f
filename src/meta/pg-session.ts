import { Pool, types as pgTypes, type PoolClient } from 'pg';

/** How often a change is tried when PostgreSQL reports a conflict with another client. */
const MAX_ATTEMPTS = 20;

/** PostgreSQL's SQLSTATEs for "try the transaction again": serialization failure, deadlock. */
const RETRYABLE = new Set(['40001', '40P01']);

/** Connections per client: reads run in parallel, changes one at a time (see PgSession). */
const POOL_SIZE = 4;

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
 * Commits are asynchronous (synchronous_commit = off): committed and visible to every
 * client at once, on disk within PostgreSQL's WAL writer delay (200 ms), which is its own
 * group commit; `barrier` commits synchronously, which flushes the WAL past every earlier
 * commit.
 */
export class PgSession {
  readonly pool: Pool;
  private lastChange: Promise<unknown> = Promise.resolve();

  constructor(connectionString: string, options: { readOnly?: boolean }) {
    this.pool = new Pool({
      connectionString,
      max: POOL_SIZE,
      types: typeParsers,
      options: `-c synchronous_commit=off${options.readOnly ? ' -c default_transaction_read_only=on' : ''}`,
      application_name: 'pogfs',
    });
    // An idle connection the server closed (a restart) is dropped by the pool; the next
    // operation connects again. Without a listener the error would end the process.
    this.pool.on('error', () => undefined);
  }

  /** Resolves once the changes called so far have committed (or failed). */
  async settled(): Promise<void> {
    await this.lastChange;
  }

  /** Runs `fn` as one transaction after the changes called before it, again on a conflict. */
  change<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    return this.inOrder(() => this.attempts(fn));
  }

  /** Runs a change that is one statement (atomic on its own) after the changes called before it. */
  changeStatement<T>(fn: (pool: Pool) => Promise<T>): Promise<T> {
    return this.inOrder(() => fn(this.pool));
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

  private async attempts<T>(fn: (c: PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const client = await this.pool.connect();
      let broken: Error | undefined;
      try {
        await client.query('BEGIN');
        const result = await fn(client);
        await client.query('COMMIT');
        return result;
      } catch (err) {
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
