/**
 * The Drive emulator in a process of its own, for tests and benchmarks whose own process
 * blocks (a synchronous `cp` or `diff` while a pogfs daemon talks to Drive): an emulator
 * inside such a process would stop answering and deadlock the daemon.
 *
 *   node dist/test/support/drive-emulator-main.js ['{"seed": 3, "faults": {"latencyMs": 20}}']
 *
 * Options are one JSON object (DriveEmulatorOptions), from the argument or else from the
 * environment variable POGFS_DRIVE_EMULATOR_OPTIONS. The emulator listens on 127.0.0.1,
 * port 0, and prints one JSON line on stdout once it does (EmulatorReadiness: port, URLs
 * and a fresh admin secret). It is then controlled through the admin API under
 * `/__emulator/` on the same port, every request carrying the secret in the
 * `x-emulator-secret` header.
 *
 * It exits, removing its content directory unless one was given, on SIGTERM or SIGINT
 * and when its stdin reaches end-of-file. The parent holds the only writing end of that
 * pipe, and the kernel closes it however the parent ends (SIGKILL and crashes included),
 * so an emulator never outlives the test that started it.
 *
 * Exit codes: 0 after a clean stop, 1 after an internal error, 2 for bad options.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  DriveEmulator,
  FOLDER_MIME,
  type ControlHandler,
  type DriveEmulatorOptions,
  type DriveFaults,
  type EmulatedFile,
  type ErrorFault,
  type FaultKind,
  type InjectedFault,
} from './drive-emulator';

/** Where the admin API lives on the emulator's port. */
export const ADMIN_PATH_PREFIX = '/__emulator/';
/** The header that carries the admin secret. */
export const ADMIN_SECRET_HEADER = 'x-emulator-secret';
/** Options are read from here when there is no argument. */
export const OPTIONS_ENV = 'POGFS_DRIVE_EMULATOR_OPTIONS';

/** The line printed on stdout once the emulator listens. */
export interface EmulatorReadiness {
  pid: number;
  port: number;
  rootUrl: string;
  tokenUrl: string;
  authUrl: string;
  /** The id `'root'` stands for (My Drive). */
  rootFolderId: string;
  userEmail: string;
  /** Where file content lives (removed at exit unless it was given as `dir`). */
  contentDir: string;
  /** Goes in the `x-emulator-secret` header of every admin request. */
  adminSecret: string;
}

// ---- request bodies of the admin API (JSON has no `undefined`: `null` stands for it) ---

/** POST faults: the fields of `setFaults` to change; `methods: null` makes faults apply to every method again. */
export type FaultsBody = Omit<Partial<DriveFaults>, 'methods'> & { methods?: string[] | null };
/** POST quota: `bytes: null` removes the quota. */
export interface QuotaBody {
  bytes: number | null;
}
export interface AccessTokenBody {
  ttlSec?: number;
  scope?: string;
}
export interface OAuthClientBody {
  clientId?: string;
  clientSecret?: string;
}
export interface RefreshTokenBody {
  clientId: string;
  scope?: string;
}
export interface ServiceAccountBody {
  name?: string;
}
export interface CorruptBody {
  offset?: number;
  length?: number;
}

/** A request the admin API refuses as malformed (400) or about something absent (404). */
class AdminRefusal extends Error {
  constructor(
    readonly status: 400 | 404,
    message: string,
  ) {
    super(message);
  }
}

const MAX_ADMIN_BODY = 64 * 1024;
/** setTimeout takes at most 2^31-1 ms; anything longer would fire at once. */
const MAX_LATENCY_MS = 600_000;
/** How long a stop may take before the process exits anyway (its parent may be gone and nobody waits). */
const STOP_DEADLINE_MS = 5_000;

// Exhaustive by type: a fault kind added to the emulator and missing here fails to compile.
const ERROR_FAULTS = { '429': 429, '500': 500, '503': 503, rateLimitExceeded: 'rateLimitExceeded', userRateLimitExceeded: 'userRateLimitExceeded' } as const satisfies Record<`${ErrorFault}`, ErrorFault>;
const FAULT_KINDS = { ...ERROR_FAULTS, reset: 'reset', truncate: 'truncate', invalidPageToken: 'invalidPageToken' } as const satisfies Record<`${FaultKind}`, FaultKind>;

// ---- checking JSON ---------------------------------------------------------------------

/** The fields of a JSON object, refusing any key not in `allowed` (a misspelt option must not pass silently). */
function fieldsOf(value: unknown, what: string, allowed: readonly string[]): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AdminRefusal(400, `${what} must be a JSON object`);
  const o = value as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !allowed.includes(k));
  if (unknown.length) throw new AdminRefusal(400, `${what}: unknown field ${unknown.join(', ')} (known: ${allowed.join(', ')})`);
  return o;
}

function numberField(o: Record<string, unknown>, key: string, what: string, range: { min: number; max?: number; integer?: boolean }): number | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  const max = range.max ?? Number.MAX_SAFE_INTEGER;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < range.min || v > max || (range.integer && !Number.isInteger(v))) {
    throw new AdminRefusal(400, `${what}.${key} must be ${range.integer ? 'an integer' : 'a number'} from ${range.min} to ${max}, not ${JSON.stringify(v)}`);
  }
  return v;
}

function stringField(o: Record<string, unknown>, key: string, what: string): string | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') throw new AdminRefusal(400, `${what}.${key} must be a non-empty string`);
  return v;
}

function oneOf<T>(table: Record<string, T>, v: unknown, what: string): T {
  const key = typeof v === 'number' || typeof v === 'string' ? String(v) : undefined;
  if (key === undefined || !Object.hasOwn(table, key)) throw new AdminRefusal(400, `${what} must be one of ${Object.keys(table).join(', ')}, not ${JSON.stringify(v)}`);
  return table[key];
}

/** Fault settings, as `setFaults` and the `faults` option take them. */
export function parseFaults(value: unknown, what = 'faults'): Partial<DriveFaults> {
  const o = fieldsOf(value, what, ['latencyMs', 'bandwidthBytesPerSec', 'errorRate', 'errorKinds', 'resetRate', 'truncateRate', 'methods']);
  const out: Partial<DriveFaults> = {};
  const latencyMs = numberField(o, 'latencyMs', what, { min: 0, max: MAX_LATENCY_MS });
  if (latencyMs !== undefined) out.latencyMs = latencyMs;
  const bandwidth = numberField(o, 'bandwidthBytesPerSec', what, { min: 0 });
  if (bandwidth !== undefined) out.bandwidthBytesPerSec = bandwidth;
  for (const key of ['errorRate', 'resetRate', 'truncateRate'] as const) {
    const rate = numberField(o, key, what, { min: 0, max: 1 });
    if (rate !== undefined) out[key] = rate;
  }
  if (o.errorKinds !== undefined) {
    if (!Array.isArray(o.errorKinds)) throw new AdminRefusal(400, `${what}.errorKinds must be an array`);
    out.errorKinds = o.errorKinds.map((k) => oneOf<ErrorFault>(ERROR_FAULTS, k, `${what}.errorKinds[]`));
  }
  if (o.methods === null) {
    out.methods = undefined;
  } else if (o.methods !== undefined) {
    if (!Array.isArray(o.methods) || !o.methods.every((m): m is string => typeof m === 'string' && m !== '')) throw new AdminRefusal(400, `${what}.methods must be an array of method names, or null for all`);
    out.methods = o.methods;
  }
  return out;
}

function parseInjectedFault(value: unknown): InjectedFault {
  const what = 'injected fault';
  const o = fieldsOf(value, what, ['method', 'fault', 'afterBytes', 'count']);
  const method = stringField(o, 'method', what);
  if (method === undefined) throw new AdminRefusal(400, `${what}.method is required (e.g. files.get, upload.resumable.chunk)`);
  return {
    method,
    fault: oneOf<FaultKind>(FAULT_KINDS, o.fault, `${what}.fault`),
    afterBytes: numberField(o, 'afterBytes', what, { min: 0, integer: true }),
    count: numberField(o, 'count', what, { min: 1, max: 1000, integer: true }),
  };
}

/** The process's options from JSON text; `source` names where the text came from, for messages. */
export function parseOptions(text: string, source: string): DriveEmulatorOptions {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new AdminRefusal(400, `${source} is not JSON`);
  }
  const o = fieldsOf(json, source, ['dir', 'seed', 'faults', 'storageQuotaBytes', 'accessTokenTtlSec', 'maxChildrenPerFolder', 'maxPageSize', 'userEmail']);
  const options: DriveEmulatorOptions = {
    dir: stringField(o, 'dir', source),
    seed: numberField(o, 'seed', source, { min: 0, max: 2 ** 32 - 1, integer: true }),
    faults: o.faults === undefined ? undefined : parseFaults(o.faults, `${source}.faults`),
    storageQuotaBytes: o.storageQuotaBytes === null ? undefined : numberField(o, 'storageQuotaBytes', source, { min: 0, integer: true }),
    accessTokenTtlSec: numberField(o, 'accessTokenTtlSec', source, { min: 1 }),
    maxChildrenPerFolder: numberField(o, 'maxChildrenPerFolder', source, { min: 1, integer: true }),
    maxPageSize: numberField(o, 'maxPageSize', source, { min: 1, max: 1000, integer: true }),
    userEmail: stringField(o, 'userEmail', source),
  };
  // Absent means the emulator's default; an explicit undefined would override it.
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as DriveEmulatorOptions;
}

// ---- the admin API ----------------------------------------------------------------------

type AdminAnswer = { json: unknown } | { bytes: Buffer };

const NOTHING: AdminAnswer = { json: {} };
const FILE_ACTION = /^files\/([A-Za-z0-9_-]+)\/(content|corrupt)$/;

/**
 * The admin endpoints, under ADMIN_PATH_PREFIX (JSON bodies and answers unless noted):
 *
 *   POST faults                 FaultsBody: setFaults (latency and bandwidth cap included)
 *   POST faults/inject          InjectedFault: injectFault
 *   POST quota                  QuotaBody: setStorageQuota
 *   POST access-tokens          AccessTokenBody -> { accessToken }
 *   POST access-tokens/expire   expireAccessTokens
 *   POST oauth-clients          OAuthClientBody -> { clientId, clientSecret }
 *   POST refresh-tokens         RefreshTokenBody -> { refreshToken }
 *   POST service-accounts       ServiceAccountBody -> ServiceAccountKey
 *   GET  calls                  -> { method: count }
 *   GET  stats                  -> EmulatorStats
 *   POST stats/reset            resetStats
 *   GET  files                  -> EmulatedFile[] (My Drive itself excluded)
 *   GET  files/ID/content       -> the stored bytes, raw (application/octet-stream)
 *   POST files/ID/corrupt       CorruptBody: corruptStoredFile
 *
 * Refusals are `{ "error": "..." }` with 400 (malformed), 401 (no or wrong secret) or
 * 404 (no such endpoint or file).
 */
async function answerAdmin(emulator: DriveEmulator, method: string, path: string, body: unknown): Promise<AdminAnswer> {
  const route = `${method} ${path}`;
  switch (route) {
    case 'POST faults':
      emulator.setFaults(parseFaults(body));
      return NOTHING;
    case 'POST faults/inject':
      emulator.injectFault(parseInjectedFault(body));
      return NOTHING;
    case 'POST quota': {
      const o = fieldsOf(body, 'quota', ['bytes']);
      if (o.bytes === undefined) throw new AdminRefusal(400, 'quota.bytes is required (null for no quota)');
      emulator.setStorageQuota(o.bytes === null ? undefined : numberField(o, 'bytes', 'quota', { min: 0, integer: true }));
      return NOTHING;
    }
    case 'POST access-tokens': {
      const o = fieldsOf(body, 'access token', ['ttlSec', 'scope']);
      // A negative lifetime is allowed: it makes a token that is already expired.
      const ttlSec = numberField(o, 'ttlSec', 'access token', { min: -Number.MAX_SAFE_INTEGER });
      return { json: { accessToken: emulator.issueAccessToken(ttlSec, stringField(o, 'scope', 'access token')) } };
    }
    case 'POST access-tokens/expire':
      emulator.expireAccessTokens();
      return NOTHING;
    case 'POST oauth-clients': {
      const o = fieldsOf(body, 'OAuth client', ['clientId', 'clientSecret']);
      return { json: emulator.registerOAuthClient(stringField(o, 'clientId', 'OAuth client'), stringField(o, 'clientSecret', 'OAuth client')) };
    }
    case 'POST refresh-tokens': {
      const o = fieldsOf(body, 'refresh token', ['clientId', 'scope']);
      const clientId = stringField(o, 'clientId', 'refresh token');
      if (clientId === undefined) throw new AdminRefusal(400, 'refresh token.clientId is required');
      return { json: { refreshToken: emulator.issueRefreshToken(clientId, stringField(o, 'scope', 'refresh token')) } };
    }
    case 'POST service-accounts': {
      const o = fieldsOf(body, 'service account', ['name']);
      const name = stringField(o, 'name', 'service account');
      if (name !== undefined && !/^[a-z][a-z0-9-]{0,62}$/.test(name)) throw new AdminRefusal(400, 'service account.name must be lower-case letters, digits and dashes');
      return { json: emulator.createServiceAccount(name) };
    }
    case 'GET calls':
      return { json: emulator.calls() };
    case 'GET stats':
      return { json: emulator.stats() };
    case 'POST stats/reset':
      emulator.resetStats();
      return NOTHING;
    case 'GET files':
      return { json: emulator.storedFiles() };
  }
  const fileAction = FILE_ACTION.exec(path);
  if (fileAction) {
    const [, id, action] = fileAction;
    if (action === 'content' && method === 'GET') return { bytes: await emulator.readStoredFile(storedBlob(emulator, id).id) };
    if (action === 'corrupt' && method === 'POST') {
      const o = fieldsOf(body, 'corrupt', ['offset', 'length']);
      const file = storedBlob(emulator, id);
      const offset = numberField(o, 'offset', 'corrupt', { min: 0, integer: true }) ?? 0;
      const length = numberField(o, 'length', 'corrupt', { min: 1, integer: true }) ?? 1;
      if (offset + length > file.size) throw new AdminRefusal(400, `corrupt: ${offset}+${length} is past the end of the ${file.size}-byte file ${id}`);
      await emulator.corruptStoredFile(id, offset, length);
      return NOTHING;
    }
  }
  throw new AdminRefusal(404, `no admin endpoint ${route}`);
}

/** A stored file that has content (not a folder), or a refusal saying why not. */
function storedBlob(emulator: DriveEmulator, id: string): EmulatedFile {
  const file = emulator.storedFile(id);
  if (!file) throw new AdminRefusal(404, `no stored file ${id}`);
  if (file.mimeType === FOLDER_MIME) throw new AdminRefusal(400, `${id} is a folder, it has no content`);
  return file;
}

async function readAdminBody(req: IncomingMessage): Promise<unknown> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_ADMIN_BODY) throw new AdminRefusal(400, `admin request bodies are at most ${MAX_ADMIN_BODY} bytes`);
    parts.push(chunk);
  }
  const text = Buffer.concat(parts).toString('utf8');
  if (text.trim() === '') return {};
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new AdminRefusal(400, 'the admin request body is not JSON');
  }
}

function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = Buffer.from(JSON.stringify(value));
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': body.length });
  res.end(body);
}

function secretMatches(given: string | string[] | undefined, expected: Buffer): boolean {
  if (typeof given !== 'string') return false;
  const bytes = Buffer.from(given);
  return bytes.length === expected.length && timingSafeEqual(bytes, expected);
}

/** The admin API as the emulator's control handler. */
export function adminApi(emulator: DriveEmulator, secret: string): ControlHandler {
  const expected = Buffer.from(secret);
  return async (req, res, url) => {
    try {
      if (!secretMatches(req.headers[ADMIN_SECRET_HEADER], expected)) {
        sendJson(res, 401, { error: `the admin API needs the secret from the ready line in the ${ADMIN_SECRET_HEADER} header` });
        return;
      }
      const method = req.method ?? 'GET';
      const body = method === 'POST' ? await readAdminBody(req) : undefined;
      const answer = await answerAdmin(emulator, method, url.pathname.slice(ADMIN_PATH_PREFIX.length), body);
      if ('bytes' in answer) {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': answer.bytes.length });
        res.end(answer.bytes);
      } else {
        sendJson(res, 200, answer.json);
      }
    } catch (e) {
      if (res.headersSent) {
        res.destroy();
      } else if (e instanceof AdminRefusal) {
        sendJson(res, e.status, { error: e.message });
      } else {
        sendJson(res, 500, { error: `emulator: ${(e as Error).message}` });
      }
    }
  };
}

// ---- the process ------------------------------------------------------------------------

function log(message: string): void {
  process.stderr.write(`drive emulator: ${message}\n`);
}

async function main(): Promise<void> {
  // Nobody may be left to read what we write once the parent is gone: a broken pipe must not crash the clean-up.
  process.stdout.on('error', () => {});
  process.stderr.on('error', () => {});

  // Shared with the signal and stdin handlers, which may fire before the emulator exists.
  const life: { emulator: DriveEmulator | undefined; stopping: boolean; exitCode: number } = { emulator: undefined, stopping: false, exitCode: 0 };
  const closeAndExit = (emulator: DriveEmulator) =>
    emulator.close().then(
      () => process.exit(life.exitCode),
      (e: unknown) => {
        log(`close failed: ${(e as Error).message}`);
        process.exit(1);
      },
    );
  const stop = (why: string, code: number) => {
    if (life.stopping) return;
    life.stopping = true;
    life.exitCode = code;
    if (code !== 0) log(`stopping: ${why}`);
    setTimeout(() => process.exit(code || 1), STOP_DEADLINE_MS).unref();
    // Before the emulator exists, main() closes it as soon as it does.
    if (life.emulator) void closeAndExit(life.emulator);
  };

  // Watched before anything else: the parent may die while we start.
  process.stdin.on('end', () => stop('stdin closed (the parent is gone)', 0));
  process.stdin.on('error', () => stop('stdin failed (the parent is gone)', 0));
  process.stdin.resume();
  process.on('SIGTERM', () => stop('SIGTERM', 0));
  process.on('SIGINT', () => stop('SIGINT', 0));
  process.on('uncaughtException', (e) => stop(`internal error: ${e.stack ?? e.message}`, 1));
  process.on('unhandledRejection', (e) => stop(`internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`, 1));

  const args = process.argv.slice(2);
  let options: DriveEmulatorOptions;
  try {
    if (args.length > 1) throw new AdminRefusal(400, `expected at most one argument (JSON options), got ${args.length}`);
    options = args.length ? parseOptions(args[0], 'the options argument') : parseOptions(process.env[OPTIONS_ENV] ?? '{}', OPTIONS_ENV);
  } catch (e) {
    log((e as Error).message);
    process.exit(2);
  }

  const emulator = await DriveEmulator.start(options);
  life.emulator = emulator;
  if (life.stopping) {
    // The parent went away while we started.
    await closeAndExit(emulator);
    return;
  }
  const adminSecret = randomBytes(24).toString('base64url');
  emulator.mountControlApi(ADMIN_PATH_PREFIX, adminApi(emulator, adminSecret));
  const ready: EmulatorReadiness = {
    pid: process.pid,
    port: Number(new URL(emulator.rootUrl).port),
    rootUrl: emulator.rootUrl,
    tokenUrl: emulator.tokenUrl,
    authUrl: emulator.authUrl,
    rootFolderId: emulator.rootFolderId,
    userEmail: emulator.userEmail,
    contentDir: emulator.contentDir,
    adminSecret,
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
}

if (require.main === module) {
  main().catch((e: unknown) => {
    log(`failed to start: ${(e as Error).message}`);
    process.exit(1);
  });
}
