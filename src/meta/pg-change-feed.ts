import { randomBytes } from 'node:crypto';
import { Client, type Notification } from 'pg';
import type { ExternalChange } from './engine';

/**
 * The PostgreSQL engine's change feed: every change transaction says what it changed with
 * NOTIFY on one channel, inside the transaction, so PostgreSQL delivers it at commit, in
 * commit order, and never for a change rolled back. Every other client of the database
 * LISTENs (PgChangeFeed) and drops what it holds of those inodes and names.
 *
 * A notice's payload is JSON: `{"c": client, "i": [inodes], "e": [[parent, name], …]}`
 * (names in base64: they are bytes); a change that does not fit PostgreSQL's 8000-byte
 * payload says it in several notices, and one too large for MAX_NOTICES of them publishes
 * `{"c": client, "all": 1}` instead: everything may have changed.
 */

export const CHANGE_CHANNEL = 'pogfs_changes';

/** PostgreSQL refuses a payload of 8000 bytes or more. */
const PAYLOAD_MAX = 7999;
/** Notices one change may publish (about 128 KiB: some 16,000 inodes, or 350 long names); more is "everything". */
const MAX_NOTICES = 16;

/** A short random name for one client (one engine), so it can skip its own notices. */
export function newClientId(): string {
  return randomBytes(9).toString('base64url');
}

/** What one change transaction changed, collected while it runs. */
export class ChangeNotice {
  private readonly inodes = new Set<number>();
  private readonly entries = new Map<string, [number, Buffer]>();

  /** The inode's attributes, names (its link count), content or xattrs changed. */
  inode(...inos: number[]): void {
    for (const ino of inos) this.inodes.add(ino);
  }

  /** The name `name` in `parent` was added, removed or now names another inode. */
  entry(parent: number, name: Buffer): void {
    this.entries.set(`${parent}/${name.toString('base64')}`, [parent, name]);
  }

  /**
   * The payloads to publish for client `client` (none when nothing changed): as many as
   * PostgreSQL's payload limit takes (a commit round of many files names many inodes), up
   * to MAX_NOTICES; past that, one "everything may have changed".
   */
  payloads(client: string): string[] {
    if (this.inodes.size === 0 && this.entries.size === 0) return [];
    const head = `{"c":${JSON.stringify(client)},"i":[`;
    const notices: string[] = [];
    let inodes: string[] = [];
    let entries: string[] = [];
    let length = head.length + '],"e":[]}'.length;
    const flush = (): void => {
      notices.push(`${head}${inodes.join(',')}],"e":[${entries.join(',')}]}`);
      inodes = [];
      entries = [];
      length = head.length + '],"e":[]}'.length;
    };
    const add = (kind: 'inode' | 'entry', item: string): void => {
      if (length + item.length + 1 > PAYLOAD_MAX && inodes.length + entries.length > 0) flush();
      (kind === 'inode' ? inodes : entries).push(item);
      length += item.length + 1;
    };
    for (const ino of this.inodes) add('inode', String(ino));
    for (const [parent, name] of this.entries.values()) add('entry', JSON.stringify([parent, name.toString('base64')]));
    flush();
    return notices.length <= MAX_NOTICES ? notices : [JSON.stringify({ c: client, all: 1 })];
  }

  /**
   * The statements that publish it, to send in the same round trip as the COMMIT (NOTIFY:
   * a utility statement, not planned as a SELECT of pg_notify would be); the payload holds
   * no quote or backslash (JSON of numbers and base64), quotes doubled anyway.
   */
  statement(client: string): string | undefined {
    const notices = this.payloads(client).map((p) => `NOTIFY ${CHANGE_CHANNEL}, '${p.replace(/'/g, "''")}'`);
    return notices.length === 0 ? undefined : notices.join('; ');
  }
}

/**
 * A notice's payload as the change it announces; undefined for the client's own. A payload
 * this version cannot read is taken as "everything may have changed" (never as nothing).
 */
export function parseNotice(payload: string, self: string): ExternalChange | undefined {
  let v: { c?: unknown; i?: unknown; e?: unknown; all?: unknown };
  try {
    v = JSON.parse(payload) as typeof v;
  } catch {
    return { kind: 'everything', reason: 'a change notice that cannot be read' };
  }
  if (v.c === self) return undefined;
  if (v.all) return { kind: 'everything', reason: 'a change too large to list' };
  const inodes = Array.isArray(v.i) ? v.i.filter((x): x is number => Number.isSafeInteger(x)) : undefined;
  const entries: Array<[number, Buffer]> = [];
  if (inodes && Array.isArray(v.e)) {
    for (const x of v.e as unknown[]) {
      if (!Array.isArray(x) || !Number.isSafeInteger(x[0]) || typeof x[1] !== 'string') return { kind: 'everything', reason: 'a change notice that cannot be read' };
      entries.push([x[0] as number, Buffer.from(x[1], 'base64')]);
    }
    return { kind: 'names', inodes, entries };
  }
  return { kind: 'everything', reason: 'a change notice that cannot be read' };
}

/** The first and the longest pause between two tries to connect the feed again. */
const FIRST_PAUSE_MS = 50;
const MAX_PAUSE_MS = 1_000;

/**
 * One connection that LISTENs to the change channel and hands on other clients' notices.
 * A lost connection (a restart of the server, a dropped network) is connected again with
 * growing pauses, for as long as the feed is open; what was published meanwhile is lost,
 * so once it listens again it hands on "everything may have changed". So does a first
 * connection that failed and then succeeded: the caller went on meanwhile.
 */
export class PgChangeFeed {
  private client: Client | undefined;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  /** Resolves after the first try to listen: listening from then on, or trying again in the background. */
  readonly ready: Promise<void>;

  constructor(
    private readonly connectionString: string,
    private readonly self: string,
    private readonly onChange: (change: ExternalChange) => void,
  ) {
    this.ready = this.connect(FIRST_PAUSE_MS, false);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const c = this.client;
    this.client = undefined;
    await c?.end().catch(() => undefined);
  }

  /** Connects and listens; on failure tries again after `pause`. `again`: anything may have been missed. */
  private async connect(pause: number, again: boolean): Promise<void> {
    if (this.closed) return;
    const c = new Client({ connectionString: this.connectionString, application_name: 'pogfs-feed', keepAlive: true, connectionTimeoutMillis: 10_000 });
    let listening = false;
    let lost = false;
    const onLost = (): void => {
      if (lost) return;
      lost = true;
      if (this.client === c) this.client = undefined;
      c.end().catch(() => undefined);
      // Lost while listening: from the shortest pause (a failed try is retried by connect).
      if (listening && !this.closed) this.later(FIRST_PAUSE_MS);
    };
    // Without an 'error' listener a connection the server ends would end the process.
    c.on('error', onLost);
    c.on('end', onLost);
    c.on('notification', (n: Notification) => {
      if (n.channel !== CHANGE_CHANNEL || n.payload === undefined) return;
      const change = parseNotice(n.payload, this.self);
      if (change) this.onChange(change);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${CHANGE_CHANNEL}`);
    } catch {
      onLost();
      if (!this.closed) this.later(pause);
      return;
    }
    if (lost) {
      if (!this.closed) this.later(pause);
      return;
    }
    if (this.closed) {
      await c.end().catch(() => undefined);
      return;
    }
    listening = true;
    this.client = c;
    if (again) this.onChange({ kind: 'everything', reason: 'the change feed lost its connection' });
  }

  /** Tries to connect again after `pause` ms (a failure then waits twice as long, up to MAX_PAUSE_MS). */
  private later(pause: number): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.connect(Math.min(2 * pause, MAX_PAUSE_MS), true), pause);
    this.retry.unref();
  }
}
