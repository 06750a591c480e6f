/**
 * A Google Drive v3 emulator for tests: an HTTP server on 127.0.0.1 answering the subset
 * of the API pogfs uses the way Drive does (JSON shapes, error bodies, resumable upload
 * sessions, ranged downloads, `q` queries, `fields` masks, the changes feed), plus an
 * OAuth token endpoint and an auth endpoint that skips the consent page. Faults can be
 * injected (latency, a bandwidth cap, error answers, resets, truncated bodies, a storage
 * quota) from a seeded PRNG so a run repeats.
 *
 * File content lives in files under a temp directory (tests push gigabytes through it);
 * metadata lives in memory. Every buffer and loop is bounded by a limit below.
 */
import { createHash, generateKeyPairSync, randomBytes, verify as verifySignature, type KeyObject } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const FOLDER_MIME = 'application/vnd.google-apps.folder';
export const SHORTCUT_MIME = 'application/vnd.google-apps.shortcut';
/** Resumable uploads persist data in units of 256 KiB, as Drive does. */
export const UPLOAD_UNIT = 256 * 1024;

const MAX_JSON_BODY = 1024 * 1024;
const MAX_FORM_BODY = 64 * 1024;
const MAX_MULTIPART_BODY = 32 * 1024 * 1024;
const MAX_QUERY_LENGTH = 32 * 1024;
const MAX_SESSIONS = 1000;
const MAX_CHANGES = 200_000;
const MAX_TOKENS = 10_000;
const IO_SLICE = 256 * 1024;

export type ErrorFault = 429 | 500 | 503 | 'rateLimitExceeded' | 'userRateLimitExceeded';
/** 'invalidPageToken': a listing's page token is refused (400), as when Drive forgets a listing; only hits requests that carry one. */
export type FaultKind = ErrorFault | 'reset' | 'truncate' | 'invalidPageToken';

export interface DriveFaults {
  /** Added before every Drive and OAuth request is handled. */
  latencyMs: number;
  /** Bytes per second for request bodies and, separately, response bodies; 0 = unlimited. */
  bandwidthBytesPerSec: number;
  /** Share (0..1) of Drive answers replaced by an error drawn from `errorKinds`. */
  errorRate: number;
  errorKinds: ErrorFault[];
  /** Share of Drive requests whose connection is reset mid-body (the request's if it has one, else the answer's). */
  resetRate: number;
  /** Share of Drive answers sent with their full Content-Length and then cut short. */
  truncateRate: number;
  /** Methods the random faults apply to (all Drive methods when undefined). */
  methods: string[] | undefined;
  /**
   * Share (0..1) of files.list and changes.list pages cut short (anywhere from empty to one
   * less than asked) while more remain, as Drive does: only a missing nextPageToken ends a listing.
   */
  shortPageRate: number;
}

export interface DriveEmulatorOptions {
  /** Where content files go (a fresh temp directory, removed on close, by default). */
  dir?: string;
  seed?: number;
  faults?: Partial<DriveFaults>;
  /** Bytes the user may store; unlimited when undefined. */
  storageQuotaBytes?: number;
  accessTokenTtlSec?: number;
  /** Drive's limit on the items in one folder. */
  maxChildrenPerFolder?: number;
  /** Most items one page of files.list holds, whatever pageSize asks (Drive may return fewer than asked). */
  maxPageSize?: number;
  userEmail?: string;
}

/** A one-shot fault for the next matching request, taking precedence over random faults. */
export interface InjectedFault {
  method: string;
  fault: FaultKind;
  /** For 'reset' and 'truncate': how many body bytes get through first (half the body by default). */
  afterBytes?: number;
  /** How many matching requests it hits (1 by default). */
  count?: number;
}

export interface EmulatedFile {
  id: string;
  name: string;
  mimeType: string;
  parents: string[];
  trashed: boolean;
  size: number;
  md5Checksum: string | undefined;
  createdTime: string;
  modifiedTime: string;
  version: number;
  /** Changes with every new content (absent for folders and Google-native documents). */
  headRevisionId: string | undefined;
  /** For a shortcut: the item it points at. */
  shortcutTargetId: string | undefined;
  /** Set for items in a shared drive: the drive's id. */
  driveId: string | undefined;
  /** The creating app's private properties. */
  appProperties?: Record<string, string>;
}

/** An item put straight into the emulator's store (no HTTP call, no call counted): for big synthetic Drives. */
export interface SeedItem {
  name: string;
  /** The parent folder's id ('root' or undefined: My Drive). */
  parent?: string;
  /** Default: a binary file. FOLDER_MIME for a folder, SHORTCUT_MIME with `shortcutTargetId`, any other Google type for a native document. */
  mimeType?: string;
  /** Content made up from `contentSeed`: equal seeds and sizes give equal bytes (content duplicates). */
  size?: number;
  contentSeed?: number;
  shortcutTargetId?: string;
  trashed?: boolean;
  /** ISO time; seeded items are otherwise one millisecond apart in the order given. */
  createdTime?: string;
}

/** What a direct change to a stored item does (each change is recorded in the changes feed). */
export interface ItemChange {
  name?: string;
  /** Moves the item to this folder. */
  parent?: string;
  trashed?: boolean;
  /** New synthetic content. */
  size?: number;
  contentSeed?: number;
}

export interface ServiceAccountKey {
  type: 'service_account';
  project_id: string;
  private_key_id: string;
  private_key: string;
  client_email: string;
  client_id: string;
  token_uri: string;
}

export interface EmulatorStats {
  /** Request body bytes read from clients (Drive methods only, including bytes of requests cut short). */
  bytesReceived: number;
  /** Response body bytes written to clients (Drive methods only). */
  bytesSent: number;
  /** Bytes of upload content persisted (what resumable sessions, multipart and media uploads kept). */
  uploadBytesPersisted: number;
  /** Faults that actually happened, by kind. */
  faults: Record<string, number>;
  /**
   * Most Drive requests waiting out `latencyMs` at one time: requests overlap there exactly
   * when a client has them in flight together, and the wait ends before any answer leaves,
   * so a client's next call cannot be counted with the one it followed.
   */
  maxInFlight: number;
}

interface StoredFile extends EmulatedFile {
  seq: number;
  /** Synthetic content: bytes computed from this seed instead of read from a blob file. */
  contentSeed: number | undefined;
}

/**
 * Bytes of synthetic content: one of 64 random 65521-byte patterns (seed mod 64), rotated by
 * the seed (65521 is prime, so every seed below 64 × 65521 gives different bytes), xored
 * with the pattern's round number so that no two 64 KiB stretches of a file are alike.
 */
const PATTERN_LENGTH = 65521;
const patterns = new Map<number, Buffer>();

function patternOf(seed: number): Buffer {
  const base = seed % 64;
  let p = patterns.get(base);
  if (!p) {
    const next = prng(base * 2654435761 + 17);
    p = Buffer.allocUnsafe(PATTERN_LENGTH);
    for (let i = 0; i < PATTERN_LENGTH; i++) p[i] = Math.floor(next() * 256);
    patterns.set(base, p);
  }
  return p;
}

const variants = new Map<number, Buffer>();

/** A pattern xored with a round number, kept (a few hundred of them) so streaming stays fast. */
function variantOf(base: number, p: Buffer, round: number): Buffer {
  if (round === 0) return p;
  const key = base * 256 + round;
  let v = variants.get(key);
  if (!v) {
    v = Buffer.allocUnsafe(PATTERN_LENGTH);
    for (let k = 0; k < PATTERN_LENGTH; k++) v[k] = p[k] ^ round;
    if (variants.size >= 512) variants.delete(variants.keys().next().value!);
    variants.set(key, v);
  }
  return v;
}

/** `length` bytes at `offset` of the synthetic content of `seed`. */
export function syntheticBytes(seed: number, offset: number, length: number): Buffer {
  const p = patternOf(seed);
  const shift = ((Math.floor(seed / 64) % PATTERN_LENGTH) * 977) % PATTERN_LENGTH;
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; ) {
    const at = offset + i + shift;
    const within = at % PATTERN_LENGTH;
    const round = Math.floor(at / PATTERN_LENGTH) & 0xff;
    const n = Math.min(length - i, PATTERN_LENGTH - within);
    variantOf(seed % 64, p, round).copy(out, i, within, within + n);
    i += n;
  }
  return out;
}

/** md5 of `size` bytes of synthetic content. */
export function syntheticMd5(seed: number, size: number): string {
  const hash = createHash('md5');
  const slice = 4 * 1024 * 1024;
  for (let at = 0; at < size; at += slice) hash.update(syntheticBytes(seed, at, Math.min(slice, size - at)));
  return hash.digest('hex');
}

interface UploadSession {
  id: string;
  /** Set for an update of an existing file's content. */
  fileId: string | undefined;
  metadata: FileMetadataInput;
  total: number | undefined;
  committed: number;
  hash: ReturnType<typeof createHash>;
  path: string;
  fields: string | undefined;
  lastUsed: number;
  queue: Promise<void>;
  /** Once complete, the file it made: a later status probe answers with it, as Drive does. */
  completedFileId: string | undefined;
}

interface FileMetadataInput {
  name?: string;
  mimeType?: string;
  parents?: string[];
  trashed?: boolean;
  /** Set by the client (Drive keeps what it is given, to the millisecond). */
  modifiedTime?: string;
  /** Private key/value pairs of the creating app; a null value removes a key. */
  appProperties?: Record<string, string | null>;
}

interface Change {
  token: number;
  /** A file's change, or (changeType 'drive') a shared drive's. */
  fileId: string;
  time: string;
  driveId: string | undefined;
  kind: 'file' | 'drive';
}

interface AccessToken {
  expiresAt: number;
  scope: string;
}

/** Answers requests outside the Drive API (an admin API of the process that runs the emulator). */
export type ControlHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void>;

interface PendingSleep {
  timer: NodeJS.Timeout;
  reject: (e: Error) => void;
}

/** An answer the handler wants sent as a Drive error. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
    readonly domain = 'global',
    readonly extra: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** The connection went away (a fault we injected, or the client gave up). */
class ConnectionGone extends Error {}

class EmulatorClosed extends Error {}

/** mulberry32: small, fast, and the same sequence for the same seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A link of fixed bandwidth shared by every connection in one direction. Like a real link
 * it carries bytes while the server is busy with the previous ones: up to BURST_MS of idle
 * time is credit, so the cap is a ceiling on throughput rather than a delay added to it.
 */
const BURST_MS = 50;

class Throttle {
  private nextFreeAt = 0;
  constructor(
    private readonly rate: () => number,
    private readonly sleep: (ms: number) => Promise<void>,
  ) {}

  async take(bytes: number): Promise<void> {
    const rate = this.rate();
    if (rate <= 0) return;
    const now = performance.now();
    this.nextFreeAt = Math.max(now - BURST_MS, this.nextFreeAt) + (bytes * 1000) / rate;
    const wait = this.nextFreeAt - now;
    // Timers are coarse; let small debts accumulate instead of sleeping 0 ms per slice.
    if (wait >= 2) await this.sleep(wait);
  }
}

// ---------------------------------------------------------------------------------------
// `fields` masks: `a,b(c,d),e/f`, `*`.

interface FieldNode {
  [key: string]: FieldNode | true;
}

function parseFields(spec: string): FieldNode {
  let pos = 0;
  const parseList = (depth: number): FieldNode => {
    if (depth > 8) throw new ApiError(400, 'invalidParameter', `Invalid field selection ${spec}`);
    const node: FieldNode = {};
    for (;;) {
      const m = /^\s*([A-Za-z*][A-Za-z0-9_]*(?:\/[A-Za-z*][A-Za-z0-9_]*)*)\s*/.exec(spec.slice(pos));
      if (!m) throw new ApiError(400, 'invalidParameter', `Invalid field selection ${spec}`, 'global', { location: 'fields' });
      pos += m[0].length;
      const path = m[1].split('/');
      let target = node;
      for (const part of path.slice(0, -1)) {
        const next = target[part];
        target = next && next !== true ? next : (target[part] = {});
      }
      const last = path[path.length - 1];
      if (spec[pos] === '(') {
        pos++;
        const sub = parseList(depth + 1);
        if (spec[pos] !== ')') throw new ApiError(400, 'invalidParameter', `Invalid field selection ${spec}`);
        pos++;
        target[last] = sub;
      } else {
        target[last] = true;
      }
      while (spec[pos] === ' ') pos++;
      if (spec[pos] === ',') {
        pos++;
        continue;
      }
      return node;
    }
  };
  const node = parseList(0);
  if (pos !== spec.length) throw new ApiError(400, 'invalidParameter', `Invalid field selection ${spec}`);
  return node;
}

/** Applies a mask; `known` lists the field names an object of this type has, so a typo is an error as on Drive. */
function selectFields(value: Record<string, unknown>, mask: FieldNode, known: Record<string, Record<string, unknown> | true>): Record<string, unknown> {
  if (mask['*'] === true) return value;
  const out: Record<string, unknown> = {};
  for (const [key, sub] of Object.entries(mask)) {
    if (!(key in known)) throw new ApiError(400, 'invalidParameter', `Invalid field selection ${key}`, 'global', { location: 'fields' });
    const v = value[key];
    if (v === undefined) continue;
    const schema = known[key];
    if (sub === true || schema === true) {
      out[key] = v;
    } else if (Array.isArray(v)) {
      out[key] = v.map((item) => selectFields(item as Record<string, unknown>, sub, schema as Record<string, Record<string, unknown> | true>));
    } else {
      out[key] = selectFields(v as Record<string, unknown>, sub, schema as Record<string, Record<string, unknown> | true>);
    }
  }
  return out;
}

const FILE_FIELDS: Record<string, true> = Object.fromEntries(
  ['kind', 'id', 'name', 'mimeType', 'parents', 'trashed', 'explicitlyTrashed', 'size', 'md5Checksum', 'createdTime', 'modifiedTime', 'version', 'spaces', 'ownedByMe', 'headRevisionId', 'shortcutDetails', 'driveId', 'appProperties'].map((k) => [k, true] as const),
);
const FILE_SCHEMA = FILE_FIELDS as Record<string, true>;
const FILE_LIST_SCHEMA = { kind: true, nextPageToken: true, incompleteSearch: true, files: FILE_SCHEMA } as const;
const CHANGE_SCHEMA = { kind: true, changeType: true, time: true, removed: true, fileId: true, file: FILE_SCHEMA, driveId: true, drive: true } as const;
const CHANGE_LIST_SCHEMA = { kind: true, nextPageToken: true, newStartPageToken: true, changes: CHANGE_SCHEMA } as const;
const ABOUT_SCHEMA = {
  kind: true,
  user: { kind: true, displayName: true, emailAddress: true, permissionId: true, me: true },
  storageQuota: { limit: true, usage: true, usageInDrive: true, usageInDriveTrash: true },
  maxUploadSize: true,
} as const;
const DEFAULT_FILE_MASK = parseFields('kind,id,name,mimeType');
const DEFAULT_LIST_MASK = parseFields('kind,nextPageToken,incompleteSearch,files(kind,id,name,mimeType)');
const DEFAULT_CHANGES_MASK = parseFields('kind,nextPageToken,newStartPageToken,changes(kind,changeType,time,removed,fileId,file(kind,id,name,mimeType))');

// ---------------------------------------------------------------------------------------
// `q`: the search grammar, as far as pogfs uses it.

type QueryNode =
  | { op: 'and' | 'or'; left: QueryNode; right: QueryNode }
  | { op: 'not'; arg: QueryNode }
  | { op: 'cmp'; field: 'name' | 'mimeType' | 'trashed'; cmp: '=' | '!=' | 'contains'; value: string | boolean }
  | { op: 'inParents'; parent: string };

type Token = { t: 'str'; v: string } | { t: 'word'; v: string } | { t: 'sym'; v: string };

function tokenize(q: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < q.length) {
    const c = q[i];
    if (c === ' ' || c === '\t' || c === '\n') {
      i++;
    } else if (c === "'") {
      let v = '';
      i++;
      for (;;) {
        if (i >= q.length) throw invalidQuery(q);
        const d = q[i];
        if (d === '\\') {
          if (i + 1 >= q.length) throw invalidQuery(q);
          v += q[i + 1];
          i += 2;
        } else if (d === "'") {
          i++;
          break;
        } else {
          v += d;
          i++;
        }
      }
      tokens.push({ t: 'str', v });
    } else if (c === '(' || c === ')' || c === '=') {
      tokens.push({ t: 'sym', v: c });
      i++;
    } else if (c === '!' && q[i + 1] === '=') {
      tokens.push({ t: 'sym', v: '!=' });
      i += 2;
    } else {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(q.slice(i));
      if (!m) throw invalidQuery(q);
      tokens.push({ t: 'word', v: m[0] });
      i += m[0].length;
    }
  }
  return tokens;
}

/** appProperties after an update: keys given are set, keys given as null removed. */
function mergeProperties(old: Record<string, string> | undefined, update: Record<string, string | null> | undefined): Record<string, string> | undefined {
  if (!update) return old;
  const out: Record<string, string> = { ...old };
  for (const [k, v] of Object.entries(update)) {
    if (v === null) delete out[k];
    else out[k] = v;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

function invalidQuery(q: string): ApiError {
  return new ApiError(400, 'invalid', `Invalid Value`, 'global', { location: 'q', locationType: 'parameter', query: q });
}

function parseQuery(q: string): QueryNode {
  const tokens = tokenize(q);
  let pos = 0;
  const peekWord = (w: string) => tokens[pos]?.t === 'word' && tokens[pos].v.toLowerCase() === w;
  const parseOr = (depth: number): QueryNode => {
    let left = parseAnd(depth);
    while (peekWord('or')) {
      pos++;
      left = { op: 'or', left, right: parseAnd(depth) };
    }
    return left;
  };
  const parseAnd = (depth: number): QueryNode => {
    let left = parseUnary(depth);
    while (peekWord('and')) {
      pos++;
      left = { op: 'and', left, right: parseUnary(depth) };
    }
    return left;
  };
  const parseUnary = (depth: number): QueryNode => {
    if (depth > 32) throw invalidQuery(q);
    if (peekWord('not')) {
      pos++;
      return { op: 'not', arg: parseUnary(depth + 1) };
    }
    const tok = tokens[pos];
    if (tok?.t === 'sym' && tok.v === '(') {
      pos++;
      const inner = parseOr(depth + 1);
      const close = tokens[pos];
      if (close?.t !== 'sym' || close.v !== ')') throw invalidQuery(q);
      pos++;
      return inner;
    }
    if (tok?.t === 'str') {
      pos++;
      if (!peekWord('in')) throw invalidQuery(q);
      pos++;
      const what = tokens[pos];
      if (what?.t !== 'word' || what.v !== 'parents') throw invalidQuery(q);
      pos++;
      return { op: 'inParents', parent: tok.v };
    }
    if (tok?.t === 'word' && (tok.v === 'name' || tok.v === 'mimeType' || tok.v === 'trashed')) {
      pos++;
      const opTok = tokens[pos++];
      let cmp: '=' | '!=' | 'contains';
      if (opTok?.t === 'sym' && (opTok.v === '=' || opTok.v === '!=')) cmp = opTok.v;
      else if (opTok?.t === 'word' && opTok.v === 'contains' && tok.v !== 'trashed') cmp = 'contains';
      else throw invalidQuery(q);
      const valTok = tokens[pos++];
      if (tok.v === 'trashed') {
        if (valTok?.t !== 'word' || (valTok.v !== 'true' && valTok.v !== 'false') || cmp === 'contains') throw invalidQuery(q);
        return { op: 'cmp', field: 'trashed', cmp, value: valTok.v === 'true' };
      }
      if (valTok?.t !== 'str') throw invalidQuery(q);
      return { op: 'cmp', field: tok.v, cmp, value: valTok.v };
    }
    throw invalidQuery(q);
  };
  const node = parseOr(0);
  if (pos !== tokens.length) throw invalidQuery(q);
  return node;
}

function matches(node: QueryNode, f: StoredFile, rootId: string): boolean {
  switch (node.op) {
    case 'and':
      return matches(node.left, f, rootId) && matches(node.right, f, rootId);
    case 'or':
      return matches(node.left, f, rootId) || matches(node.right, f, rootId);
    case 'not':
      return !matches(node.arg, f, rootId);
    case 'inParents':
      return f.parents.includes(node.parent === 'root' ? rootId : node.parent);
    case 'cmp': {
      const actual = f[node.field];
      if (node.cmp === 'contains') return typeof actual === 'string' && actual.includes(node.value as string);
      return node.cmp === '=' ? actual === node.value : actual !== node.value;
    }
  }
}

/** Parent ids that bound the result (so a query of one folder scans its children, not the whole drive), or undefined. */
function candidateParents(node: QueryNode): string[] | undefined {
  if (node.op === 'inParents') return [node.parent];
  if (node.op === 'and') return candidateParents(node.left) ?? candidateParents(node.right);
  if (node.op === 'or') {
    const l = candidateParents(node.left);
    const r = candidateParents(node.right);
    return l && r ? [...l, ...r] : undefined;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------

function base64url(buf: Buffer): string {
  return buf.toString('base64url');
}

function parseContentRange(header: string | undefined): { start: number; end: number; total: number | undefined } | { probe: true; total: number | undefined } | undefined {
  if (!header) return undefined;
  let m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(header.trim());
  if (m) return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
  m = /^bytes \*\/(\d+|\*)$/.exec(header.trim());
  if (m) return { probe: true, total: m[1] === '*' ? undefined : Number(m[1]) };
  return undefined;
}

interface Exchange {
  req: IncomingMessage;
  res: ServerResponse;
  url: URL;
  method: string;
  /** Drive API method (faults, byte stats) as opposed to OAuth. */
  isDrive: boolean;
  /** Reset the connection once this many request body bytes have arrived. */
  resetRequestAfter: number | undefined;
  /** Cut the answer's body after this many bytes, by a reset or a plain close. */
  cutResponse: { after: number | undefined; how: 'reset' | 'truncate' } | undefined;
}

export class DriveEmulator {
  readonly rootUrl: string;
  readonly tokenUrl: string;
  readonly authUrl: string;
  /** The id of My Drive (what `'root'` stands for). */
  readonly rootFolderId: string;
  readonly userEmail: string;

  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly sleeps = new Set<PendingSleep>();
  private readonly dir: string;
  private readonly ownsDir: boolean;
  private readonly random: () => number;
  private faults: DriveFaults;
  private injected: Array<Required<Pick<InjectedFault, 'method' | 'fault' | 'count'>> & { afterBytes: number | undefined }> = [];
  private storageQuota: number | undefined;
  private readonly accessTokenTtlSec: number;
  private readonly maxChildren: number;
  private readonly maxPageSize: number;

  private readonly files = new Map<string, StoredFile>();
  private readonly children = new Map<string, Set<string>>();
  private readonly sessions = new Map<string, UploadSession>();
  private readonly changes: Change[] = [];
  /** Shared drives by id (the id is also its root folder's). */
  private readonly sharedDrives = new Map<string, string>();
  /** Files whose download answers 403 with this reason (downloadQuotaExceeded, cannotDownloadFile). */
  private readonly blockedDownloads = new Map<string, string>();
  private readonly served: Array<{ id: string; start: number; end: number }> = [];
  /** Spaces out the createdTime of seeded items. */
  private seedClock = Date.parse('2020-01-01T00:00:00Z');
  private nextChangeToken = 1;
  private nextSeq = 1;

  private readonly accessTokens = new Map<string, AccessToken>();
  private readonly refreshTokens = new Map<string, { clientId: string; scope: string }>();
  private readonly clients = new Map<string, string>();
  private readonly serviceAccounts = new Map<string, KeyObject>();
  private readonly authCodes = new Map<string, { clientId: string; redirectUri: string; challenge: string | undefined; scope: string; expiresAt: number }>();
  private consent: 'grant' | 'deny' = 'grant';
  private tokenEndpointMode: 'normal' | 'garbage' = 'normal';

  private readonly callCounts: Record<string, number> = {};
  private readonly statsData: EmulatorStats = { bytesReceived: 0, bytesSent: 0, uploadBytesPersisted: 0, faults: {}, maxInFlight: 0 };
  private inFlight = 0;
  private readonly upLink: Throttle;
  private readonly downLink: Throttle;
  private closed = false;
  private control: { pathPrefix: string; handler: ControlHandler } | undefined;

  private constructor(server: Server, port: number, options: DriveEmulatorOptions) {
    this.server = server;
    const base = `http://127.0.0.1:${port}`;
    this.rootUrl = `${base}/`;
    this.tokenUrl = `${base}/token`;
    this.authUrl = `${base}/auth`;
    this.ownsDir = options.dir === undefined;
    this.dir = options.dir ?? mkdtempSync(join(process.env.POGFS_TEST_TMP ?? tmpdir(), 'pogfs-drive-emulator-'));
    mkdirSync(join(this.dir, 'blobs'), { recursive: true });
    mkdirSync(join(this.dir, 'sessions'), { recursive: true });
    this.random = prng(options.seed ?? 1);
    this.faults = { latencyMs: 0, bandwidthBytesPerSec: 0, errorRate: 0, errorKinds: [429, 500, 503, 'rateLimitExceeded'], resetRate: 0, truncateRate: 0, methods: undefined, shortPageRate: 0, ...options.faults };
    this.storageQuota = options.storageQuotaBytes;
    this.accessTokenTtlSec = options.accessTokenTtlSec ?? 3600;
    this.maxChildren = options.maxChildrenPerFolder ?? 500_000;
    this.maxPageSize = options.maxPageSize ?? 1000;
    this.userEmail = options.userEmail ?? 'tester@example.com';
    this.upLink = new Throttle(() => this.faults.bandwidthBytesPerSec, (ms) => this.sleep(ms));
    this.downLink = new Throttle(() => this.faults.bandwidthBytesPerSec, (ms) => this.sleep(ms));
    this.rootFolderId = `0A${base64url(randomBytes(12))}`;
    const now = new Date().toISOString();
    this.files.set(this.rootFolderId, { id: this.rootFolderId, name: 'My Drive', mimeType: FOLDER_MIME, parents: [], trashed: false, size: 0, md5Checksum: undefined, createdTime: now, modifiedTime: now, version: 1, seq: 0, headRevisionId: undefined, shortcutTargetId: undefined, driveId: undefined, contentSeed: undefined });
  }

  static async start(options: DriveEmulatorOptions = {}): Promise<DriveEmulator> {
    // No whole-request deadline (Node's default is 300 s): under a bandwidth cap a 128 MiB
    // upload chunk takes minutes by design, and the client's own timeout bounds it anyway.
    const server = createServer({ keepAliveTimeout: 60_000, requestTimeout: 0 });
    server.maxConnections = 512;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('emulator: no port');
    const emulator = new DriveEmulator(server, address.port, options);
    server.on('connection', (socket) => {
      emulator.sockets.add(socket);
      socket.on('close', () => emulator.sockets.delete(socket));
    });
    server.on('request', (req, res) => {
      emulator.handle(req, res).catch(() => {
        if (!res.headersSent && !res.destroyed) res.destroy();
      });
    });
    return emulator;
  }

  // ---- control ---------------------------------------------------------------------

  /** Where file content lives (a temp directory removed by close(), unless `dir` was given). */
  get contentDir(): string {
    return this.dir;
  }

  /** Changes fault settings while running (only the given ones). */
  setFaults(faults: Partial<DriveFaults>): void {
    this.faults = { ...this.faults, ...faults };
  }

  /** Queues a one-shot fault for the next request(s) of `method`. */
  injectFault(fault: InjectedFault): void {
    if (this.injected.length >= 1000) throw new Error('emulator: too many queued faults');
    this.injected.push({ method: fault.method, fault: fault.fault, count: fault.count ?? 1, afterBytes: fault.afterBytes });
  }

  setStorageQuota(bytes: number | undefined): void {
    this.storageQuota = bytes;
  }

  /**
   * Sends every request whose path starts with `pathPrefix` to `handler` instead of the
   * Drive and OAuth routes: no latency, bandwidth cap, faults, bearer check or call count
   * applies, so controlling the emulator never disturbs what a test measures.
   */
  mountControlApi(pathPrefix: string, handler: ControlHandler): void {
    if (!pathPrefix.startsWith('/') || !pathPrefix.endsWith('/') || pathPrefix === '/') throw new Error(`emulator: a control path prefix looks like /name/, not ${pathPrefix}`);
    this.control = { pathPrefix, handler };
  }

  /** 'deny': the auth endpoint redirects with `error=access_denied`. */
  setConsent(answer: 'grant' | 'deny'): void {
    this.consent = answer;
  }

  /** 'garbage': the token endpoint answers 200 with an HTML page. */
  setTokenEndpointMode(mode: 'normal' | 'garbage'): void {
    this.tokenEndpointMode = mode;
  }

  registerOAuthClient(clientId = `${base64url(randomBytes(8))}.apps.example`, clientSecret = base64url(randomBytes(16))): { clientId: string; clientSecret: string } {
    this.clients.set(clientId, clientSecret);
    return { clientId, clientSecret };
  }

  /** A refresh token for a registered client, as if the user had consented. */
  issueRefreshToken(clientId: string, scope = 'https://www.googleapis.com/auth/drive.file'): string {
    const token = `1//${base64url(randomBytes(24))}`;
    if (this.refreshTokens.size >= MAX_TOKENS) this.refreshTokens.delete(this.refreshTokens.keys().next().value!);
    this.refreshTokens.set(token, { clientId, scope });
    return token;
  }

  issueAccessToken(ttlSec = this.accessTokenTtlSec, scope = 'https://www.googleapis.com/auth/drive.file'): string {
    if (this.accessTokens.size >= MAX_TOKENS) this.pruneAccessTokens();
    const token = `ya29.${base64url(randomBytes(24))}`;
    this.accessTokens.set(token, { expiresAt: Date.now() + ttlSec * 1000, scope });
    return token;
  }

  /** Every access token issued so far stops working (as if they had all expired). */
  expireAccessTokens(): void {
    this.accessTokens.clear();
  }

  revokeRefreshTokens(): void {
    this.refreshTokens.clear();
  }

  /** A service account whose key the token endpoint accepts for the JWT bearer grant. */
  createServiceAccount(name = 'pogfs-test'): ServiceAccountKey {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const email = `${name}@pogfs-test.iam.gserviceaccount.com`;
    this.serviceAccounts.set(email, publicKey);
    return {
      type: 'service_account',
      project_id: 'pogfs-test',
      private_key_id: base64url(randomBytes(10)),
      private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      client_email: email,
      client_id: String(100000 + Math.floor(this.random() * 900000)),
      token_uri: this.tokenUrl,
    };
  }

  /** Calls received so far, by method (`files.create`, `upload.resumable.chunk`, `oauth.token`, ...). */
  calls(): Record<string, number> {
    return { ...this.callCounts };
  }

  stats(): EmulatorStats {
    return { ...this.statsData, faults: { ...this.statsData.faults } };
  }

  /** Zeroes the byte and fault statistics (call counts stay). */
  resetStats(): void {
    Object.assign(this.statsData, { bytesReceived: 0, bytesSent: 0, uploadBytesPersisted: 0, faults: {}, maxInFlight: this.inFlight });
  }

  /** Every stored file and folder (My Drive itself excluded). */
  storedFiles(): EmulatedFile[] {
    return [...this.files.values()].filter((f) => f.id !== this.rootFolderId).map((f) => this.publicCopy(f));
  }

  storedFile(id: string): EmulatedFile | undefined {
    const f = this.files.get(id);
    return f && this.publicCopy(f);
  }

  async readStoredFile(id: string): Promise<Buffer> {
    const f = this.files.get(id);
    if (!f || f.mimeType === FOLDER_MIME) throw new Error(`emulator: no file ${id}`);
    const fh = await open(this.blobPath(id), 'r');
    try {
      const buf = Buffer.alloc(f.size);
      let done = 0;
      while (done < f.size) {
        const { bytesRead } = await fh.read(buf, done, f.size - done, done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf;
    } finally {
      await fh.close();
    }
  }

  /** Flips `length` bytes of a stored file in place (its md5Checksum stays what it was, as with silent corruption). */
  async corruptStoredFile(id: string, offset = 0, length = 1): Promise<void> {
    const f = this.files.get(id);
    if (!f || f.mimeType === FOLDER_MIME || offset + length > f.size) throw new Error(`emulator: cannot corrupt ${id} at ${offset}+${length}`);
    const fh = await open(this.blobPath(id), 'r+');
    try {
      const buf = Buffer.alloc(length);
      await fh.read(buf, 0, length, offset);
      for (let i = 0; i < length; i++) buf[i] ^= 0xff;
      await fh.write(buf, 0, length, offset);
    } finally {
      await fh.close();
    }
  }

  // ---- direct changes to the store (no HTTP, no call counted; each lands in the changes feed)

  /**
   * Puts items straight into the store, in order (a parent before its children), and
   * returns their ids. Content is synthetic (see `syntheticBytes`), so a Drive of a
   * hundred thousand files costs no disk.
   */
  seedItems(items: SeedItem[]): string[] {
    const md5s = new Map<string, string>();
    return items.map((item) => {
      const parentId = item.parent === undefined || item.parent === 'root' ? this.rootFolderId : item.parent;
      const parent = this.files.get(parentId);
      if (!parent || parent.mimeType !== FOLDER_MIME) throw new Error(`emulator: seed parent ${parentId} is not a folder`);
      const mimeType = item.mimeType ?? 'application/octet-stream';
      const isContent = mimeType !== FOLDER_MIME && !mimeType.startsWith('application/vnd.google-apps.');
      const size = isContent ? (item.size ?? 0) : 0;
      const seed = item.contentSeed ?? 0;
      let md5: string | undefined;
      if (isContent) {
        const key = `${seed}:${size}`;
        md5 = md5s.get(key) ?? syntheticMd5(seed, size);
        md5s.set(key, md5);
      }
      const created = item.createdTime ?? new Date((this.seedClock += 1)).toISOString();
      const f: StoredFile = {
        id: this.newId(),
        name: item.name,
        mimeType,
        parents: [parentId],
        trashed: item.trashed ?? false,
        size,
        md5Checksum: md5,
        createdTime: created,
        modifiedTime: created,
        version: 1,
        seq: this.nextSeq++,
        headRevisionId: md5 === undefined ? undefined : `0B${md5}`,
        shortcutTargetId: mimeType === SHORTCUT_MIME ? item.shortcutTargetId : undefined,
        driveId: parent.driveId,
        contentSeed: isContent ? seed : undefined,
      };
      this.files.set(f.id, f);
      this.addChild(parentId, f.id);
      this.recordChange(f.id);
      return f.id;
    });
  }

  /** Renames, moves, trashes or untrashes an item, or gives it new synthetic content. */
  changeItem(id: string, change: ItemChange): void {
    const f = this.files.get(id);
    if (!f) throw new Error(`emulator: no item ${id}`);
    if (change.name !== undefined) f.name = change.name;
    if (change.parent !== undefined) {
      const parentId = change.parent === 'root' ? this.rootFolderId : change.parent;
      if (this.files.get(parentId)?.mimeType !== FOLDER_MIME) throw new Error(`emulator: ${parentId} is not a folder`);
      for (const p of f.parents) this.removeChild(p, f.id);
      f.parents = [parentId];
      this.addChild(parentId, f.id);
    }
    if (change.trashed !== undefined) f.trashed = change.trashed;
    if (change.contentSeed !== undefined || change.size !== undefined) {
      const seed = change.contentSeed ?? f.contentSeed ?? 0;
      const size = change.size ?? f.size;
      f.contentSeed = seed;
      f.size = size;
      f.md5Checksum = syntheticMd5(seed, size);
      f.headRevisionId = `0B${f.md5Checksum}.${f.version + 1}`;
    }
    f.modifiedTime = new Date().toISOString();
    f.version++;
    this.recordChange(f.id);
  }

  /** Deletes an item for good (a folder with everything in it), as files.delete does. */
  deleteItem(id: string): void {
    const doomed = [this.files.get(id)!];
    if (!doomed[0]) throw new Error(`emulator: no item ${id}`);
    for (let i = 0; i < doomed.length; i++) {
      for (const childId of this.children.get(doomed[i].id) ?? []) {
        const child = this.files.get(childId);
        if (child) doomed.push(child);
      }
    }
    for (const d of doomed) {
      this.files.delete(d.id);
      this.children.delete(d.id);
      for (const p of d.parents) this.removeChild(p, d.id);
      this.recordChange(d.id, 'file', d.driveId);
    }
  }

  /** A shared drive; its id is also the id of its root folder. */
  createSharedDrive(name: string): string {
    const id = `0A${base64url(randomBytes(9))}`;
    const now = new Date().toISOString();
    this.sharedDrives.set(id, name);
    this.files.set(id, { id, name, mimeType: FOLDER_MIME, parents: [], trashed: false, size: 0, md5Checksum: undefined, createdTime: now, modifiedTime: now, version: 1, seq: this.nextSeq++, headRevisionId: undefined, shortcutTargetId: undefined, driveId: id, contentSeed: undefined });
    this.recordChange(id, 'drive');
    return id;
  }

  /** A `changeType: drive` entry for a shared drive (a rename of the drive, say). */
  touchSharedDrive(id: string): void {
    if (!this.sharedDrives.has(id)) throw new Error(`emulator: no shared drive ${id}`);
    this.recordChange(id, 'drive');
  }

  /** Downloads of `id` answer 403 with this reason from now on (undefined: allowed again). */
  blockDownload(id: string, reason: 'downloadQuotaExceeded' | 'cannotDownloadFile' | undefined): void {
    if (reason === undefined) this.blockedDownloads.delete(id);
    else this.blockedDownloads.set(id, reason);
  }

  /** Gives a file a wrong md5Checksum, its bytes unchanged (silent corruption, as Drive sees it). */
  setStoredMd5(id: string, md5: string): void {
    const f = this.files.get(id);
    if (!f) throw new Error(`emulator: no item ${id}`);
    f.md5Checksum = md5;
  }

  /** The byte ranges of content served so far (alt=media), oldest first (the last 10,000). */
  mediaRanges(): Array<{ id: string; start: number; end: number }> {
    return [...this.served];
  }

  /** Forgets the changes recorded so far: every page token handed out before is refused (as when one expires). */
  forgetChanges(): void {
    this.changes.length = 0;
    // A gap: the token handed out last is now older than anything retained.
    this.nextChangeToken++;
  }

  /** The token a changes.getStartPageToken call would answer now. */
  currentChangeToken(): string {
    return String(this.nextChangeToken);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const closedServer = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sleeps) {
      clearTimeout(s.timer);
      s.reject(new EmulatorClosed('emulator closed'));
    }
    this.sleeps.clear();
    for (const socket of this.sockets) socket.destroy();
    await closedServer;
    if (this.ownsDir) rmSync(this.dir, { recursive: true, force: true });
  }

  // ---- plumbing ----------------------------------------------------------------------

  private publicCopy(f: StoredFile): EmulatedFile {
    return {
      id: f.id, name: f.name, mimeType: f.mimeType, parents: [...f.parents], trashed: f.trashed, size: f.size, md5Checksum: f.md5Checksum,
      createdTime: f.createdTime, modifiedTime: f.modifiedTime, version: f.version, headRevisionId: f.headRevisionId, shortcutTargetId: f.shortcutTargetId, driveId: f.driveId,
      ...(f.appProperties ? { appProperties: { ...f.appProperties } } : {}),
    };
  }

  private blobPath(id: string): string {
    return join(this.dir, 'blobs', id);
  }

  private sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.reject(new EmulatorClosed('emulator closed'));
    return new Promise((resolve, reject) => {
      const entry: PendingSleep = {
        timer: setTimeout(() => {
          this.sleeps.delete(entry);
          resolve();
        }, ms),
        reject,
      };
      this.sleeps.add(entry);
    });
  }

  private count(method: string): void {
    this.callCounts[method] = (this.callCounts[method] ?? 0) + 1;
  }

  private noteFault(kind: string): void {
    this.statsData.faults[kind] = (this.statsData.faults[kind] ?? 0) + 1;
  }

  private pruneAccessTokens(): void {
    const now = Date.now();
    for (const [token, t] of this.accessTokens) if (t.expiresAt <= now) this.accessTokens.delete(token);
    // Still full of live tokens: drop the oldest, as a server would evict.
    for (const token of this.accessTokens.keys()) {
      if (this.accessTokens.size < MAX_TOKENS) break;
      this.accessTokens.delete(token);
    }
  }

  private newId(): string {
    return `1${base64url(randomBytes(24))}`;
  }

  private fileJson(f: StoredFile): Record<string, unknown> {
    const json: Record<string, unknown> = {
      kind: 'drive#file',
      id: f.id,
      name: f.name,
      mimeType: f.mimeType,
      parents: [...f.parents],
      trashed: f.trashed,
      explicitlyTrashed: f.trashed,
      createdTime: f.createdTime,
      modifiedTime: f.modifiedTime,
      version: String(f.version),
      spaces: ['drive'],
      ownedByMe: true,
    };
    if (f.mimeType === SHORTCUT_MIME) {
      const target = f.shortcutTargetId === undefined ? undefined : this.files.get(f.shortcutTargetId);
      json.shortcutDetails = { targetId: f.shortcutTargetId, targetMimeType: target?.mimeType ?? 'application/octet-stream' };
    } else if (f.mimeType !== FOLDER_MIME && !f.mimeType.startsWith('application/vnd.google-apps.')) {
      json.size = String(f.size);
      json.md5Checksum = f.md5Checksum;
      json.headRevisionId = f.headRevisionId;
    }
    if (f.driveId !== undefined) json.driveId = f.driveId;
    if (f.appProperties && Object.keys(f.appProperties).length > 0) json.appProperties = { ...f.appProperties };
    return json;
  }

  private renderFile(f: StoredFile, fields: string | undefined): Record<string, unknown> {
    const mask = fields ? parseFields(fields) : DEFAULT_FILE_MASK;
    return selectFields(this.fileJson(f), mask, FILE_SCHEMA);
  }

  private usage(): number {
    let total = 0;
    for (const f of this.files.values()) total += f.size;
    return total;
  }

  private checkQuota(extraBytes: number): void {
    if (this.storageQuota !== undefined && this.usage() + extraBytes > this.storageQuota) {
      throw new ApiError(403, 'storageQuotaExceeded', "The user's Drive storage quota has been exceeded.", 'usageLimits');
    }
  }

  private recordChange(fileId: string, kind: 'file' | 'drive' = 'file', knownDriveId?: string): void {
    const driveId = kind === 'drive' ? fileId : (knownDriveId ?? this.files.get(fileId)?.driveId);
    this.changes.push({ token: this.nextChangeToken++, fileId, time: new Date().toISOString(), driveId, kind });
    if (this.changes.length > MAX_CHANGES) this.changes.splice(0, this.changes.length - MAX_CHANGES);
  }

  private addChild(parent: string, id: string): void {
    let set = this.children.get(parent);
    if (!set) this.children.set(parent, (set = new Set()));
    set.add(id);
  }

  private removeChild(parent: string, id: string): void {
    this.children.get(parent)?.delete(id);
  }

  private resolveParents(parents: string[] | undefined): string[] {
    const list = parents && parents.length ? parents : [this.rootFolderId];
    if (list.length > 1) throw new ApiError(403, 'cannotAddParent', 'Increasing the number of parents is not allowed.');
    return list.map((p) => {
      const id = p === 'root' ? this.rootFolderId : p;
      const parent = this.files.get(id);
      if (!parent) throw new ApiError(404, 'notFound', `File not found: ${p}.`, 'global', { location: 'fileId', locationType: 'parameter' });
      if (parent.mimeType !== FOLDER_MIME) throw new ApiError(400, 'invalidParent', 'The specified parent is not a folder.');
      if ((this.children.get(id)?.size ?? 0) >= this.maxChildren) {
        throw new ApiError(403, 'numChildrenInNonRootLimitExceeded', `The limit for this folder's number of children (files and folders) has been exceeded.`);
      }
      return id;
    });
  }

  private createFileRecord(meta: FileMetadataInput, size: number, md5: string | undefined, id = this.newId()): StoredFile {
    const parents = this.resolveParents(meta.parents);
    const now = new Date().toISOString();
    const f: StoredFile = {
      id,
      name: meta.name ?? 'Untitled',
      mimeType: meta.mimeType ?? 'application/octet-stream',
      parents,
      trashed: meta.trashed ?? false,
      size,
      md5Checksum: md5,
      createdTime: now,
      modifiedTime: meta.modifiedTime ?? now,
      version: 1,
      seq: this.nextSeq++,
      headRevisionId: undefined,
      shortcutTargetId: undefined,
      driveId: parents.length ? this.files.get(parents[0])?.driveId : undefined,
      contentSeed: undefined,
      appProperties: mergeProperties(undefined, meta.appProperties),
    };
    if (f.mimeType === FOLDER_MIME) {
      f.size = 0;
      f.md5Checksum = undefined;
    } else if (f.md5Checksum === undefined) {
      f.md5Checksum = createHash('md5').digest('hex');
    }
    if (f.mimeType !== FOLDER_MIME) f.headRevisionId = `0B${f.md5Checksum}`;
    this.files.set(f.id, f);
    for (const p of parents) this.addChild(p, f.id);
    this.recordChange(f.id);
    return f;
  }

  private getFileOr404(id: string): StoredFile {
    const f = this.files.get(id === 'root' ? this.rootFolderId : id);
    if (!f) throw new ApiError(404, 'notFound', `File not found: ${id}.`, 'global', { location: 'fileId', locationType: 'parameter' });
    return f;
  }

  // ---- HTTP --------------------------------------------------------------------------

  private route(req: IncomingMessage, url: URL): { method: string; isDrive: boolean; run: (x: Exchange) => Promise<void> } | undefined {
    const p = url.pathname;
    const m = req.method ?? 'GET';
    if (p === '/token' && m === 'POST') return { method: 'oauth.token', isDrive: false, run: (x) => this.token(x) };
    if (p === '/auth' && m === 'GET') return { method: 'oauth.auth', isDrive: false, run: (x) => this.authorize(x) };
    if (p === '/drive/v3/about' && m === 'GET') return { method: 'about.get', isDrive: true, run: (x) => this.aboutGet(x) };
    if (p === '/drive/v3/changes/startPageToken' && m === 'GET') return { method: 'changes.getStartPageToken', isDrive: true, run: (x) => this.changesStart(x) };
    if (p === '/drive/v3/changes' && m === 'GET') return { method: 'changes.list', isDrive: true, run: (x) => this.changesList(x) };
    if (p === '/drive/v3/files' && m === 'GET') return { method: 'files.list', isDrive: true, run: (x) => this.filesList(x) };
    if (p === '/drive/v3/files' && m === 'POST') return { method: 'files.create', isDrive: true, run: (x) => this.filesCreateMetadata(x) };
    const fileMatch = /^\/drive\/v3\/files\/([A-Za-z0-9_-]+)$/.exec(p);
    if (fileMatch) {
      const id = fileMatch[1];
      if (m === 'GET') return { method: 'files.get', isDrive: true, run: (x) => this.filesGet(x, id) };
      if (m === 'PATCH') return { method: 'files.update', isDrive: true, run: (x) => this.filesUpdateMetadata(x, id) };
      if (m === 'DELETE') return { method: 'files.delete', isDrive: true, run: (x) => this.filesDelete(x, id) };
    }
    const uploadMatch = /^\/upload\/drive\/v3\/files(?:\/([A-Za-z0-9_-]+))?$/.exec(p);
    if (uploadMatch) {
      const id = uploadMatch[1];
      const uploadId = url.searchParams.get('upload_id');
      if (uploadId !== null && m === 'PUT') {
        const range = parseContentRange(req.headers['content-range']);
        const method = range && 'probe' in range ? 'upload.resumable.status' : 'upload.resumable.chunk';
        return { method, isDrive: true, run: (x) => this.resumableChunk(x, uploadId) };
      }
      if (id === undefined && m === 'POST') return { method: 'files.create', isDrive: true, run: (x) => this.upload(x, undefined) };
      if (id !== undefined && m === 'PATCH') return { method: 'files.update', isDrive: true, run: (x) => this.upload(x, id) };
    }
    return undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', this.rootUrl);
    if (this.control && url.pathname.startsWith(this.control.pathPrefix)) {
      await this.control.handler(req, res, url);
      return;
    }
    const route = this.route(req, url);
    if (!route) {
      this.sendError(res, new ApiError(404, 'notFound', `Not Found: ${req.method} ${url.pathname}`));
      return;
    }
    this.count(route.method);
    const x: Exchange = { req, res, url, method: route.method, isDrive: route.isDrive, resetRequestAfter: undefined, cutResponse: undefined };
    try {
      if (this.faults.latencyMs > 0) {
        if (route.isDrive) this.statsData.maxInFlight = Math.max(this.statsData.maxInFlight, ++this.inFlight);
        try {
          await this.sleep(this.faults.latencyMs);
        } finally {
          if (route.isDrive) this.inFlight--;
        }
      }
      if (route.isDrive) {
        const scope = this.checkBearer(req);
        // A read-only token reads; anything that changes the Drive is refused, as by Drive.
        if (scope.split(' ').every((s) => s.endsWith('.readonly')) && !['files.list', 'files.get', 'changes.list', 'changes.getStartPageToken', 'about.get'].includes(route.method)) {
          throw new ApiError(403, 'insufficientPermissions', 'Request had insufficient authentication scopes.');
        }
        this.drawFault(x);
      }
      await route.run(x);
    } catch (e) {
      if (e instanceof ConnectionGone || e instanceof EmulatorClosed) {
        if (!res.destroyed) res.destroy();
        return;
      }
      if (e instanceof ApiError) {
        if (!res.headersSent) this.sendError(res, e);
        else res.destroy();
        return;
      }
      if (!res.headersSent) this.sendError(res, new ApiError(500, 'internalError', `emulator: ${(e as Error).message}`));
      else res.destroy();
    }
  }

  /** Checks the access token and returns its scope. */
  private checkBearer(req: IncomingMessage): string {
    const header = req.headers.authorization ?? '';
    const m = /^Bearer (\S+)$/.exec(header);
    const token = m && this.accessTokens.get(m[1]);
    if (!token || token.expiresAt <= Date.now()) {
      throw new ApiError(401, 'authError', 'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.', 'global', {
        location: 'Authorization',
        locationType: 'header',
      });
    }
    return token.scope;
  }

  /** Decides this request's fault: error answers are thrown here; resets and cuts are armed on the exchange. */
  private drawFault(x: Exchange): void {
    const hasBody = Number(x.req.headers['content-length'] ?? 0) > 0 || x.req.headers['transfer-encoding'] !== undefined;
    const one = this.injected.find((f) => f.method === x.method && (f.fault !== 'invalidPageToken' || x.url.searchParams.has('pageToken')));
    let kind: FaultKind | undefined;
    let afterBytes: number | undefined;
    if (one) {
      kind = one.fault;
      afterBytes = one.afterBytes;
      if (--one.count <= 0) this.injected.splice(this.injected.indexOf(one), 1);
    } else if (this.faults.methods === undefined || this.faults.methods.includes(x.method)) {
      const r = this.random();
      const { errorRate, resetRate, truncateRate, errorKinds } = this.faults;
      if (r < errorRate && errorKinds.length) kind = errorKinds[Math.floor(this.random() * errorKinds.length)];
      else if (r < errorRate + resetRate) kind = 'reset';
      else if (r < errorRate + resetRate + truncateRate) kind = 'truncate';
    }
    if (kind === undefined) return;
    if (kind === 'invalidPageToken') {
      this.noteFault(kind);
      throw new ApiError(400, 'invalid', 'Invalid Value', 'global', { location: 'pageToken', locationType: 'parameter' });
    }
    if (kind === 'reset' && hasBody) {
      const length = Number(x.req.headers['content-length'] ?? 0);
      x.resetRequestAfter = afterBytes ?? Math.floor(length / 2);
      return;
    }
    if (kind === 'reset' || kind === 'truncate') {
      x.cutResponse = { after: afterBytes, how: kind };
      return;
    }
    this.noteFault(String(kind));
    switch (kind) {
      case 429:
        throw new ApiError(429, 'rateLimitExceeded', 'Rate Limit Exceeded', 'usageLimits');
      case 'rateLimitExceeded':
        throw new ApiError(403, 'rateLimitExceeded', 'Rate Limit Exceeded', 'usageLimits');
      case 'userRateLimitExceeded':
        throw new ApiError(403, 'userRateLimitExceeded', 'User Rate Limit Exceeded', 'usageLimits');
      case 500:
        throw new ApiError(500, 'backendError', 'Internal Error');
      case 503:
        throw new ApiError(503, 'backendError', 'Service Unavailable');
    }
  }

  private sendError(res: ServerResponse, e: ApiError): void {
    const body = {
      error: {
        code: e.status,
        message: e.message,
        errors: [{ message: e.message, domain: e.domain, reason: e.reason, ...e.extra }],
      },
    };
    const json = Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { 'content-type': 'application/json; charset=UTF-8', 'content-length': json.length };
    if (e.status === 401) headers['www-authenticate'] = 'Bearer realm="https://accounts.google.com/", error="invalid_token"';
    res.writeHead(e.status, headers);
    res.end(json);
  }

  /** Reads the request body in order, throttled, ending in a reset when that fault is armed. */
  private async *bodyChunks(x: Exchange, limit: number): AsyncGenerator<Buffer> {
    let seen = 0;
    try {
      for await (const raw of x.req as AsyncIterable<Buffer>) {
        let chunk = raw;
        if (seen + chunk.length > limit) throw new ApiError(413, 'uploadTooLarge', 'Request Too Large');
        let reset = false;
        if (x.resetRequestAfter !== undefined && seen + chunk.length >= x.resetRequestAfter) {
          chunk = chunk.subarray(0, Math.max(0, x.resetRequestAfter - seen));
          reset = true;
        }
        seen += chunk.length;
        if (x.isDrive) this.statsData.bytesReceived += chunk.length;
        if (chunk.length) {
          await this.upLink.take(chunk.length);
          yield chunk;
        }
        if (reset) {
          this.noteFault('reset');
          x.req.socket.resetAndDestroy();
          throw new ConnectionGone('reset by fault');
        }
      }
    } catch (e) {
      if (e instanceof ApiError || e instanceof ConnectionGone || e instanceof EmulatorClosed) throw e;
      throw new ConnectionGone((e as Error).message);
    }
    if (x.req.readableAborted || !x.req.complete) throw new ConnectionGone('request aborted');
  }

  private async readBody(x: Exchange, limit: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const chunk of this.bodyChunks(x, limit)) parts.push(chunk);
    return Buffer.concat(parts);
  }

  private async readJson(x: Exchange): Promise<Record<string, unknown>> {
    const body = await this.readBody(x, MAX_JSON_BODY);
    if (body.length === 0) return {};
    try {
      const v: unknown = JSON.parse(body.toString('utf8'));
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
      return v as Record<string, unknown>;
    } catch {
      throw new ApiError(400, 'parseError', 'Parse Error');
    }
  }

  /** Writes an answer body in throttled slices, cut short when that fault is armed. */
  private async writeBody(x: Exchange, status: number, headers: Record<string, string | number>, body: { buffer: Buffer } | { path: string; start: number; length: number } | { seed: number; start: number; length: number }): Promise<void> {
    const length = 'buffer' in body ? body.buffer.length : body.length;
    const cut = x.cutResponse;
    x.res.writeHead(status, { ...headers, 'content-length': length });
    const stopAt = cut && length >= 2 ? Math.min(cut.after ?? Math.floor(length / 2), length - 1) : length;
    let fh: FileHandle | undefined;
    try {
      if ('path' in body) fh = await open(body.path, 'r');
      let sent = 0;
      while (sent < stopAt) {
        if (x.res.destroyed) throw new ConnectionGone('client went away');
        const n = Math.min(IO_SLICE, stopAt - sent);
        let slice: Buffer;
        if ('buffer' in body) {
          slice = body.buffer.subarray(sent, sent + n);
        } else if ('seed' in body) {
          slice = syntheticBytes(body.seed, body.start + sent, n);
        } else {
          slice = Buffer.allocUnsafe(n);
          const { bytesRead } = await fh!.read(slice, 0, n, body.start + sent);
          if (bytesRead !== n) throw new Error('stored file shorter than its metadata');
        }
        await this.downLink.take(n);
        if (x.isDrive) this.statsData.bytesSent += n;
        const more = x.res.write(slice);
        sent += n;
        if (!more) await this.drained(x.res);
      }
    } finally {
      await fh?.close();
    }
    if (cut && length >= 2) {
      this.noteFault(cut.how);
      // Let what was written leave before the socket goes, so the client sees a short body rather than nothing.
      await new Promise<void>((resolve) => x.res.write('', () => resolve()));
      if (cut.how === 'reset') x.res.socket?.resetAndDestroy();
      else x.res.socket?.destroy();
      throw new ConnectionGone(cut.how);
    }
    x.res.end();
  }

  private drained(res: ServerResponse): Promise<void> {
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        res.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        res.off('drain', onDrain);
        reject(new ConnectionGone('client went away'));
      };
      res.once('drain', onDrain);
      res.once('close', onClose);
    });
  }

  private async sendJson(x: Exchange, status: number, value: unknown, headers: Record<string, string | number> = {}): Promise<void> {
    const buffer = Buffer.from(JSON.stringify(value));
    await this.writeBody(x, status, { 'content-type': 'application/json; charset=UTF-8', ...headers }, { buffer });
  }

  /** An answer without a body; a cut armed for it becomes a reset before any answer. */
  private sendEmpty(x: Exchange, status: number, headers: Record<string, string | number> = {}, statusMessage?: string): void {
    if (x.cutResponse) {
      this.noteFault('reset');
      x.res.socket?.resetAndDestroy();
      throw new ConnectionGone('reset');
    }
    if (statusMessage) x.res.statusMessage = statusMessage;
    x.res.writeHead(status, { ...headers, 'content-length': 0 });
    x.res.end();
  }

  // ---- Drive methods -----------------------------------------------------------------

  private async aboutGet(x: Exchange): Promise<void> {
    const fields = x.url.searchParams.get('fields');
    if (!fields) throw new ApiError(400, 'required', "The 'fields' parameter is required for this operation.", 'global', { location: 'fields', locationType: 'parameter' });
    const usage = this.usage();
    let trash = 0;
    for (const f of this.files.values()) if (f.trashed) trash += f.size;
    const about: Record<string, unknown> = {
      kind: 'drive#about',
      user: { kind: 'drive#user', displayName: 'Test User', emailAddress: this.userEmail, permissionId: '0123456789', me: true },
      storageQuota: {
        ...(this.storageQuota !== undefined ? { limit: String(this.storageQuota) } : {}),
        usage: String(usage),
        usageInDrive: String(usage - trash),
        usageInDriveTrash: String(trash),
      },
      maxUploadSize: String(5 * 1024 ** 4),
    };
    await this.sendJson(x, 200, selectFields(about, parseFields(fields), ABOUT_SCHEMA as unknown as Record<string, Record<string, unknown> | true>));
  }

  private async changesStart(x: Exchange): Promise<void> {
    await this.sendJson(x, 200, { kind: 'drive#startPageToken', startPageToken: String(this.nextChangeToken) });
  }

  private async changesList(x: Exchange): Promise<void> {
    const params = x.url.searchParams;
    const tokenText = params.get('pageToken');
    if (tokenText === null) throw new ApiError(400, 'required', 'Required parameter: pageToken', 'global', { location: 'pageToken', locationType: 'parameter' });
    const token = Number(tokenText);
    const oldest = this.changes.length ? this.changes[0].token : this.nextChangeToken;
    if (!Number.isInteger(token) || token < 1 || token > this.nextChangeToken || token < oldest) {
      throw new ApiError(400, 'invalid', `Invalid Value`, 'global', { location: 'pageToken', locationType: 'parameter' });
    }
    const pageSize = this.shortPage(this.pageSize(params, 100));
    const includeRemoved = params.get('includeRemoved') !== 'false';
    const driveId = params.get('driveId') ?? undefined;
    if (driveId !== undefined && !this.sharedDrives.has(driveId)) throw new ApiError(404, 'notFound', `Shared drive not found: ${driveId}`);
    const allDrives = params.get('includeItemsFromAllDrives') === 'true';
    const fields = params.get('fields');
    const out: Record<string, unknown>[] = [];
    let next = token;
    let i = this.changes.findIndex((c) => c.token >= token);
    if (i < 0) i = this.changes.length;
    for (; i < this.changes.length && out.length < pageSize; i++) {
      const c = this.changes[i];
      next = c.token + 1;
      if (driveId !== undefined ? c.driveId !== driveId : c.driveId !== undefined && !allDrives) continue;
      if (c.kind === 'drive') {
        out.push({ kind: 'drive#change', changeType: 'drive', time: c.time, removed: !this.sharedDrives.has(c.fileId), driveId: c.fileId, drive: { kind: 'drive#drive', id: c.fileId, name: this.sharedDrives.get(c.fileId) } });
        continue;
      }
      const f = this.files.get(c.fileId);
      if (!f && !includeRemoved) continue;
      out.push({ kind: 'drive#change', changeType: 'file', time: c.time, removed: !f, fileId: c.fileId, ...(f ? { file: this.fileJson(f) } : {}), ...(c.driveId ? { driveId: c.driveId } : {}) });
    }
    const body: Record<string, unknown> = { kind: 'drive#changeList', changes: out };
    if (i < this.changes.length) body.nextPageToken = String(next);
    else body.newStartPageToken = String(this.nextChangeToken);
    const mask = fields ? parseFields(fields) : DEFAULT_CHANGES_MASK;
    await this.sendJson(x, 200, selectFields(body, mask, CHANGE_LIST_SCHEMA as unknown as Record<string, Record<string, unknown> | true>));
  }

  /** A page size, cut short now and then when `shortPageRate` says so (an empty page included). */
  private shortPage(size: number): number {
    if (this.faults.shortPageRate > 0 && this.random() < this.faults.shortPageRate) {
      this.noteFault('shortPage');
      return Math.floor(this.random() * size);
    }
    return size;
  }

  private pageSize(params: URLSearchParams, fallback: number): number {
    const text = params.get('pageSize');
    if (text === null) return fallback;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1 || n > 1000) {
      throw new ApiError(400, 'invalid', `Invalid value '${text}'. Values must be within the range: [1, 1000]`, 'global', { location: 'pageSize', locationType: 'parameter' });
    }
    return n;
  }

  private async filesList(x: Exchange): Promise<void> {
    const params = x.url.searchParams;
    const q = params.get('q') ?? '';
    if (q.length > MAX_QUERY_LENGTH) throw invalidQuery(q.slice(0, 100));
    const spaces = params.get('spaces');
    if (spaces !== null && spaces !== 'drive') throw new ApiError(400, 'invalid', 'Invalid Value', 'global', { location: 'spaces' });
    const ast = q.trim() ? parseQuery(q) : undefined;
    const pageSize = this.shortPage(Math.min(this.pageSize(params, 100), this.maxPageSize));
    const corpora = params.get('corpora') ?? 'user';
    const driveId = params.get('driveId') ?? undefined;
    if (corpora === 'drive' && (driveId === undefined || !this.sharedDrives.has(driveId))) {
      throw new ApiError(driveId === undefined ? 400 : 404, driveId === undefined ? 'required' : 'notFound', driveId === undefined ? 'The driveId parameter must be specified if and only if corpora is set to drive.' : `Shared drive not found: ${driveId}`);
    }
    if (corpora === 'drive' && params.get('includeItemsFromAllDrives') !== 'true') {
      throw new ApiError(403, 'teamDriveSupportRequired', 'includeItemsFromAllDrives must be true with corpora=drive.');
    }
    const tokenText = params.get('pageToken');
    const queryHash = createHash('sha256').update(q).digest('base64url').slice(0, 12);
    let after = 0;
    if (tokenText) {
      const m = /^(\d+)\.([A-Za-z0-9_-]+)$/.exec(Buffer.from(tokenText, 'base64url').toString());
      if (!m || m[2] !== queryHash) throw new ApiError(400, 'invalid', 'Invalid Value', 'global', { location: 'pageToken', locationType: 'parameter' });
      after = Number(m[1]);
    }
    let candidates: StoredFile[];
    const parents = ast && candidateParents(ast);
    if (parents) {
      const ids = new Set<string>();
      for (const p of parents) for (const id of this.children.get(p === 'root' ? this.rootFolderId : p) ?? []) ids.add(id);
      candidates = [...ids].map((id) => this.files.get(id)!).filter((f) => f !== undefined);
      candidates.sort((a, b) => a.seq - b.seq);
    } else {
      candidates = [...this.files.values()];
    }
    const page: StoredFile[] = [];
    let more = false;
    for (const f of candidates) {
      if (f.seq <= after || f.id === this.rootFolderId || this.sharedDrives.has(f.id)) continue;
      if (corpora === 'drive' ? f.driveId !== driveId : f.driveId !== undefined) continue;
      if (ast && !matches(ast, f, this.rootFolderId)) continue;
      if (page.length === pageSize) {
        more = true;
        break;
      }
      page.push(f);
    }
    const body: Record<string, unknown> = { kind: 'drive#fileList', incompleteSearch: false, files: page.map((f) => this.fileJson(f)) };
    if (more) body.nextPageToken = Buffer.from(`${page.length ? page[page.length - 1].seq : after}.${queryHash}`).toString('base64url');
    const fields = params.get('fields');
    const mask = fields ? parseFields(fields) : DEFAULT_LIST_MASK;
    await this.sendJson(x, 200, selectFields(body, mask, FILE_LIST_SCHEMA as unknown as Record<string, Record<string, unknown> | true>));
  }

  private metadataFrom(json: Record<string, unknown>): FileMetadataInput {
    const meta: FileMetadataInput = {};
    if (json.name !== undefined) {
      if (typeof json.name !== 'string') throw new ApiError(400, 'invalid', 'Invalid value for name');
      meta.name = json.name;
    }
    if (json.mimeType !== undefined) {
      if (typeof json.mimeType !== 'string') throw new ApiError(400, 'invalid', 'Invalid value for mimeType');
      meta.mimeType = json.mimeType;
    }
    if (json.parents !== undefined) {
      if (!Array.isArray(json.parents) || !json.parents.every((p) => typeof p === 'string')) throw new ApiError(400, 'invalid', 'Invalid value for parents');
      meta.parents = json.parents as string[];
    }
    if (json.trashed !== undefined) {
      if (typeof json.trashed !== 'boolean') throw new ApiError(400, 'invalid', 'Invalid value for trashed');
      meta.trashed = json.trashed;
    }
    if (json.modifiedTime !== undefined) {
      if (typeof json.modifiedTime !== 'string' || Number.isNaN(Date.parse(json.modifiedTime))) throw new ApiError(400, 'invalid', 'Invalid value for modifiedTime');
      meta.modifiedTime = new Date(Date.parse(json.modifiedTime)).toISOString();
    }
    if (json.appProperties !== undefined) {
      const props = json.appProperties as Record<string, unknown>;
      if (typeof props !== 'object' || props === null || !Object.values(props).every((v) => typeof v === 'string' || v === null)) throw new ApiError(400, 'invalid', 'Invalid value for appProperties');
      meta.appProperties = props as Record<string, string | null>;
    }
    return meta;
  }

  private async filesCreateMetadata(x: Exchange): Promise<void> {
    const meta = this.metadataFrom(await this.readJson(x));
    const f = this.createFileRecord(meta, 0, undefined);
    if (f.mimeType !== FOLDER_MIME) await writeEmpty(this.blobPath(f.id));
    await this.sendJson(x, 200, this.renderFile(f, x.url.searchParams.get('fields') ?? undefined));
  }

  private async filesGet(x: Exchange, id: string): Promise<void> {
    const f = this.getFileOr404(id);
    if (x.url.searchParams.get('alt') !== 'media') {
      await this.sendJson(x, 200, this.renderFile(f, x.url.searchParams.get('fields') ?? undefined));
      return;
    }
    if (f.mimeType === FOLDER_MIME || f.mimeType.startsWith('application/vnd.google-apps.')) {
      throw new ApiError(403, 'fileNotDownloadable', 'Only files with binary content can be downloaded.');
    }
    const blocked = this.blockedDownloads.get(f.id);
    if (blocked !== undefined) {
      throw new ApiError(403, blocked, blocked === 'downloadQuotaExceeded' ? 'The download quota for this file has been exceeded.' : 'The user does not have permission to download this file.', 'usageLimits');
    }
    const range = x.req.headers.range;
    let start = 0;
    let end = f.size - 1;
    let partial = false;
    if (range !== undefined) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m && (m[1] !== '' || m[2] !== '')) {
        if (m[1] === '') {
          start = Math.max(0, f.size - Number(m[2]));
        } else {
          start = Number(m[1]);
          if (m[2] !== '') end = Math.min(Number(m[2]), f.size - 1);
        }
        if (start >= f.size || start > end) {
          this.sendEmpty(x, 416, { 'content-range': `bytes */${f.size}` });
          return;
        }
        partial = true;
      }
    }
    const length = Math.max(0, end - start + 1);
    this.served.push({ id: f.id, start, end: start + length });
    if (this.served.length > 10_000) this.served.shift();
    const headers: Record<string, string | number> = { 'content-type': f.mimeType, 'accept-ranges': 'bytes', etag: `"${f.md5Checksum}"` };
    if (partial) headers['content-range'] = `bytes ${start}-${end}/${f.size}`;
    const source = f.contentSeed !== undefined ? { seed: f.contentSeed, start, length } : { path: this.blobPath(f.id), start, length };
    await this.writeBody(x, partial ? 206 : 200, headers, source);
  }

  private async filesUpdateMetadata(x: Exchange, id: string): Promise<void> {
    const f = this.getFileOr404(id);
    const meta = this.metadataFrom(await this.readJson(x));
    this.applyMetadataUpdate(f, meta, x.url.searchParams);
    await this.sendJson(x, 200, this.renderFile(f, x.url.searchParams.get('fields') ?? undefined));
  }

  private applyMetadataUpdate(f: StoredFile, meta: FileMetadataInput, params: URLSearchParams): void {
    if (meta.parents !== undefined) throw new ApiError(403, 'fieldNotWritable', 'The resource body includes fields which are not directly writable.');
    const add = (params.get('addParents') ?? '').split(',').filter(Boolean);
    const remove = (params.get('removeParents') ?? '').split(',').filter(Boolean);
    const added = add.length ? this.resolveParents(add) : [];
    const removed = remove.map((p) => (p === 'root' ? this.rootFolderId : p));
    const parents = [...f.parents.filter((p) => !removed.includes(p)), ...added.filter((p) => !f.parents.includes(p))];
    if (parents.length > 1) throw new ApiError(403, 'cannotAddParent', 'Increasing the number of parents is not allowed.');
    if (parents.length === 0) throw new ApiError(400, 'cannotRemoveParent', 'A file must have a parent.');
    for (const p of f.parents) if (!parents.includes(p)) this.removeChild(p, f.id);
    for (const p of parents) this.addChild(p, f.id);
    f.parents = parents;
    if (meta.name !== undefined) f.name = meta.name;
    if (meta.mimeType !== undefined) f.mimeType = meta.mimeType;
    if (meta.trashed !== undefined) f.trashed = meta.trashed;
    if (meta.appProperties !== undefined) f.appProperties = mergeProperties(f.appProperties, meta.appProperties);
    f.modifiedTime = meta.modifiedTime ?? new Date().toISOString();
    f.version++;
    this.recordChange(f.id);
  }

  private async filesDelete(x: Exchange, id: string): Promise<void> {
    const f = this.getFileOr404(id);
    if (f.id === this.rootFolderId) throw new ApiError(403, 'insufficientFilePermissions', 'The user does not have sufficient permissions for this file.');
    // Deleting a folder deletes what is inside it, as on Drive; iterative to bound the stack.
    const doomed: StoredFile[] = [f];
    for (let i = 0; i < doomed.length; i++) {
      for (const childId of this.children.get(doomed[i].id) ?? []) {
        const child = this.files.get(childId);
        if (child) doomed.push(child);
      }
    }
    for (const d of doomed) {
      this.files.delete(d.id);
      this.children.delete(d.id);
      for (const p of d.parents) this.removeChild(p, d.id);
      this.recordChange(d.id, 'file', d.driveId);
      if (d.mimeType !== FOLDER_MIME) await rm(this.blobPath(d.id), { force: true });
    }
    this.sendEmpty(x, 204);
  }

  /** POST /upload/drive/v3/files (create) or PATCH /upload/drive/v3/files/ID (update), any uploadType. */
  private async upload(x: Exchange, fileId: string | undefined): Promise<void> {
    const type = x.url.searchParams.get('uploadType');
    const existing = fileId === undefined ? undefined : this.getFileOr404(fileId);
    const fields = x.url.searchParams.get('fields') ?? undefined;
    if (type === 'resumable') {
      const meta = this.metadataFrom(await this.readJson(x));
      const totalHeader = x.req.headers['x-upload-content-length'];
      const total = totalHeader === undefined ? undefined : Number(totalHeader);
      if (total !== undefined && (!Number.isInteger(total) || total < 0)) throw new ApiError(400, 'invalid', 'Invalid X-Upload-Content-Length');
      if (total !== undefined) this.checkQuota(total - (existing?.size ?? 0));
      if (!existing) this.resolveParents(meta.parents);
      const contentType = x.req.headers['x-upload-content-type'];
      if (meta.mimeType === undefined && typeof contentType === 'string' && !existing) meta.mimeType = contentType;
      const session = await this.newSession(fileId, meta, total, fields);
      const location = `${this.rootUrl}upload/drive/v3/files${fileId ? `/${fileId}` : ''}?uploadType=resumable&upload_id=${session.id}`;
      this.sendEmpty(x, 200, { location, 'x-guploader-uploadid': session.id });
      return;
    }
    if (type === 'multipart') {
      const contentType = x.req.headers['content-type'] ?? '';
      const boundary = /boundary=("?)([^";]+)\1/i.exec(contentType)?.[2];
      if (!/^multipart\/related/i.test(contentType) || !boundary) throw new ApiError(400, 'badContent', 'Bad multipart request: missing boundary');
      const body = await this.readBody(x, MAX_MULTIPART_BODY);
      const parts = splitMultipart(body, boundary);
      if (parts.length !== 2) throw new ApiError(400, 'badContent', `Bad multipart request: ${parts.length} parts`);
      let json: unknown;
      try {
        json = JSON.parse(parts[0].body.toString('utf8'));
      } catch {
        throw new ApiError(400, 'parseError', 'Parse Error');
      }
      const meta = this.metadataFrom(json as Record<string, unknown>);
      const media = parts[1];
      if (meta.mimeType === undefined && !existing) meta.mimeType = media.contentType;
      const f = await this.storeContent(existing, meta, x.url.searchParams, [media.body]);
      await this.sendJson(x, 200, this.renderFile(f, fields));
      return;
    }
    if (type === 'media') {
      const contentType = x.req.headers['content-type'];
      const declared = Number(x.req.headers['content-length'] ?? 0);
      this.checkQuota(declared - (existing?.size ?? 0));
      const meta: FileMetadataInput = existing ? {} : { mimeType: typeof contentType === 'string' ? contentType : undefined };
      const f = await this.storeContent(existing, meta, x.url.searchParams, this.bodyChunks(x, Number.MAX_SAFE_INTEGER));
      await this.sendJson(x, 200, this.renderFile(f, fields));
      return;
    }
    throw new ApiError(400, 'invalid', `Invalid value for uploadType: ${type}`, 'global', { location: 'uploadType', locationType: 'parameter' });
  }

  /** Writes content to a temp file, then makes it the file's blob (a new file, or a new version of `existing`). */
  private async storeContent(existing: StoredFile | undefined, meta: FileMetadataInput, params: URLSearchParams, chunks: Iterable<Buffer> | AsyncIterable<Buffer>): Promise<StoredFile> {
    const temp = join(this.dir, 'sessions', `direct-${base64url(randomBytes(9))}`);
    const hash = createHash('md5');
    let size = 0;
    const fh = await open(temp, 'w');
    try {
      for await (const chunk of chunks) {
        hash.update(chunk);
        await fh.write(chunk, 0, chunk.length, size);
        size += chunk.length;
      }
    } catch (e) {
      await fh.close();
      await rm(temp, { force: true });
      throw e;
    }
    await fh.close();
    try {
      this.checkQuota(size - (existing?.size ?? 0));
    } catch (e) {
      await rm(temp, { force: true });
      throw e;
    }
    return this.commitContent(existing, meta, params, temp, size, hash.digest('hex'));
  }

  private async commitContent(existing: StoredFile | undefined, meta: FileMetadataInput, params: URLSearchParams, temp: string, size: number, md5: string): Promise<StoredFile> {
    this.statsData.uploadBytesPersisted += size;
    if (existing) {
      if (!this.files.has(existing.id)) {
        await rm(temp, { force: true });
        throw new ApiError(404, 'notFound', `File not found: ${existing.id}.`);
      }
      await rename(temp, this.blobPath(existing.id));
      existing.size = size;
      existing.md5Checksum = md5;
      existing.contentSeed = undefined;
      existing.headRevisionId = `0B${md5}.${existing.version + 1}`;
      this.applyMetadataUpdate(existing, meta, params);
      return existing;
    }
    let f: StoredFile;
    try {
      f = this.createFileRecord(meta, size, md5);
    } catch (e) {
      await rm(temp, { force: true });
      throw e;
    }
    await rename(temp, this.blobPath(f.id));
    return f;
  }

  private async newSession(fileId: string | undefined, metadata: FileMetadataInput, total: number | undefined, fields: string | undefined): Promise<UploadSession> {
    if (this.sessions.size >= MAX_SESSIONS) {
      // Drop the least recently used session, as an expired one.
      let oldest: UploadSession | undefined;
      for (const s of this.sessions.values()) if (!oldest || s.lastUsed < oldest.lastUsed) oldest = s;
      if (oldest) {
        this.sessions.delete(oldest.id);
        await rm(oldest.path, { force: true });
      }
    }
    const id = base64url(randomBytes(18));
    const path = join(this.dir, 'sessions', id);
    await writeEmpty(path);
    const session: UploadSession = { id, fileId, metadata, total, committed: 0, hash: createHash('md5'), path, fields, lastUsed: Date.now(), queue: Promise.resolve(), completedFileId: undefined };
    this.sessions.set(id, session);
    return session;
  }

  private async resumableChunk(x: Exchange, uploadId: string): Promise<void> {
    const session = this.sessions.get(uploadId);
    if (!session) throw new ApiError(404, 'notFound', 'Upload session not found or expired.');
    // One request at a time per session, so a probe after a dropped connection sees what that connection left.
    const previous = session.queue;
    let release = () => {};
    session.queue = new Promise<void>((resolve) => (release = resolve));
    await previous;
    try {
      await this.resumableChunkLocked(x, session);
    } finally {
      release();
    }
  }

  private async resumableChunkLocked(x: Exchange, session: UploadSession): Promise<void> {
    session.lastUsed = Date.now();
    if (!this.sessions.has(session.id)) throw new ApiError(404, 'notFound', 'Upload session not found or expired.');
    const range = parseContentRange(x.req.headers['content-range']);
    const declaredLength = Number(x.req.headers['content-length'] ?? 0);
    if (!range) {
      if (declaredLength === 0 && session.total === undefined) throw new ApiError(400, 'badRequest', 'Missing Content-Range');
      throw new ApiError(400, 'badRequest', 'Invalid Content-Range');
    }
    if (range.total !== undefined) {
      if (session.total !== undefined && session.total !== range.total) throw new ApiError(400, 'badRequest', `Content-Range total ${range.total} differs from ${session.total}`);
      session.total = range.total;
    }
    if ('probe' in range || session.completedFileId !== undefined) {
      for await (const _ of this.bodyChunks(x, Number.MAX_SAFE_INTEGER)) {
        // A chunk resent to a finished session is read and dropped.
      }
      await this.answerSession(x, session);
      return;
    }
    if (range.end < range.start || declaredLength !== range.end - range.start + 1) throw new ApiError(400, 'badRequest', 'Content-Range does not match Content-Length');
    if (session.total !== undefined && range.end >= session.total) throw new ApiError(400, 'badRequest', 'Content-Range past the declared total');
    if (range.start > session.committed) throw new ApiError(400, 'badRequest', `Chunk starts at ${range.start}, but only ${session.committed} bytes are persisted`);
    this.checkQuota(range.end + 1 - (session.fileId ? (this.files.get(session.fileId)?.size ?? 0) : 0));
    const fh = await open(session.path, 'r+');
    let position = range.start;
    let written = session.committed;
    let gone: unknown;
    try {
      for await (const chunk of this.bodyChunks(x, declaredLength)) {
        // Bytes the session already holds (a client resending after an ambiguous failure) are skipped.
        const skip = Math.max(0, written - position);
        if (skip < chunk.length) {
          await fh.write(chunk, skip, chunk.length - skip, position + skip);
          written = position + chunk.length;
        }
        position += chunk.length;
      }
    } catch (e) {
      gone = e;
    }
    try {
      const isFinal = gone === undefined && session.total !== undefined && written === session.total;
      const keep = isFinal ? written : Math.floor(written / UPLOAD_UNIT) * UPLOAD_UNIT;
      await this.commitSessionBytes(session, fh, Math.max(keep, session.committed));
    } finally {
      await fh.close();
    }
    if (gone !== undefined) throw gone;
    await this.answerSession(x, session);
  }

  /** Makes `upTo` bytes of the session final (hashing them in order) and drops anything beyond. */
  private async commitSessionBytes(session: UploadSession, fh: FileHandle, upTo: number): Promise<void> {
    const buf = Buffer.allocUnsafe(Math.min(IO_SLICE * 4, Math.max(1, upTo - session.committed)));
    while (session.committed < upTo) {
      const n = Math.min(buf.length, upTo - session.committed);
      const { bytesRead } = await fh.read(buf, 0, n, session.committed);
      if (bytesRead !== n) throw new Error('session file shorter than written');
      session.hash.update(buf.subarray(0, n));
      session.committed += n;
      this.statsData.uploadBytesPersisted += n;
    }
    await fh.truncate(session.committed);
  }

  private async answerSession(x: Exchange, session: UploadSession): Promise<void> {
    if (session.completedFileId !== undefined) {
      await this.sendJson(x, 200, this.renderFile(this.getFileOr404(session.completedFileId), session.fields));
      return;
    }
    if (session.total !== undefined && session.committed === session.total) {
      const existing = session.fileId ? this.getFileOr404(session.fileId) : undefined;
      // commitContent counts persisted bytes again; the session already did.
      this.statsData.uploadBytesPersisted -= session.committed;
      const f = await this.commitContent(existing, existing ? {} : session.metadata, new URLSearchParams(), session.path, session.committed, session.hash.digest('hex'));
      session.completedFileId = f.id;
      await this.sendJson(x, 200, this.renderFile(f, session.fields));
      return;
    }
    const headers: Record<string, string> = { 'x-guploader-uploadid': session.id };
    if (session.committed > 0) headers.range = `bytes=0-${session.committed - 1}`;
    this.sendEmpty(x, 308, headers, 'Resume Incomplete');
  }

  // ---- OAuth -------------------------------------------------------------------------

  private async authorize(x: Exchange): Promise<void> {
    const p = x.url.searchParams;
    const clientId = p.get('client_id') ?? '';
    const redirectUri = p.get('redirect_uri') ?? '';
    const state = p.get('state');
    if (!this.clients.has(clientId)) {
      await this.sendText(x, 401, 'Error 401: invalid_client. The OAuth client was not found.');
      return;
    }
    let redirect: URL;
    try {
      redirect = new URL(redirectUri);
    } catch {
      await this.sendText(x, 400, 'Error 400: redirect_uri_mismatch');
      return;
    }
    if (redirect.protocol !== 'http:' || (redirect.hostname !== '127.0.0.1' && redirect.hostname !== 'localhost' && redirect.hostname !== '[::1]')) {
      await this.sendText(x, 400, 'Error 400: redirect_uri_mismatch (installed apps must use a loopback address)');
      return;
    }
    if (p.get('response_type') !== 'code') {
      await this.sendText(x, 400, 'Error 400: unsupported_response_type');
      return;
    }
    if (this.consent === 'deny') {
      redirect.searchParams.set('error', 'access_denied');
    } else {
      const challenge = p.get('code_challenge') ?? undefined;
      if (challenge !== undefined && p.get('code_challenge_method') !== 'S256') {
        await this.sendText(x, 400, 'Error 400: invalid_request (code_challenge_method must be S256)');
        return;
      }
      const code = `4/${base64url(randomBytes(24))}`;
      if (this.authCodes.size >= MAX_TOKENS) this.authCodes.clear();
      this.authCodes.set(code, { clientId, redirectUri, challenge, scope: p.get('scope') ?? '', expiresAt: Date.now() + 600_000 });
      redirect.searchParams.set('code', code);
      redirect.searchParams.set('scope', p.get('scope') ?? '');
    }
    if (state !== null) redirect.searchParams.set('state', state);
    this.sendEmpty(x, 302, { location: redirect.toString() });
  }

  private async sendText(x: Exchange, status: number, text: string): Promise<void> {
    await this.writeBody(x, status, { 'content-type': 'text/plain; charset=utf-8' }, { buffer: Buffer.from(text) });
  }

  private async token(x: Exchange): Promise<void> {
    const body = await this.readBody(x, MAX_FORM_BODY);
    if (this.tokenEndpointMode === 'garbage') {
      await this.writeBody(x, 200, { 'content-type': 'text/html; charset=utf-8' }, { buffer: Buffer.from('<html><body>Service temporarily in maintenance</body></html>') });
      return;
    }
    const form = new URLSearchParams(body.toString('utf8'));
    const fail = (status: number, error: string, description: string) => this.sendJson(x, status, { error, error_description: description });
    const grant = form.get('grant_type');
    const clientOk = () => {
      const id = form.get('client_id') ?? '';
      return this.clients.has(id) && this.clients.get(id) === (form.get('client_secret') ?? '');
    };
    if (grant === 'authorization_code') {
      if (!clientOk()) return fail(401, 'invalid_client', 'The OAuth client was not found.');
      const code = this.authCodes.get(form.get('code') ?? '');
      if (!code || code.expiresAt < Date.now() || code.clientId !== form.get('client_id')) return fail(400, 'invalid_grant', 'Malformed auth code.');
      if (code.redirectUri !== form.get('redirect_uri')) return fail(400, 'redirect_uri_mismatch', 'Bad Request');
      if (code.challenge !== undefined) {
        const verifier = form.get('code_verifier') ?? '';
        if (createHash('sha256').update(verifier).digest('base64url') !== code.challenge) return fail(400, 'invalid_grant', 'Invalid code verifier.');
      }
      this.authCodes.delete(form.get('code') ?? '');
      const refresh = this.issueRefreshToken(code.clientId, code.scope);
      return this.sendJson(x, 200, { access_token: this.issueAccessToken(this.accessTokenTtlSec, code.scope), expires_in: this.accessTokenTtlSec, refresh_token: refresh, scope: code.scope, token_type: 'Bearer' });
    }
    if (grant === 'refresh_token') {
      if (!clientOk()) return fail(401, 'invalid_client', 'The OAuth client was not found.');
      const refresh = this.refreshTokens.get(form.get('refresh_token') ?? '');
      if (!refresh || refresh.clientId !== form.get('client_id')) return fail(400, 'invalid_grant', 'Token has been expired or revoked.');
      return this.sendJson(x, 200, { access_token: this.issueAccessToken(this.accessTokenTtlSec, refresh.scope), expires_in: this.accessTokenTtlSec, scope: refresh.scope, token_type: 'Bearer' });
    }
    if (grant === 'urn:ietf:params:oauth:grant-type:jwt-bearer') {
      const claims = this.verifyAssertion(form.get('assertion') ?? '');
      if (typeof claims === 'string') return fail(400, 'invalid_grant', claims);
      return this.sendJson(x, 200, { access_token: this.issueAccessToken(), expires_in: this.accessTokenTtlSec, token_type: 'Bearer' });
    }
    return fail(400, 'unsupported_grant_type', `Invalid grant_type: ${grant ?? ''}`);
  }

  /** Checks a JWT bearer assertion; a string is the reason it was refused. */
  private verifyAssertion(assertion: string): Record<string, unknown> | string {
    const parts = assertion.split('.');
    if (parts.length !== 3) return 'Invalid JWT: Token must be a short-lived token and in a reasonable timeframe';
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8')) as Record<string, unknown>;
      claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8')) as Record<string, unknown>;
    } catch {
      return 'Invalid JWT: not JSON';
    }
    if (header.alg !== 'RS256') return 'Invalid JWT: alg must be RS256';
    const key = typeof claims.iss === 'string' ? this.serviceAccounts.get(claims.iss) : undefined;
    if (!key) return 'Invalid JWT Signature.';
    const ok = verifySignature('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), key, Buffer.from(parts[2], 'base64url'));
    if (!ok) return 'Invalid JWT Signature.';
    const now = Date.now() / 1000;
    if (claims.aud !== this.tokenUrl) return `Invalid JWT: audience must be ${this.tokenUrl}`;
    if (typeof claims.exp !== 'number' || typeof claims.iat !== 'number' || claims.exp < now || claims.iat > now + 300 || claims.exp - claims.iat > 3600) {
      return 'Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.';
    }
    if (typeof claims.scope !== 'string' || !claims.scope) return 'Invalid JWT: no scope';
    return claims;
  }
}

async function writeEmpty(path: string): Promise<void> {
  const fh = await open(path, 'w');
  await fh.close();
}

/** Splits a multipart/related body into parts (headers parsed for Content-Type only). */
function splitMultipart(body: Buffer, boundary: string): Array<{ contentType: string | undefined; body: Buffer }> {
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: Array<{ contentType: string | undefined; body: Buffer }> = [];
  let pos = body.indexOf(delimiter);
  if (pos < 0) return parts;
  for (let guard = 0; guard < 16; guard++) {
    pos += delimiter.length;
    if (body[pos] === 0x2d && body[pos + 1] === 0x2d) return parts; // closing `--`
    if (body[pos] === 0x0d && body[pos + 1] === 0x0a) pos += 2;
    const headerEnd = body.indexOf('\r\n\r\n', pos);
    if (headerEnd < 0) return parts;
    const headerText = body.subarray(pos, headerEnd).toString('latin1');
    const contentType = /^content-type:\s*(.+)$/im.exec(headerText)?.[1]?.trim();
    const next = body.indexOf(delimiter, headerEnd + 4);
    if (next < 0) return parts;
    let end = next;
    if (body[end - 2] === 0x0d && body[end - 1] === 0x0a) end -= 2;
    parts.push({ contentType, body: body.subarray(headerEnd + 4, end) });
    pos = next;
  }
  return parts;
}

