/**
 * The one client every Google Drive call goes through: the `@googleapis/drive` v3 client
 * for ordinary calls, the auth client's `request` for resumable uploads (the library has no
 * resumable protocol), a pacer in front of both, retries with exponential backoff and full
 * jitter, a token refresh on 401, and counters per method.
 *
 * Retried: 403 `userRateLimitExceeded`/`rateLimitExceeded`, 408, 429, 5xx, connection
 * resets, timeouts and short bodies, up to `maxAttempts` attempts per call. Everything
 * else becomes a RemoteError at once: 404 'not-found', 403 `storageQuotaExceeded` 'quota',
 * 401 after a refresh (or a refused refresh) 'auth', the rest 'io'. Messages carry the
 * method, the status and Drive's reason, never tokens or session URIs.
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable } from 'node:stream';
import { drive, type drive_v3, type MethodOptions } from '@googleapis/drive';
import type { DriveAuth } from './credentials';
import { oauthErrorText } from './credentials';
import { backoffDelay, Pacer } from './pacer';
import { RemoteError, type ReadProgress, type RemoteCounters, type RequestOutcome } from './remote';

export const FOLDER_MIME = 'application/vnd.google-apps.folder';
/** Resumable upload chunks must be multiples of this, except the last. */
export const RESUMABLE_UNIT = 256 * 1024;

export interface DriveClientSettings {
  /** Drive API root, `https://www.googleapis.com/` (an emulator's address in tests). */
  rootUrl: string;
  /** The token endpoint, so a refused refresh can be told from a refused call. */
  tokenUrl: string;
  minSpacingMs: number;
  maxConcurrency: number;
  /** Attempts per call (and, for an upload, per stretch without progress). */
  maxAttempts: number;
  retryBaseMs: number;
  retryMaxMs: number;
  requestTimeoutMs: number;
  /** Resumable upload chunk size, a multiple of 256 KiB. */
  chunkSize: number;
  /** Uploads up to this size go as one multipart request; larger ones resumable. */
  multipartMaxBytes: number;
}

/** Content to upload read in pieces, so a large file is never whole in memory (a Buffer is one too, through bufferSource). */
export interface UploadSource {
  size: number;
  read(offset: number, length: number): Buffer;
}

/**
 * A resumable upload's session kept by the caller (in its journal), so an upload cut off by
 * a crash goes on from what Drive holds instead of starting over. `uri` is a session opened
 * earlier for these very bytes (the caller checks that); `opened` hears of every new session
 * before any byte is sent through it.
 */
export interface UploadSessionStore {
  uri: string | undefined;
  opened(uri: string): void;
}

export function bufferSource(data: Buffer): UploadSource {
  return { size: data.length, read: (offset, length) => data.subarray(offset, offset + length) };
}

export interface DriveFile {
  id: string;
  name: string;
  mimeType: string;
  parents: string[];
  size: number;
  md5Checksum: string | undefined;
  createdTime: string | undefined;
  trashed: boolean;
}

/** The fields every call asks for (Drive returns only `id,name,mimeType,kind` otherwise). */
export const FILE_FIELDS = 'id,name,mimeType,parents,size,md5Checksum,createdTime,trashed';

/** Keep-alive agents of our own (not the global ones), so closing a remote ends its sockets. */
export class KeepAliveAgents {
  private readonly http: HttpAgent;
  private readonly https: HttpsAgent;

  constructor(maxSockets: number) {
    this.http = new HttpAgent({ keepAlive: true, maxSockets });
    this.https = new HttpsAgent({ keepAlive: true, maxSockets });
  }

  readonly choose = (url: URL): HttpAgent => (url.protocol === 'http:' ? this.http : this.https);

  destroy(): void {
    this.http.destroy();
    this.https.destroy();
  }
}

type Failure =
  | { kind: 'retry'; counter: string; message: string; retryAfterMs: number | undefined; ambiguous: boolean }
  | { kind: 'unauthorized'; message: string }
  | { kind: 'fatal'; error: RemoteError; status: number | undefined };

/** A body shorter than asked for: the connection was cut and the client did not notice. */
class ShortBody extends Error {}

/** The session URI stopped working (expired or unknown): the upload starts over. */
class SessionGone extends Error {}

interface HttpResponseLike {
  status: number;
  headers: unknown;
  data: unknown;
}

export class DriveClient {
  readonly api: drive_v3.Drive;
  private readonly pacer: Pacer;
  private readonly counts: RemoteCounters = {};
  /** Requests by "method\tstatus": how each attempt ended (ok, 429, 503, network ...). */
  private readonly outcomes = new Map<string, number>();
  private readonly rootUrl: string;

  /**
   * @param agents the keep-alive agents every request uses (give the same to the DriveAuth
   *   for its token requests): close() destroys them, ending every socket.
   */
  constructor(
    readonly auth: DriveAuth,
    private readonly settings: DriveClientSettings,
    private readonly agents: KeepAliveAgents,
    private readonly random: () => number = Math.random,
  ) {
    if (!Number.isInteger(settings.chunkSize) || settings.chunkSize <= 0 || settings.chunkSize % RESUMABLE_UNIT !== 0) {
      throw new Error(`upload chunk size must be a positive multiple of 256 KiB, not ${settings.chunkSize}`);
    }
    if (!(settings.maxAttempts >= 1)) throw new Error(`max attempts must be at least 1, not ${settings.maxAttempts}`);
    this.rootUrl = settings.rootUrl.endsWith('/') ? settings.rootUrl : `${settings.rootUrl}/`;
    this.pacer = new Pacer(settings.minSpacingMs, settings.maxConcurrency);
    this.api = drive({ version: 'v3', auth: auth.client, rootUrl: this.rootUrl });
  }

  counters(): RemoteCounters {
    const out: RemoteCounters = { ...this.counts };
    if (this.auth.tokenRequests) out['oauth.token'] = this.auth.tokenRequests;
    return out;
  }

  requestOutcomes(): RequestOutcome[] {
    return [...this.outcomes].map(([k, requests]) => {
      const [method, status] = k.split('\t');
      return { method, status, requests };
    });
  }

  /** Notes how one attempt of `method` ended: ok, the HTTP status of a failure, or what cut it short. */
  private observed<T>(method: string, attempt: Promise<T>): Promise<T> {
    const note = (status: string) => {
      const k = `${method}\t${status}`;
      this.outcomes.set(k, (this.outcomes.get(k) ?? 0) + 1);
    };
    return attempt.then(
      (r) => {
        // Callers unwrap the response, so a success is "ok" (2xx, or 308 mid-upload).
        note('ok');
        return r;
      },
      (e: unknown) => {
        const status = (e as { response?: { status?: unknown } } | undefined)?.response?.status;
        note(typeof status === 'number' ? String(status) : typeof e === 'object' && e !== null && isNetworkError(e) ? 'network' : 'error');
        throw e;
      },
    );
  }

  async close(): Promise<void> {
    this.pacer.close();
    this.agents.destroy();
  }

  // ---- calls -------------------------------------------------------------------------

  async getFile(fileId: string): Promise<DriveFile> {
    return this.call('files.get', async (o) => toDriveFile((await this.api.files.get({ fileId, fields: FILE_FIELDS, supportsAllDrives: true }, o)).data));
  }

  /** One item's metadata, the fields asked for (the writable Drive view reads a file's head revision before replacing its content). */
  async getItem(fileId: string, fields: string): Promise<drive_v3.Schema$File> {
    return this.call('files.get', async (o) => (await this.api.files.get({ fileId, fields, supportsAllDrives: true }, o)).data);
  }

  /** Every file matching `q`, all pages. */
  async listFiles(q: string): Promise<DriveFile[]> {
    const out: DriveFile[] = [];
    let pageToken: string | undefined;
    // Bounded: a million pages of a thousand is more than any Drive holds.
    for (let page = 0; page < 1_000_000; page++) {
      const data = await this.call('files.list', async (o) =>
        (await this.api.files.list({ q, pageSize: 1000, pageToken, fields: `nextPageToken,files(${FILE_FIELDS})`, spaces: 'drive', supportsAllDrives: true, includeItemsFromAllDrives: true }, o)).data,
      );
      for (const f of data.files ?? []) out.push(toDriveFile(f));
      pageToken = data.nextPageToken ?? undefined;
      if (!pageToken) return out;
    }
    throw new RemoteError(`Drive files.list: too many pages for ${q}`, 'io');
  }

  // ---- the Drive view's metadata calls: one page each, raw fields (the caller's mask) ----

  /** changes.getStartPageToken, for My Drive or one shared drive. */
  async startPageToken(driveId?: string): Promise<string> {
    const data = await this.call('changes.getStartPageToken', async (o) => (await this.api.changes.getStartPageToken({ supportsAllDrives: true, ...(driveId ? { driveId } : {}) }, o)).data);
    if (typeof data.startPageToken !== 'string' || !data.startPageToken) throw new RemoteError('Drive changes.getStartPageToken answered without a token', 'io');
    return data.startPageToken;
  }

  /** One page of files.list with the caller's `q` and `fields` mask (a shared drive's items with `driveId`). */
  async listFilesPage(p: { q: string; fields: string; pageToken?: string; driveId?: string }): Promise<drive_v3.Schema$FileList> {
    return this.call('files.list', async (o) =>
      (await this.api.files.list({
        q: p.q,
        pageSize: 1000,
        pageToken: p.pageToken,
        fields: p.fields,
        spaces: 'drive',
        supportsAllDrives: true,
        includeItemsFromAllDrives: true,
        ...(p.driveId ? { corpora: 'drive', driveId: p.driveId } : {}),
      }, o)).data,
    );
  }

  /** One page of changes.list from `pageToken`. */
  async listChangesPage(p: { pageToken: string; fields: string; driveId?: string }): Promise<drive_v3.Schema$ChangeList> {
    return this.call('changes.list', async (o) =>
      (await this.api.changes.list({
        pageToken: p.pageToken,
        pageSize: 1000,
        fields: p.fields,
        spaces: 'drive',
        includeRemoved: true,
        supportsAllDrives: true,
        includeItemsFromAllDrives: true,
        ...(p.driveId ? { driveId: p.driveId } : {}),
      }, o)).data,
    );
  }

  /** Changes an item's metadata: trash/untrash, rename, or move (add and remove parents). */
  async updateMetadata(fileId: string, body: { trashed?: boolean; name?: string }, move?: { addParents: string; removeParents: string }): Promise<DriveFile> {
    return this.call('files.update', async (o) => toDriveFile((await this.api.files.update({ fileId, requestBody: body, fields: FILE_FIELDS, supportsAllDrives: true, ...(move ?? {}) }, o)).data));
  }

  /**
   * Creates a folder. `findExisting` runs before a retry that follows an ambiguous failure
   * (the folder may have been made), so a retry does not make a second one.
   */
  async createFolder(name: string, parentId: string, findExisting?: () => Promise<DriveFile | undefined>): Promise<DriveFile> {
    return this.call(
      'files.create',
      async (o) => toDriveFile((await this.api.files.create({ requestBody: { name, mimeType: FOLDER_MIME, parents: [parentId] }, fields: FILE_FIELDS, supportsAllDrives: true }, o)).data),
      findExisting,
    );
  }

  /**
   * Uploads a new file: one multipart request up to `multipartMaxBytes`, a resumable
   * session above. `findExisting` (looking for a file with this name, size and md5)
   * guards every retry that might otherwise create a duplicate.
   */
  async createFile(metadata: { name: string; parents: string[]; mimeType: string }, data: Buffer, findExisting?: () => Promise<DriveFile | undefined>): Promise<DriveFile> {
    if (data.length <= this.settings.multipartMaxBytes) {
      const file = await this.call(
        'files.create',
        async (o) => toDriveFile((await this.api.files.create({ requestBody: metadata, media: { mimeType: metadata.mimeType, body: Readable.from([data]) }, fields: FILE_FIELDS, supportsAllDrives: true }, o)).data),
        findExisting,
      );
      this.add('bytes.up', data.length);
      return file;
    }
    return this.resumableUpload('POST', `${this.rootUrl}upload/drive/v3/files`, metadata, bufferSource(data), findExisting);
  }

  /** Replaces a file's content (a new revision, same id). */
  async updateContent(fileId: string, data: Buffer, mimeType = 'application/octet-stream'): Promise<DriveFile> {
    if (data.length <= this.settings.multipartMaxBytes) {
      const file = await this.call('files.update', async (o) => toDriveFile((await this.api.files.update({ fileId, media: { mimeType, body: Readable.from([data]) }, fields: FILE_FIELDS, supportsAllDrives: true }, o)).data));
      this.add('bytes.up', data.length);
      return file;
    }
    return this.resumableUpload('PATCH', `${this.rootUrl}upload/drive/v3/files/${encodeURIComponent(fileId)}`, { mimeType }, bufferSource(data), undefined);
  }

  // ---- the writable Drive view: raw items with the caller's fields mask ----------------

  /**
   * Creates a folder (`data` undefined) or a file with its content (multipart up to
   * `multipartMaxBytes`, resumable above). `findExisting` guards every retry that might
   * otherwise create a second one.
   */
  async createItem(
    metadata: drive_v3.Schema$File,
    data: UploadSource | undefined,
    fields: string,
    findExisting?: () => Promise<drive_v3.Schema$File | undefined>,
    session?: UploadSessionStore,
  ): Promise<drive_v3.Schema$File> {
    const checked = (f: drive_v3.Schema$File) => {
      if (typeof f?.id !== 'string') throw new RemoteError('Drive answered without a file id', 'io');
      return f;
    };
    const mimeType = metadata.mimeType ?? 'application/octet-stream';
    if (data === undefined || data.size <= this.settings.multipartMaxBytes) {
      const whole = data?.read(0, data.size);
      // A stream per attempt: a retry must not get the one the failed attempt consumed.
      const media = () => (whole === undefined ? {} : { media: { mimeType, body: Readable.from([whole]) } });
      const file = await this.call('files.create', async (o) => checked((await this.api.files.create({ requestBody: metadata, ...media(), fields, supportsAllDrives: true }, o)).data), findExisting);
      if (whole) this.add('bytes.up', whole.length);
      return file;
    }
    return this.resumableUpload('POST', `${this.rootUrl}upload/drive/v3/files`, { ...metadata, mimeType }, data, findExisting, { fields, parse: checked }, session);
  }

  /** Changes an item's metadata (name, modifiedTime, trashed; a move with add/removeParents) and, with `data`, its content (same id). */
  async updateItem(
    fileId: string,
    metadata: drive_v3.Schema$File,
    data: UploadSource | undefined,
    fields: string,
    move?: { addParents: string; removeParents: string },
    session?: UploadSessionStore,
  ): Promise<drive_v3.Schema$File> {
    const checked = (f: drive_v3.Schema$File) => {
      if (typeof f?.id !== 'string') throw new RemoteError('Drive answered without a file id', 'io');
      return f;
    };
    if (data === undefined || data.size <= this.settings.multipartMaxBytes) {
      const whole = data?.read(0, data.size);
      // A stream per attempt: a retry must not get the one the failed attempt consumed.
      const media = () => (whole === undefined ? {} : { media: { mimeType: 'application/octet-stream', body: Readable.from([whole]) } });
      const file = await this.call('files.update', async (o) => checked((await this.api.files.update({ fileId, requestBody: metadata, ...media(), fields, supportsAllDrives: true, ...(move ?? {}) }, o)).data));
      if (whole) this.add('bytes.up', whole.length);
      return file;
    }
    return this.resumableUpload('PATCH', `${this.rootUrl}upload/drive/v3/files/${encodeURIComponent(fileId)}`, { ...metadata }, data, undefined, { fields, parse: checked, query: move }, session);
  }

  /** Deletes a file for good (not to the trash); false if it was not there. */
  async deleteFile(fileId: string): Promise<boolean> {
    try {
      await this.call('files.delete', (o) => this.api.files.delete({ fileId, supportsAllDrives: true }, o));
      return true;
    } catch (e) {
      if (e instanceof RemoteError && e.code === 'not-found') return false;
      throw e;
    }
  }

  /**
   * Reads a file's content, or `length` bytes at `offset` (a Range request). Resolves with
   * exactly the bytes asked for: a short body is retried, a range past the end rejects.
   */
  async download(fileId: string, offset?: number, length?: number, onProgress?: ReadProgress, signal?: AbortSignal): Promise<Buffer> {
    const ranged = offset !== undefined || length !== undefined;
    const start = offset ?? 0;
    if (length === 0) return Buffer.alloc(0);
    const range = length === undefined ? `bytes=${start}-` : `bytes=${start}-${start + length - 1}`;
    const body = await this.call('files.get', async (o) => {
      let answer;
      const streamed = onProgress !== undefined && length !== undefined;
      try {
        if (signal?.aborted) throw new RemoteError('Drive files.get: download cancelled', 'cancelled');
        answer = await this.api.files.get({ fileId, alt: 'media', supportsAllDrives: true }, { ...o, responseType: streamed ? 'stream' : 'arraybuffer', headers: ranged ? { Range: range } : {}, ...(signal ? { signal } : {}) });
      } catch (e) {
        // A cancelled download is not a failure to retry.
        if (signal?.aborted) throw new RemoteError('Drive files.get: download cancelled', 'cancelled');
        const res = (e as { response?: HttpResponseLike }).response;
        if (res?.status !== 416) throw e;
        // Nothing at `start`: the end itself is an empty read, anything beyond is an error.
        const total = Number(/\/(\d+)$/.exec(headerOf(res.headers, 'content-range') ?? '')?.[1]);
        if (length === undefined && total === start) return Buffer.alloc(0);
        throw new RemoteError(`Drive files.get: range ${start}+${length ?? 0} past the end of a ${Number.isFinite(total) ? total : '?'}-byte file`, 'io');
      }
      try {
        if (streamed && answer.status === 206) return await this.receive(answer, answer.data as unknown as Readable, start, length, onProgress);
        const whole = streamed ? await this.readAll(answer.data as unknown as Readable) : Buffer.from(answer.data as unknown as ArrayBuffer);
        return this.checkDownload(answer, whole, ranged, start, length);
      } catch (e) {
        if (signal?.aborted) throw new RemoteError('Drive files.get: download cancelled', 'cancelled');
        throw e;
      }
    });
    this.add('bytes.down', body.length);
    return body;
  }

  /** Reads a 206 answer's body into a buffer of `length` as it arrives, telling `onProgress`. */
  private async receive(answer: HttpResponseLike, stream: Readable, start: number, length: number, onProgress: ReadProgress): Promise<Buffer> {
    const contentRange = headerOf(answer.headers, 'content-range');
    const served = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange ?? '');
    if (!served || Number(served[1]) !== start) {
      stream.destroy();
      throw new ShortBody(`answer covers ${contentRange ?? 'no range'}, asked from ${start}`);
    }
    const total = Number(served[3]);
    if (Number(served[2]) - start + 1 < length) {
      stream.destroy();
      if (Number.isFinite(total) && start + length > total) throw new RemoteError(`Drive files.get: range ${start}+${length} past the end of a ${total}-byte file`, 'io');
      throw new ShortBody(`answer covers ${contentRange}, asked for ${length} bytes`);
    }
    const data = Buffer.allocUnsafe(length);
    let filled = 0;
    // The request's timeout ends with the headers; a body that stalls is cut here.
    let idle: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => stream.destroy(new ShortBody(`no body bytes for ${this.settings.requestTimeoutMs} ms`)), this.settings.requestTimeoutMs);
    };
    try {
      arm();
      for await (const chunk of stream as AsyncIterable<Uint8Array>) {
        if (filled + chunk.length > length) throw new ShortBody(`body longer than the ${length} bytes asked for`);
        data.set(chunk, filled);
        filled += chunk.length;
        arm();
        onProgress(data, filled);
      }
    } catch (e) {
      // Cut off mid-body (a reset, a stall): the read is retried like a short body.
      if (e instanceof ShortBody) throw e;
      throw new ShortBody(`body cut off after ${filled} of ${length} bytes (${(e as Error).message})`);
    } finally {
      clearTimeout(idle);
      stream.destroy();
    }
    if (filled !== length) throw new ShortBody(`body of ${filled} bytes, asked for ${length}`);
    return data;
  }

  private async readAll(stream: Readable): Promise<Buffer> {
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(chunk);
    } catch (e) {
      throw new ShortBody(`body cut off (${(e as Error).message})`);
    }
    return Buffer.concat(chunks);
  }

  private checkDownload(answer: HttpResponseLike, body: Buffer, ranged: boolean, start: number, length: number | undefined): Buffer {
    const contentRange = headerOf(answer.headers, 'content-range');
    const total = contentRange ? Number(/\/(\d+)$/.exec(contentRange)?.[1]) : undefined;
    const encoded = headerOf(answer.headers, 'content-encoding');
    const declared = Number(headerOf(answer.headers, 'content-length'));
    if (!encoded && Number.isFinite(declared) && headerOf(answer.headers, 'content-length') !== undefined && body.length !== declared) {
      throw new ShortBody(`body of ${body.length} bytes, Content-Length ${declared}`);
    }
    if (!ranged) return body;
    if (answer.status === 200) {
      // The server ignored the Range header and sent everything.
      const end = length === undefined ? body.length : start + length;
      if (end > body.length) throw new RemoteError(`Drive files.get: range ${start}+${length ?? 0} past the end of a ${body.length}-byte file`, 'io');
      return body.subarray(start, end);
    }
    const served = /^bytes (\d+)-/.exec(contentRange ?? '');
    if (!served || Number(served[1]) !== start) throw new ShortBody(`answer covers ${contentRange ?? 'no range'}, asked from ${start}`);
    if (length !== undefined && body.length !== length) {
      if (total !== undefined && start + length > total) throw new RemoteError(`Drive files.get: range ${start}+${length} past the end of a ${total}-byte file`, 'io');
      throw new ShortBody(`body of ${body.length} bytes, asked for ${length}`);
    }
    return body;
  }

  // ---- resumable uploads -------------------------------------------------------------

  private async resumableUpload<T = DriveFile>(
    method: 'POST' | 'PATCH',
    url: string,
    metadata: Record<string, unknown>,
    data: UploadSource,
    findExisting: (() => Promise<T | undefined>) | undefined,
    shape: { fields: string; parse: (f: drive_v3.Schema$File) => T; query?: Record<string, string> } = { fields: FILE_FIELDS, parse: toDriveFile as unknown as (f: drive_v3.Schema$File) => T },
    store?: UploadSessionStore,
  ): Promise<T> {
    const mimeType = typeof metadata.mimeType === 'string' ? metadata.mimeType : 'application/octet-stream';
    const apiMethod = method === 'POST' ? 'files.create' : 'files.update';
    // A session kept from before a restart is asked how far it got; gone (404/410), a new one.
    let kept = store?.uri;
    // A session can expire or be forgotten by the server; a few fresh starts, then give up.
    for (let session = 1; ; session++) {
      const resumed = kept !== undefined;
      const started = kept ?? await this.call(apiMethod, async (o) => {
        const res = await this.auth.client.request({
          ...o,
          url,
          method,
          params: { uploadType: 'resumable', fields: shape.fields, supportsAllDrives: true, ...shape.query },
          headers: { 'Content-Type': 'application/json; charset=UTF-8', 'X-Upload-Content-Type': mimeType, 'X-Upload-Content-Length': String(data.size) },
          data: JSON.stringify(metadata),
          responseType: 'text',
        });
        const location = headerOf(res.headers, 'location');
        if (!location) throw new RemoteError(`Drive ${apiMethod}: a resumable upload was started without a session URI`, 'io');
        return location as string | T;
      }, findExisting);
      kept = undefined;
      if (typeof started !== 'string') return started;
      if (resumed) this.count('upload.resume');
      else store?.opened(started);
      try {
        return shape.parse(await this.sendSession(started, data, mimeType, resumed));
      } catch (e) {
        if (e instanceof SessionGone && resumed) {
          // Expired while the caller was away: not one of the fresh starts' failures.
          this.count('upload.resume.expired');
          session--;
          continue;
        }
        if (!(e instanceof SessionGone) || session >= 3) {
          if (e instanceof SessionGone) throw new RemoteError(`Drive upload: the upload session was lost ${session} times`, 'io');
          throw e;
        }
        this.count('upload.restart');
        const found = await findExisting?.();
        if (found) return found;
      }
    }
  }

  /**
   * Sends `data` through a session, resuming from what the server holds after any failure;
   * `resumed` (a session opened before a restart) starts by asking the server what it holds.
   */
  private async sendSession(sessionUri: string, data: UploadSource, mimeType: string, resumed = false): Promise<drive_v3.Schema$File> {
    const size = data.size;
    let offset = 0;
    let probe = resumed;
    let stalls = 0;
    let refreshed = false;
    // Bounded: a pass moves `offset` forward, spends one of `maxAttempts`, spends the one
    // token refresh allowed between two advances, or is the probe after one of those.
    for (;;) {
      if (this.pacer.isClosed) throw new RemoteError('remote closed', 'io');
      const method = probe ? 'upload.resumable.status' : 'upload.resumable.chunk';
      const end = Math.min(offset + this.settings.chunkSize, size);
      const before = offset;
      let res: HttpResponseLike;
      try {
        res = await this.pacer.run(() => {
          this.count(method);
          return this.observed(method, this.auth.client.request({
            ...this.methodOptions(),
            url: sessionUri,
            method: 'PUT',
            headers: probe || size === 0 ? { 'Content-Range': `bytes */${size}` } : { 'Content-Range': `bytes ${offset}-${end - 1}/${size}`, 'Content-Type': mimeType },
            data: probe || size === 0 ? undefined : data.read(offset, end - offset),
            validateStatus: (s: number) => (s >= 200 && s < 300) || s === 308,
            responseType: 'json',
            maxRedirects: 0,
          }));
        });
      } catch (e) {
        const failure = this.classify(e, method);
        if (failure.kind === 'fatal' && (failure.status === 404 || failure.status === 410)) throw new SessionGone();
        if (failure.kind === 'unauthorized' && !refreshed) {
          refreshed = true;
          this.count('retry.401');
          this.auth.invalidate();
          probe = true;
          continue;
        }
        if (failure.kind === 'retry' && ++stalls < this.settings.maxAttempts) {
          this.count(failure.counter);
          await this.pacer.sleep(this.backoff(stalls, failure.retryAfterMs));
          probe = true;
          continue;
        }
        throw this.toRemoteError(failure, method);
      }
      if (!probe) this.add('bytes.up', end - offset);
      if (res.status !== 308) return res.data as drive_v3.Schema$File;
      const held = headerOf(res.headers, 'range');
      const heldUpTo = held ? Number(/^bytes=0-(\d+)$/.exec(held)?.[1]) + 1 : 0;
      if (!Number.isFinite(heldUpTo) || heldUpTo > size) throw new RemoteError(`Drive ${method}: unusable Range ${held ?? ''} for a ${size}-byte upload`, 'io');
      const wasProbe = probe;
      offset = heldUpTo;
      probe = false;
      if (offset > before) {
        // Progress renews the budgets: a long upload may outlive several tokens.
        stalls = 0;
        refreshed = false;
      } else if (wasProbe && offset < size) {
        // A probe only reports where to go on; the failure before it was already counted.
      } else if (++stalls >= this.settings.maxAttempts) {
        throw new RemoteError(`Drive ${method}: the upload made no progress in ${stalls} attempts (server holds ${offset} of ${size} bytes)`, 'io');
      } else {
        // A chunk that left nothing behind (the server keeps whole 256 KiB units only): back off like a failure.
        this.count('retry.stalled');
        await this.pacer.sleep(this.backoff(stalls, undefined));
      }
      if (offset === size) probe = true;
    }
  }

  // ---- retry machinery ---------------------------------------------------------------

  private methodOptions(): MethodOptions {
    return { rootUrl: this.rootUrl, retry: false, timeout: this.settings.requestTimeoutMs, agent: this.agents.choose };
  }

  /**
   * Runs one API call under the pacer with retries. `beforeRetry` is consulted before a
   * retry that follows an ambiguous failure (the server may have done the work): if it
   * finds the result, that is the answer.
   */
  private async call<T>(method: string, request: (options: MethodOptions) => Promise<T>, beforeRetry?: () => Promise<T | undefined>): Promise<T> {
    let refreshed = false;
    let lookForResult = false;
    for (let attempt = 1; ; attempt++) {
      if (this.pacer.isClosed) throw new RemoteError('remote closed', 'io');
      if (lookForResult && beforeRetry) {
        const found = await beforeRetry();
        if (found) return found;
      }
      try {
        return await this.pacer.run(() => {
          this.count(method);
          return this.observed(method, request(this.methodOptions()));
        });
      } catch (e) {
        const failure = this.classify(e, method);
        if (failure.kind === 'unauthorized' && !refreshed) {
          // A token can be revoked or expire early; one refresh per call, then it is the credentials.
          refreshed = true;
          this.count('retry.401');
          this.auth.invalidate();
          attempt--;
          continue;
        }
        if (failure.kind === 'retry' && attempt < this.settings.maxAttempts) {
          this.count(failure.counter);
          lookForResult = failure.ambiguous;
          await this.pacer.sleep(this.backoff(attempt, failure.retryAfterMs));
          continue;
        }
        throw this.toRemoteError(failure, method);
      }
    }
  }

  private backoff(attempt: number, retryAfterMs: number | undefined): number {
    const delay = backoffDelay(attempt, this.settings.retryBaseMs, this.settings.retryMaxMs, this.random);
    return retryAfterMs === undefined ? delay : Math.min(this.settings.retryMaxMs, Math.max(delay, retryAfterMs));
  }

  private toRemoteError(failure: Failure, method: string): RemoteError {
    if (failure.kind === 'fatal') return failure.error;
    if (failure.kind === 'unauthorized') return new RemoteError(`Drive ${method}: ${failure.message} even after a token refresh; run \`pogfs auth\` again`, 'auth');
    return new RemoteError(`Drive ${method}: ${failure.message} (gave up after ${this.settings.maxAttempts} attempts)`, 'io');
  }

  private classify(e: unknown, method: string): Failure {
    if (e instanceof RemoteError) return { kind: 'fatal', error: e, status: undefined };
    if (e instanceof ShortBody) return { kind: 'retry', counter: 'retry.short', message: `short body (${e.message})`, retryAfterMs: undefined, ambiguous: true };
    const err = e as { response?: HttpResponseLike; config?: { url?: unknown }; code?: unknown; name?: unknown };
    const status = err.response?.status;
    const url = err.config?.url === undefined ? '' : String(err.config.url);
    if (url.startsWith(this.settings.tokenUrl)) {
      // The token refresh itself failed.
      if (status !== undefined && status >= 400 && status < 500) {
        const reason = oauthErrorText(err.response?.data);
        return { kind: 'fatal', status, error: new RemoteError(`Drive ${method}: the token endpoint refused to refresh the credentials (HTTP ${status}${reason ? `, ${reason}` : ''}); run \`pogfs auth\` again`, 'auth') };
      }
      if (status === undefined && !isNetworkError(err)) {
        return { kind: 'fatal', status, error: new RemoteError(`Drive ${method}: the token endpoint answered something that is not a token`, 'auth') };
      }
      return { kind: 'retry', counter: 'retry.token', message: `token endpoint ${status === undefined ? networkText(err) : `HTTP ${status}`}`, retryAfterMs: undefined, ambiguous: false };
    }
    if (status === undefined) {
      if (isNetworkError(err)) return { kind: 'retry', counter: 'retry.network', message: networkText(err), retryAfterMs: undefined, ambiguous: true };
      return { kind: 'fatal', status, error: new RemoteError(`Drive ${method}: ${(e as Error)?.message ?? String(e)}`, 'io') };
    }
    // A streamed answer's error body is not in `data` but in the message (as JSON): the reason
    // decides between a rate limit to retry and a refusal (downloadQuotaExceeded) to give up on.
    const info = apiErrorInfo(err.response?.data ?? (e as Error).message);
    const text = `HTTP ${status}${info.reason ? ` ${info.reason}` : ''}${info.message ? `: ${info.message}` : ''}`;
    const retryAfterMs = retryAfter(err.response?.headers);
    if (status === 401) return { kind: 'unauthorized', message: text };
    if (status === 403 && (info.reason === 'userRateLimitExceeded' || info.reason === 'rateLimitExceeded')) {
      return { kind: 'retry', counter: 'retry.403', message: text, retryAfterMs, ambiguous: false };
    }
    if (status === 429) return { kind: 'retry', counter: 'retry.429', message: text, retryAfterMs, ambiguous: false };
    if (status === 408 || status >= 500) return { kind: 'retry', counter: `retry.${status}`, message: text, retryAfterMs, ambiguous: true };
    if (status === 403 && (info.reason === 'storageQuotaExceeded' || info.reason === 'quotaExceeded')) {
      return { kind: 'fatal', status, error: new RemoteError(`Drive ${method}: out of storage (${text})`, 'quota') };
    }
    if (status === 404) return { kind: 'fatal', status, error: new RemoteError(`Drive ${method}: not found (${text})`, 'not-found') };
    return { kind: 'fatal', status, error: new RemoteError(`Drive ${method}: ${text}`, 'io') };
  }

  private count(name: string): void {
    this.add(name, 1);
  }

  private add(name: string, n: number): void {
    this.counts[name] = (this.counts[name] ?? 0) + n;
  }
}

export function md5Hex(data: Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

function toDriveFile(f: drive_v3.Schema$File | undefined): DriveFile {
  if (!f || typeof f.id !== 'string') throw new RemoteError('Drive answered without a file id', 'io');
  return {
    id: f.id,
    name: f.name ?? '',
    mimeType: f.mimeType ?? '',
    parents: f.parents ?? [],
    size: f.size === undefined || f.size === null ? 0 : Number(f.size),
    md5Checksum: f.md5Checksum ?? undefined,
    createdTime: f.createdTime ?? undefined,
    trashed: f.trashed ?? false,
  };
}

/** A header from either a fetch `Headers` (the auth client's answers) or a plain object (the API client's). */
function headerOf(headers: unknown, name: string): string | undefined {
  if (!headers || typeof headers !== 'object') return undefined;
  const h = headers as { get?: (n: string) => string | null } & Record<string, unknown>;
  if (typeof h.get === 'function') return h.get(name) ?? undefined;
  const v = h[name] ?? h[name.toLowerCase()];
  return v === undefined || v === null ? undefined : String(v);
}

function apiErrorInfo(data: unknown): { reason: string | undefined; message: string | undefined } {
  let value = data;
  if (value instanceof ArrayBuffer || Buffer.isBuffer(value)) value = Buffer.from(value as ArrayBuffer).toString('utf8');
  if (typeof value === 'string') {
    try {
      value = JSON.parse(value);
    } catch {
      return { reason: undefined, message: undefined };
    }
  }
  const error = (value as { error?: { message?: unknown; errors?: Array<{ reason?: unknown }> } } | undefined)?.error;
  if (!error || typeof error !== 'object') return { reason: undefined, message: undefined };
  const reason = error.errors?.[0]?.reason;
  return { reason: typeof reason === 'string' ? reason : undefined, message: typeof error.message === 'string' ? error.message.slice(0, 300) : undefined };
}

function retryAfter(headers: unknown): number | undefined {
  const v = headerOf(headers, 'retry-after');
  if (v === undefined) return undefined;
  const seconds = Number(v);
  return Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
}

const NETWORK_CODES = new Set(['ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ENETUNREACH', 'EHOSTUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);

const TIMEOUT_NAMES = new Set(['AbortError', 'TimeoutError']);

function isTimeout(err: { code?: unknown; name?: unknown; cause?: unknown }): boolean {
  const cause = err.cause as { name?: unknown } | undefined;
  return TIMEOUT_NAMES.has(String(err.name)) || TIMEOUT_NAMES.has(String(err.code)) || (!!cause && TIMEOUT_NAMES.has(String(cause.name)));
}

function isNetworkError(err: { code?: unknown; name?: unknown; cause?: unknown }): boolean {
  if (typeof err.code === 'string' && NETWORK_CODES.has(err.code)) return true;
  const cause = err.cause as { code?: unknown } | undefined;
  return isTimeout(err) || (!!cause && typeof cause.code === 'string' && NETWORK_CODES.has(cause.code));
}

/** What went wrong on the wire, without the URL (a session URI is a credential). */
function networkText(err: { code?: unknown; name?: unknown; cause?: unknown }): string {
  if (isTimeout(err)) return 'request timed out';
  const cause = err.cause as { code?: unknown } | undefined;
  const code = typeof err.code === 'string' ? err.code : typeof cause?.code === 'string' ? cause.code : 'network error';
  return `connection failed (${code})`;
}
