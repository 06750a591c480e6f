/**
 * A Drive emulator in a child process, controlled over HTTP: for tests and benchmarks that
 * run a pogfs daemon against it while blocking in synchronous calls themselves (an
 * emulator in the same process would stop answering then). The methods mirror
 * DriveEmulator's, made async.
 *
 * The child never outlives its parent: it exits when its stdin pipe closes, which the
 * kernel does however the parent ends, and a parent that exits normally also sends it
 * SIGTERM on the way out. A forgotten stop() does not keep the parent alive.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { dirname, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { writeDurably } from '../../src/remote/durable-file';
import type { DriveEmulatorOptions, DriveFaults, EmulatedFile, EmulatorStats, InjectedFault, ServiceAccountKey } from './drive-emulator';
import {
  ADMIN_PATH_PREFIX,
  ADMIN_SECRET_HEADER,
  type AccessTokenBody,
  type CorruptBody,
  type EmulatorReadiness,
  type FaultsBody,
  type OAuthClientBody,
  type QuotaBody,
  type RefreshTokenBody,
  type ServiceAccountBody,
} from './drive-emulator-main';

export interface EmulatorProcessOptions extends DriveEmulatorOptions {
  /** How long start() waits for the emulator to listen before it kills it and fails (10 s by default). */
  readyTimeoutMs?: number;
}

/** How the process ended. */
export interface EmulatorExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const MAIN_SCRIPT = join(__dirname, 'drive-emulator-main.js');
const DEFAULT_READY_TIMEOUT_MS = 10_000;
/** After SIGTERM the emulator closes its sockets and removes its content; past this it is killed. */
const STOP_GRACE_MS = 5_000;
/** Admin calls are local and small, except reading a stored file; none should take this long. */
const ADMIN_TIMEOUT_MS = 60_000;
/** After a failed admin call, how long to wait for the child's exit to be seen, so the message can say it died. */
const DEATH_NOTICE_MS = 1_000;
const MAX_READY_LINE = 64 * 1024;
const STDERR_TAIL = 8 * 1024;
/** Tokens from writeAccessTokenFile outlive any test or benchmark run. */
const LONG_TOKEN_TTL_SEC = 7 * 24 * 3600;

type EmulatorChild = ChildProcessByStdio<Writable, Readable, Readable>;

/** Drive calls between two `calls()` counts, by method; the OAuth token endpoint is not Drive and is left out. */
export function driveCallsBetween(before: Record<string, number>, after: Record<string, number>): { total: number; byMethod: Record<string, number> } {
  const byMethod: Record<string, number> = {};
  let total = 0;
  for (const [method, n] of Object.entries(after)) {
    const d = n - (before[method] ?? 0);
    if (method.startsWith('oauth.') || d <= 0) continue;
    byMethod[method] = d;
    total += d;
  }
  return { total, byMethod };
}

/** Emulators still running, told to stop when this process exits without having stopped them. */
const running = new Set<EmulatorChild>();
let exitHookInstalled = false;

function stopOnExit(child: EmulatorChild): void {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // 'exit' handlers run synchronously: a signal is all there is time for. SIGTERM lets the
    // emulator remove its content; were it wedged, the closed stdin ends it anyway.
    process.on('exit', () => {
      for (const c of running) c.kill('SIGTERM');
    });
  }
  running.add(child);
  child.once('exit', () => running.delete(child));
}

/** The last few KiB a child wrote to stderr, for messages when it fails. */
class Tail {
  private text = '';
  constructor(stream: Readable) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      this.text = (this.text + chunk).slice(-STDERR_TAIL);
    });
  }
  toString(): string {
    return this.text.trim();
  }
}

export class EmulatorProcess {
  private readonly exitPromise: Promise<EmulatorExit>;
  private exitResult: EmulatorExit | undefined;

  private constructor(
    private readonly child: EmulatorChild,
    private readonly ready: EmulatorReadiness,
    private readonly stderr: Tail,
    exited: Promise<EmulatorExit>,
  ) {
    this.exitPromise = exited.then((result) => (this.exitResult = result));
  }

  /** Spawns the emulator and resolves once it listens; rejects (with its stderr) if it fails to within the timeout. */
  static async start(options: EmulatorProcessOptions = {}): Promise<EmulatorProcess> {
    const { readyTimeoutMs = DEFAULT_READY_TIMEOUT_MS, ...emulatorOptions } = options;
    const child = spawn(process.execPath, [MAIN_SCRIPT, JSON.stringify(emulatorOptions)], { stdio: ['pipe', 'pipe', 'pipe'] });
    stopOnExit(child);
    const stderr = new Tail(child.stderr);
    const exited = new Promise<EmulatorExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    // Spawn failures come as 'error', maybe without an 'exit'. The listener stays: a later
    // 'error' (a kill that failed) without one would crash this process.
    const spawnFailed = new Promise<never>((_, reject) => child.on('error', (e) => reject(new Error(`drive emulator: cannot start: ${e.message}`))));
    spawnFailed.catch(() => {});
    let ready: EmulatorReadiness;
    try {
      ready = await Promise.race([readyLine(child, stderr, exited, readyTimeoutMs), spawnFailed]);
    } catch (e) {
      child.kill('SIGKILL');
      await Promise.race([exited, spawnFailed]).catch(() => undefined);
      throw e;
    }
    // From here on only admin calls and stop() need the child; none of its handles may keep this process alive.
    child.stdout.resume();
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as unknown as Socket).unref();
    return new EmulatorProcess(child, ready, stderr, exited);
  }

  /** Drive API root URL (`driveRootUrl` of the remote settings). */
  get rootUrl(): string {
    return this.ready.rootUrl;
  }

  get tokenUrl(): string {
    return this.ready.tokenUrl;
  }

  get authUrl(): string {
    return this.ready.authUrl;
  }

  /** The id `'root'` stands for (My Drive). */
  get rootFolderId(): string {
    return this.ready.rootFolderId;
  }

  get userEmail(): string {
    return this.ready.userEmail;
  }

  /** Where the emulator keeps file content. */
  get contentDir(): string {
    return this.ready.contentDir;
  }

  get pid(): number {
    return this.ready.pid;
  }

  /** How the process ended, once it has. */
  get exit(): EmulatorExit | undefined {
    return this.exitResult;
  }

  // ---- control, as on DriveEmulator ------------------------------------------------------

  /** Changes fault settings (only the given ones; `methods: undefined` makes faults apply to every method again). */
  async setFaults(faults: Partial<DriveFaults>): Promise<void> {
    const { methods, ...rest } = faults;
    const body: FaultsBody = 'methods' in faults ? { ...rest, methods: methods ?? null } : rest;
    await this.post('faults', body);
  }

  /** Queues a one-shot fault for the next request(s) of `fault.method`. */
  async injectFault(fault: InjectedFault): Promise<void> {
    await this.post('faults/inject', fault);
  }

  /** Bytes the user may store; undefined for no limit. */
  async setStorageQuota(bytes: number | undefined): Promise<void> {
    const body: QuotaBody = { bytes: bytes ?? null };
    await this.post('quota', body);
  }

  async issueAccessToken(ttlSec?: number, scope?: string): Promise<string> {
    const body: AccessTokenBody = { ttlSec, scope };
    return stringOf(await this.postJson('access-tokens', body), 'accessToken');
  }

  /** Every access token issued so far stops working. */
  async expireAccessTokens(): Promise<void> {
    await this.post('access-tokens/expire', {});
  }

  async registerOAuthClient(clientId?: string, clientSecret?: string): Promise<{ clientId: string; clientSecret: string }> {
    const body: OAuthClientBody = { clientId, clientSecret };
    const answer = await this.postJson('oauth-clients', body);
    return { clientId: stringOf(answer, 'clientId'), clientSecret: stringOf(answer, 'clientSecret') };
  }

  /** A refresh token for a registered client, as if the user had consented. */
  async issueRefreshToken(clientId: string, scope?: string): Promise<string> {
    const body: RefreshTokenBody = { clientId, scope };
    return stringOf(await this.postJson('refresh-tokens', body), 'refreshToken');
  }

  /** A service-account key the token endpoint accepts (write it as the credentials file). */
  async createServiceAccount(name?: string): Promise<ServiceAccountKey> {
    const body: ServiceAccountBody = { name };
    const answer = await this.postJson('service-accounts', body);
    return {
      type: 'service_account',
      project_id: stringOf(answer, 'project_id'),
      private_key_id: stringOf(answer, 'private_key_id'),
      private_key: stringOf(answer, 'private_key'),
      client_email: stringOf(answer, 'client_email'),
      client_id: stringOf(answer, 'client_id'),
      token_uri: stringOf(answer, 'token_uri'),
    };
  }

  /** Calls received so far, by method (`files.create`, `upload.resumable.chunk`, `oauth.token`, ...); admin calls are not counted. */
  async calls(): Promise<Record<string, number>> {
    return countsOf(await this.getJson('calls'), 'calls');
  }

  async stats(): Promise<EmulatorStats> {
    const o = objectOf(await this.getJson('stats'), 'stats');
    return {
      bytesReceived: numberOf(o, 'bytesReceived'),
      bytesSent: numberOf(o, 'bytesSent'),
      uploadBytesPersisted: numberOf(o, 'uploadBytesPersisted'),
      faults: countsOf(o.faults, 'stats.faults'),
      maxInFlight: numberOf(o, 'maxInFlight'),
    };
  }

  /** Zeroes the byte and fault statistics (call counts stay). */
  async resetStats(): Promise<void> {
    await this.post('stats/reset', {});
  }

  /** Every stored file and folder (My Drive itself excluded). */
  async storedFiles(): Promise<EmulatedFile[]> {
    const answer = await this.getJson('files');
    if (!Array.isArray(answer)) throw new Error('drive emulator: files answer is not a list');
    return answer.map((value) => {
      const f = objectOf(value, 'stored file');
      const parents = f.parents;
      if (!Array.isArray(parents) || !parents.every((p): p is string => typeof p === 'string')) throw new Error('drive emulator: a stored file without parents');
      if (typeof f.trashed !== 'boolean') throw new Error('drive emulator: a stored file without trashed');
      return {
        id: stringOf(f, 'id'),
        name: stringOf(f, 'name'),
        mimeType: stringOf(f, 'mimeType'),
        parents,
        trashed: f.trashed,
        size: numberOf(f, 'size'),
        // Folders have none: JSON drops the undefined.
        md5Checksum: f.md5Checksum === undefined ? undefined : stringOf(f, 'md5Checksum'),
        createdTime: stringOf(f, 'createdTime'),
        modifiedTime: stringOf(f, 'modifiedTime'),
        version: numberOf(f, 'version'),
        headRevisionId: f.headRevisionId === undefined ? undefined : stringOf(f, 'headRevisionId'),
        shortcutTargetId: f.shortcutTargetId === undefined ? undefined : stringOf(f, 'shortcutTargetId'),
        driveId: f.driveId === undefined ? undefined : stringOf(f, 'driveId'),
      };
    });
  }

  /** The bytes stored for file `id`. */
  async readStoredFile(id: string): Promise<Buffer> {
    const res = await this.request('GET', `files/${encodeURIComponent(id)}/content`, undefined);
    return Buffer.from(await res.arrayBuffer());
  }

  /** Flips `length` bytes at `offset` of a stored file in place; its md5Checksum stays, as with silent corruption. */
  async corruptStoredFile(id: string, offset = 0, length = 1): Promise<void> {
    const body: CorruptBody = { offset, length };
    await this.post(`files/${encodeURIComponent(id)}/corrupt`, body);
  }

  /**
   * Issues an access token that lasts a week and writes it as a credentials file (mode 0600,
   * replaced atomically, so a daemon re-reading it after a 401 never sees half a file).
   * Call it again after expireAccessTokens() to hand a daemon a working token. Returns the token.
   */
  async writeAccessTokenFile(path: string): Promise<string> {
    const token = await this.issueAccessToken(LONG_TOKEN_TTL_SEC);
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await writeDurably(path, `${JSON.stringify({ access_token: token })}\n`, 0o600);
    return token;
  }

  /** Stops the emulator (SIGTERM; SIGKILL if it has not exited within 5 s) and resolves once it has exited. Idempotent. */
  async stop(): Promise<EmulatorExit> {
    if (this.exitResult) return this.exitResult;
    // Waiting for the exit must keep this process alive, or it could end with stop() pending.
    this.child.ref();
    const escalate = setTimeout(() => this.child.kill('SIGKILL'), STOP_GRACE_MS);
    this.child.kill('SIGTERM');
    try {
      return await this.exitPromise;
    } finally {
      clearTimeout(escalate);
      this.child.stdin.destroy();
    }
  }

  // ---- HTTP ----------------------------------------------------------------------------

  private async post(path: string, body: object): Promise<void> {
    await (await this.request('POST', path, body)).arrayBuffer();
  }

  private async postJson(path: string, body: object): Promise<unknown> {
    return (await this.request('POST', path, body)).json() as Promise<unknown>;
  }

  private async getJson(path: string): Promise<unknown> {
    return (await this.request('GET', path, undefined)).json() as Promise<unknown>;
  }

  private async request(method: 'GET' | 'POST', path: string, body: object | undefined): Promise<Response> {
    const what = `drive emulator admin ${method} ${path}`;
    let res: Response;
    try {
      res = await fetch(new URL(`${ADMIN_PATH_PREFIX}${path}`, this.ready.rootUrl), {
        method,
        headers: {
          [ADMIN_SECRET_HEADER]: this.ready.adminSecret,
          // A connection of its own per call, never one kept alive from an earlier call. The
          // emulator closes idle connections after 60 s of real time, but undici's keep-alive
          // clock only advances while this process's event loop runs (a tick adds 499 ms),
          // and tests spend minutes blocked in spawnSync and synchronous writes to a mount:
          // a pooled connection the server has closed, or is closing just then, would be
          // reused and the call fail with UND_ERR_SOCKET.
          connection: 'close',
          ...(body ? { 'content-type': 'application/json' } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(ADMIN_TIMEOUT_MS),
      });
    } catch (e) {
      const cause = (e as { cause?: { code?: unknown } }).cause?.code;
      // A dying emulator drops its connections before its 'exit' reaches us: wait a moment for it, or the message would not say why.
      if (!this.exitResult) await Promise.race([this.exitPromise, new Promise((resolve) => setTimeout(resolve, DEATH_NOTICE_MS).unref())]);
      throw new Error(`${what}: ${typeof cause === 'string' ? cause : (e as Error).message}${this.deathNote()}`);
    }
    if (!res.ok) {
      const text = await res.text();
      let reason = text.slice(0, 500);
      try {
        const error = (JSON.parse(text) as { error?: unknown }).error;
        if (typeof error === 'string') reason = error;
      } catch {
        // not JSON: the text itself says it
      }
      throw new Error(`${what}: HTTP ${res.status}: ${reason}`);
    }
    return res;
  }

  /** Why an admin call found nobody listening, when the emulator has died. */
  private deathNote(): string {
    const exit = this.exitResult;
    if (!exit) return '';
    const stderr = this.stderr.toString();
    return ` (the emulator exited with ${exit.signal ?? `code ${exit.code}`}${stderr ? `: ${stderr}` : ''})`;
  }
}

/** The ready line from the child's stdout, or a rejection saying why it never came. */
function readyLine(child: EmulatorChild, stderr: Tail, exited: Promise<EmulatorExit>, timeoutMs: number): Promise<EmulatorReadiness> {
  return new Promise<EmulatorReadiness>((resolve, reject) => {
    let text = '';
    const fail = (why: string) => {
      cleanUp();
      const log = stderr.toString();
      reject(new Error(`drive emulator did not start: ${why}${log ? `\n${log}` : ''}`));
    };
    const onData = (chunk: Buffer) => {
      text += chunk.toString('utf8');
      const newline = text.indexOf('\n');
      if (newline < 0) {
        if (text.length > MAX_READY_LINE) fail('its first line on stdout is too long');
        return;
      }
      cleanUp();
      try {
        resolve(parseReadiness(text.slice(0, newline)));
      } catch (e) {
        reject(e as Error);
      }
    };
    const timer = setTimeout(() => fail(`not ready within ${timeoutMs} ms`), timeoutMs);
    let done = false;
    const cleanUp = () => {
      done = true;
      clearTimeout(timer);
      child.stdout.off('data', onData);
    };
    child.stdout.on('data', onData);
    // Give stderr a moment to arrive before the message quotes it.
    void exited.then(({ code, signal }) =>
      setTimeout(() => {
        if (!done) fail(`it exited with ${signal ?? `code ${code}`}`);
      }, 50),
    );
  });
}

function parseReadiness(line: string): EmulatorReadiness {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`drive emulator: its ready line is not JSON: ${line.slice(0, 200)}`);
  }
  const o = objectOf(value, 'ready line');
  return {
    pid: numberOf(o, 'pid'),
    port: numberOf(o, 'port'),
    rootUrl: stringOf(o, 'rootUrl'),
    tokenUrl: stringOf(o, 'tokenUrl'),
    authUrl: stringOf(o, 'authUrl'),
    rootFolderId: stringOf(o, 'rootFolderId'),
    userEmail: stringOf(o, 'userEmail'),
    contentDir: stringOf(o, 'contentDir'),
    adminSecret: stringOf(o, 'adminSecret'),
  };
}

// ---- checking answers -----------------------------------------------------------------

function objectOf(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`drive emulator: ${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

function stringOf(value: unknown, key: string): string {
  const v = objectOf(value, 'answer')[key];
  if (typeof v !== 'string') throw new Error(`drive emulator: answer without ${key}`);
  return v;
}

function numberOf(o: Record<string, unknown>, key: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`drive emulator: answer without ${key}`);
  return v;
}

function countsOf(value: unknown, what: string): Record<string, number> {
  const o = objectOf(value, what);
  for (const key of Object.keys(o)) numberOf(o, key);
  return o as Record<string, number>;
}
