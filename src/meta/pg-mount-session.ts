import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { PoolClient } from 'pg';
import { E, FsError } from '../posix/errors';
import { MetadataError } from './meta-db';
import type { PgSession } from './pg-session';

/**
 * How long a mount's session stays live after its last heartbeat. A daemon that died
 * (kill -9, a machine that lost power) holds the volume this long at most; a mount cut off
 * from PostgreSQL keeps its session this long, which is as long as PgSession waits for a
 * lost server (RECONNECT_WAIT_MS) before its operations answer EIO, so a restart of
 * PostgreSQL costs no mount its session.
 */
export const SESSION_EXPIRY_MS = 30_000;

/** Heartbeats per expiry: two may be missed (a slow server, a pause of the process) before the session expires. */
const HEARTBEATS_PER_EXPIRY = 3;

export interface MountSessionOptions {
  /** Recorded in the session row (a read-only mount is refused by a live session all the same, see PgMountSession). */
  readOnly: boolean;
  /** SESSION_EXPIRY_MS; shorter only in tests. */
  expiryMs?: number;
}

/** Another live mount holds the volume's metadata database: the mount is refused. */
export class SessionInUseError extends MetadataError {
  constructor(
    readonly host: string,
    readonly pid: number,
    readonly lastSeenMs: number,
    expiryMs: number,
  ) {
    super(
      `the metadata database is in use by a mount on host ${host} (pid ${pid}, last seen ${(lastSeenMs / 1000).toFixed(1)} s ago): unmount it there, or wait ${Math.ceil(expiryMs / 1000)} s after it stopped`,
    );
  }
}

/**
 * Whether the volume's blocks are shared through a remote (its settings name one): then
 * every mount uploads and publishes its blocks before committing rows that reference them
 * (invariant 1 across machines), so several mounts may write at once.
 */
async function sharesBlocks(c: PoolClient): Promise<boolean> {
  const r = await c.query("SELECT value FROM settings WHERE key = 'remote'");
  const remote = (r.rows[0] as { value: string } | undefined)?.value ?? '';
  return remote !== '' && remote !== 'none';
}

interface OtherSession {
  host: string;
  pid: number;
  age_ms: number;
}

/**
 * A mounted client's row in the sessions table, kept live by heartbeats.
 *
 * A volume whose blocks live only in a volume directory's own store has one live session
 * at a time: a claim made while another session is live is refused, a read-only one too
 * (it would read rows naming blocks only the other mount's store has). A volume with a
 * remote shares its blocks through it and its pack index (pg-pack-index.ts): there every
 * claim is let in beside the live ones.
 *
 * Our row can be taken away: when no heartbeat reached the server for the expiry (the
 * machine cut off, the process stopped), another mount may delete it and claim the
 * volume. From then on the other mount may be writing, so this one must not: every change
 * answers EIO (one error line in the log says why; reads go on, so what is open can still
 * be read), rather than going on writing rows as if it still held the volume. Each change
 * checks, in its BEGIN's round trip, that our row is still there and holds a key-share
 * lock on it to its commit, so a claim (which deletes the expired row) waits for a change
 * under way and no change of ours commits after another mount's claim.
 */
export class PgMountSession {
  private timer: NodeJS.Timeout | undefined;
  private lost = false;
  private beating = false;
  private heartbeatFailing = false;
  /** Set by release: a heartbeat still under way then finds no row, and must not call it taken. */
  private released = false;

  private constructor(
    private readonly session: PgSession,
    readonly id: string,
    readonly expiryMs: number,
    /** The volume shares its blocks through a remote: other sessions may be live beside this one. */
    readonly shared: boolean,
    private readonly warn: (msg: string) => void,
  ) {}

  /**
   * Claims the volume for this mount (one transaction, the table locked against other
   * claims, so of two racing mounts one wins): deletes the sessions expired by the
   * server's clock, refuses with SessionInUseError when another is live, else inserts ours;
   * then starts the heartbeats and guards every change of `session`.
   */
  static async claim(session: PgSession, options: MountSessionOptions, warn: (msg: string) => void): Promise<PgMountSession> {
    const expiryMs = options.expiryMs ?? SESSION_EXPIRY_MS;
    const id = randomUUID();
    let shared = false;
    await session.change(async (c: PoolClient) => {
      // Conflicts with itself and with row changes: claims run one at a time.
      await c.query('LOCK TABLE sessions IN SHARE ROW EXCLUSIVE MODE');
      await c.query("DELETE FROM sessions WHERE heartbeat < clock_timestamp() - $1 * interval '1 millisecond'", [expiryMs]);
      const others = await c.query(
        'SELECT host, pid, (extract(epoch FROM clock_timestamp() - heartbeat) * 1000)::float8 AS age_ms FROM sessions ORDER BY heartbeat DESC LIMIT 1',
      );
      const other = others.rows[0] as OtherSession | undefined;
      shared = await sharesBlocks(c);
      if (other && !shared) throw new SessionInUseError(other.host, other.pid, Math.max(0, other.age_ms), expiryMs);
      await c.query('INSERT INTO sessions (id, host, pid, read_only) VALUES ($1, $2, $3, $4)', [id, hostname(), process.pid, options.readOnly]);
    });
    const mount = new PgMountSession(session, id, expiryMs, shared, warn);
    session.guardChanges({
      // id is our own UUID: nothing to quote.
      expression: `EXISTS (SELECT 1 FROM sessions WHERE id = '${id}' FOR KEY SHARE)`,
      refused: () => mount.refuse(),
    });
    mount.timer = setInterval(() => void mount.heartbeat(), Math.max(1, Math.floor(expiryMs / HEARTBEATS_PER_EXPIRY)));
    mount.timer.unref();
    return mount;
  }

  /** Whether our row was taken away (changes answer EIO). */
  get taken(): boolean {
    return this.lost;
  }

  /** Updates our row's heartbeat; a failure is said once (the next success says so), never fatal. */
  async heartbeat(): Promise<void> {
    if (this.lost || this.released || this.beating) return;
    this.beating = true;
    try {
      // Outside the order of changes: a heartbeat must not wait behind them.
      const r = await this.session.pool.query('UPDATE sessions SET heartbeat = clock_timestamp() WHERE id = $1', [this.id]);
      if (this.heartbeatFailing) this.warn('the mount session heartbeat reaches PostgreSQL again');
      this.heartbeatFailing = false;
      if (r.rowCount === 0 && !this.released) this.refuse();
    } catch (err) {
      if (!this.heartbeatFailing) this.warn(`the mount session heartbeat failed (${(err as Error).message}); trying again every ${(this.expiryMs / HEARTBEATS_PER_EXPIRY / 1000).toFixed(1)} s`);
      this.heartbeatFailing = true;
    } finally {
      this.beating = false;
    }
  }

  /** Stops the heartbeats and deletes our row (a clean unmount: the next mount need not wait). */
  async release(): Promise<void> {
    this.stop();
    if (this.lost) return;
    this.released = true;
    try {
      await this.session.pool.query('DELETE FROM sessions WHERE id = $1', [this.id]);
    } catch (err) {
      // Not fatal: the row expires on its own.
      this.warn(`could not end the mount session in PostgreSQL (${(err as Error).message}); it expires within ${Math.round(this.expiryMs / 1000)} s`);
    }
  }

  /** Stops the heartbeats and leaves the row to expire (as a daemon killed would). */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Our row is gone: said once, and the error every change answers from now on. */
  private refuse(): FsError {
    if (!this.lost) {
      this.lost = true;
      this.stop();
      this.warn(
        `this mount's session in PostgreSQL expired (no heartbeat reached the server for ${Math.round(this.expiryMs / 1000)} s) and another mount may hold the volume now: every change answers EIO; unmount and mount again`,
      );
    }
    return new FsError(E.EIO, 'the mount session expired: another mount may hold the volume');
  }
}
