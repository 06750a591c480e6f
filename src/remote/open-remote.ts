/**
 * Opening a remote from its spec (`local:DIR`, `drive:FOLDER`) with settings that all have
 * defaults. Google's endpoints are settings too, so a local Drive emulator stands in for
 * Drive through the very same code path.
 */
import { DriveAuth, DRIVE_FILE_SCOPE, defaultCredentialsPath, readCredentialsFile } from './credentials';
import { DriveClient, KeepAliveAgents, RESUMABLE_UNIT } from './drive-client';
import { DriveRemote } from './drive-remote';
import { LocalRemote } from './local-remote';
import type { Remote } from './remote';
import { parseRemoteSpec } from './remote-spec';

export interface RemoteSettings {
  /** Drive API root URL. */
  driveRootUrl: string;
  /** OAuth token endpoint (refresh, JWT bearer and authorization-code grants). */
  tokenUrl: string;
  /** OAuth authorization endpoint (the consent page `pogfs auth` sends the user to). */
  authUrl: string;
  /** The Drive credentials file. */
  credentialsPath: string;
  /** Minimum time between the starts of two Drive calls. */
  minCallSpacingMs: number;
  /** Drive calls in flight at once. */
  maxConcurrentCalls: number;
  /** Attempts per Drive call before giving up (an upload counts attempts without progress). */
  maxAttempts: number;
  /** Backoff: the first retry waits up to this long, doubling per attempt (full jitter)... */
  retryBaseMs: number;
  /** ...up to this ceiling. */
  retryMaxMs: number;
  /** One HTTP request (an upload chunk included) may take this long. */
  requestTimeoutMs: number;
  /** Resumable upload chunk size, a multiple of 256 KiB. */
  uploadChunkBytes: number;
  /** Objects up to this size are uploaded in one multipart request, larger ones resumable. */
  multipartMaxBytes: number;
}

export const DEFAULT_DRIVE_ROOT_URL = 'https://www.googleapis.com/';
export const DEFAULT_TOKEN_URL = 'https://oauth2.googleapis.com/token';
export const DEFAULT_AUTH_URL = 'https://accounts.google.com/o/oauth2/v2/auth';

export function defaultRemoteSettings(env: NodeJS.ProcessEnv = process.env): RemoteSettings {
  return {
    driveRootUrl: DEFAULT_DRIVE_ROOT_URL,
    tokenUrl: DEFAULT_TOKEN_URL,
    authUrl: DEFAULT_AUTH_URL,
    credentialsPath: defaultCredentialsPath(env),
    minCallSpacingMs: 10,
    maxConcurrentCalls: 4,
    maxAttempts: 10,
    retryBaseMs: 250,
    retryMaxMs: 32_000,
    requestTimeoutMs: 300_000,
    uploadChunkBytes: 8 * 1024 * 1024,
    multipartMaxBytes: 5 * 1024 * 1024,
  };
}

/**
 * Opens a remote. For Drive this reads the credentials (a missing file is RemoteError
 * 'auth' saying to run `pogfs auth`) but makes no call yet: the folder is looked up on
 * first use and created by `init()` or the first write.
 */
export async function openRemote(spec: string, settings: Partial<RemoteSettings> = {}): Promise<Remote> {
  const parsed = parseRemoteSpec(spec);
  if (parsed.kind === 'local') return new LocalRemote(parsed.dir);
  return new DriveRemote(await openDriveClient(settings), parsed.folder);
}

/**
 * The Drive client for the given settings (credentials read, no call made yet). `scopes`
 * matter only for a service account, which asks for them itself; a user token carries the
 * scopes `pogfs auth` was given.
 */
export async function openDriveClient(settings: Partial<RemoteSettings> = {}, scopes: string[] = [DRIVE_FILE_SCOPE]): Promise<DriveClient> {
  const s = { ...defaultRemoteSettings(), ...dropUndefined(settings) };
  checkSettings(s);
  const creds = await readCredentialsFile(s.credentialsPath);
  // Token requests share the API's agents, so close() ends every socket.
  const agents = new KeepAliveAgents(s.maxConcurrentCalls + 2);
  const auth = new DriveAuth(creds, { tokenUrl: s.tokenUrl, source: s.credentialsPath, scopes, agent: agents.choose, timeoutMs: s.requestTimeoutMs });
  return new DriveClient(auth, {
    rootUrl: s.driveRootUrl,
    tokenUrl: s.tokenUrl,
    minSpacingMs: s.minCallSpacingMs,
    maxConcurrency: s.maxConcurrentCalls,
    maxAttempts: s.maxAttempts,
    retryBaseMs: s.retryBaseMs,
    retryMaxMs: s.retryMaxMs,
    requestTimeoutMs: s.requestTimeoutMs,
    chunkSize: s.uploadChunkBytes,
    multipartMaxBytes: s.multipartMaxBytes,
  }, agents);
}

function checkSettings(s: RemoteSettings): void {
  const bad = (what: string) => {
    throw new Error(`remote setting ${what}`);
  };
  if (!Number.isInteger(s.uploadChunkBytes) || s.uploadChunkBytes <= 0 || s.uploadChunkBytes % RESUMABLE_UNIT !== 0) bad(`uploadChunkBytes must be a positive multiple of 256 KiB, not ${s.uploadChunkBytes}`);
  if (!Number.isInteger(s.maxConcurrentCalls) || s.maxConcurrentCalls < 1) bad(`maxConcurrentCalls must be at least 1, not ${s.maxConcurrentCalls}`);
  if (!Number.isInteger(s.maxAttempts) || s.maxAttempts < 1) bad(`maxAttempts must be at least 1, not ${s.maxAttempts}`);
  if (!(s.minCallSpacingMs >= 0)) bad(`minCallSpacingMs must not be negative, not ${s.minCallSpacingMs}`);
  if (!(s.retryBaseMs >= 0) || !(s.retryMaxMs >= s.retryBaseMs)) bad(`retryBaseMs/retryMaxMs must satisfy 0 <= base <= max, not ${s.retryBaseMs}/${s.retryMaxMs}`);
  for (const key of ['driveRootUrl', 'tokenUrl', 'authUrl'] as const) {
    try {
      new URL(s[key]);
    } catch {
      bad(`${key} is not a URL: ${s[key]}`);
    }
  }
}

function dropUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
