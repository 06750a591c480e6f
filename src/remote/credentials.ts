/**
 * Drive credentials: reading and writing the credentials file, and the OAuth2 client that
 * turns them into access tokens. Three kinds of file are accepted:
 * - an OAuth user token, as `pogfs auth` saves it (Google's `authorized_user` format:
 *   client id and secret plus a refresh token);
 * - a Google service-account key file (`"type": "service_account"`);
 * - just an access token (`{"access_token": "..."}` or the bare token on one line), for
 *   tests and for machines that are handed short-lived tokens by something else; on a 401
 *   the file is read again in case that something has replaced the token.
 *
 * Secrets never go into messages: errors name the file, never its content.
 */
import { sign } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { auth } from '@googleapis/drive';
import type { Agent } from 'node:http';
import { writeDurably } from './durable-file';
import { RemoteError } from './remote';

/** The Google auth library's OAuth2 client, as `@googleapis/drive` ships it (the library is its dependency, not ours). */
export type OAuth2Client = InstanceType<typeof auth.OAuth2>;
type Credentials = OAuth2Client['credentials'];

/** Access to files pogfs itself created, nothing else in the user's Drive. */
export const DRIVE_FILE_SCOPE = 'https://www.googleapis.com/auth/drive.file';
/** Read access to every file of the user (the Drive view, a dupes dry run). */
export const DRIVE_READONLY_SCOPE = 'https://www.googleapis.com/auth/drive.readonly';
/** Full access (dupes --apply moves and trashes the user's files). */
export const DRIVE_FULL_SCOPE = 'https://www.googleapis.com/auth/drive';

const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
/** Google issues access tokens for an hour; assumed when a token answer omits `expires_in`. */
const DEFAULT_TOKEN_LIFETIME_MS = 3600_000;

/** What a grant yields (the shape the auth library's refresh handler returns). */
interface GrantedToken {
  access_token: string;
  expiry_date: number;
}

export type DriveCredentials =
  | { kind: 'user'; clientId: string; clientSecret: string | undefined; refreshToken: string }
  | { kind: 'service-account'; clientEmail: string; privateKey: string; privateKeyId: string | undefined }
  | { kind: 'access-token'; accessToken: string };

/** `$XDG_CONFIG_HOME/pogfs/drive-credentials.json`, `~/.config/pogfs/...` without it. */
export function defaultCredentialsPath(env: NodeJS.ProcessEnv = process.env): string {
  const config = env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(homedir(), '.config');
  return join(config, 'pogfs', 'drive-credentials.json');
}

/** Reads a credentials file; a missing or unreadable one is RemoteError 'auth' naming the file and what to do. */
export async function readCredentialsFile(path: string): Promise<DriveCredentials> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new RemoteError(`no Drive credentials at ${path}: run \`pogfs auth\` or pass --credentials FILE`, 'auth');
    throw new RemoteError(`cannot read Drive credentials ${path}: ${code ?? (e as Error).message}`, 'auth');
  }
  return parseCredentials(text, path);
}

export function parseCredentials(text: string, source: string): DriveCredentials {
  const trimmed = text.trim();
  if (!trimmed.startsWith('{')) {
    if (/^[\x21-\x7e]+$/.test(trimmed)) return { kind: 'access-token', accessToken: trimmed };
    throw new RemoteError(`${source} is not a Drive credentials file (expected JSON, or an access token on one line)`, 'auth');
  }
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(trimmed) as Record<string, unknown>;
  } catch {
    throw new RemoteError(`${source} is not valid JSON`, 'auth');
  }
  const str = (key: string) => (typeof json[key] === 'string' && json[key] !== '' ? (json[key] as string) : undefined);
  if (json.type === 'service_account') {
    const clientEmail = str('client_email');
    const privateKey = str('private_key');
    if (!clientEmail || !privateKey) throw new RemoteError(`${source}: a service-account key needs client_email and private_key`, 'auth');
    return { kind: 'service-account', clientEmail, privateKey, privateKeyId: str('private_key_id') };
  }
  if (json.type === 'authorized_user' || str('refresh_token')) {
    const clientId = str('client_id');
    const refreshToken = str('refresh_token');
    if (!clientId || !refreshToken) throw new RemoteError(`${source}: a user token needs client_id and refresh_token`, 'auth');
    return { kind: 'user', clientId, clientSecret: str('client_secret'), refreshToken };
  }
  const accessToken = str('access_token');
  if (accessToken) return { kind: 'access-token', accessToken };
  throw new RemoteError(`${source} holds no Drive credentials (expected an authorized_user token from \`pogfs auth\`, a service_account key, or an access_token)`, 'auth');
}

/**
 * Saves a user token as Google's `authorized_user` JSON: mode 0600 in a directory created
 * 0700, written to a temp file and renamed so a crash never leaves half a file.
 */
export async function writeUserCredentials(path: string, creds: { clientId: string; clientSecret: string | undefined; refreshToken: string }): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const body = JSON.stringify({ type: 'authorized_user', client_id: creds.clientId, client_secret: creds.clientSecret, refresh_token: creds.refreshToken }, null, 2) + '\n';
  await writeDurably(path, body, 0o600);
}

export interface DriveAuthOptions {
  tokenUrl: string;
  /** Where the credentials came from, for messages. */
  source: string;
  scopes?: string[];
  agent?: Agent | ((url: URL) => Agent);
  timeoutMs?: number;
}

/**
 * Access tokens for Drive calls: an OAuth2Client (from the Google auth library) that
 * refreshes them at the configured token endpoint. `invalidate()` after a 401 makes the
 * next call fetch a fresh one.
 */
export class DriveAuth {
  readonly client: OAuth2Client;
  /** Tokens fetched so far (refresh grants, JWT grants, re-reads of an access-token file). */
  tokenRequests = 0;
  private pendingGrant: Promise<GrantedToken> | undefined;
  /** The access token Drive last refused (a 401), as opposed to one that merely reached its assumed expiry. */
  private refusedToken: string | undefined;

  constructor(
    private readonly creds: DriveCredentials,
    private readonly options: DriveAuthOptions,
  ) {
    const transporterOptions = { agent: options.agent, timeout: options.timeoutMs };
    const endpoints = { oauth2TokenUrl: options.tokenUrl };
    if (creds.kind === 'user') {
      this.client = new auth.OAuth2({ clientId: creds.clientId, clientSecret: creds.clientSecret, endpoints, transporterOptions });
      this.client.setCredentials({ refresh_token: creds.refreshToken });
      this.client.on('tokens', (tokens: Credentials) => {
        this.tokenRequests++;
        // Without an expiry the library retries every 401 and 403 itself (rate-limit 403s included), behind the pacer's back.
        if (typeof tokens === 'object' && tokens !== null && !tokens.expiry_date) tokens.expiry_date = Date.now() + DEFAULT_TOKEN_LIFETIME_MS;
      });
    } else {
      // The library's JWT client posts to Google's token URL whatever the settings say, so
      // the service-account grant is done here against the configured endpoint.
      this.client = new auth.OAuth2({ endpoints, transporterOptions });
      this.client.refreshHandler = () => this.singleGrant();
      if (creds.kind === 'access-token') this.client.setCredentials(withExpiry({ access_token: creds.accessToken }));
    }
    // The library takes any 200 from the token endpoint as a token (an HTML maintenance page
    // included) and then fails deep inside with the page in its message.
    this.client.transporter.interceptors.response.add({
      resolved: async (res) => {
        if (String(res.config.url).startsWith(options.tokenUrl)) {
          const data = res.data as { access_token?: unknown } | null;
          if (typeof data !== 'object' || data === null || typeof data.access_token !== 'string') {
            throw new RemoteError(`the token endpoint ${options.tokenUrl} answered something that is not an OAuth token`, 'auth');
          }
        }
        return res;
      },
    });
  }

  get kind(): DriveCredentials['kind'] {
    return this.creds.kind;
  }

  /** Forgets the current access token; the next request gets a new one. */
  invalidate(): void {
    this.refusedToken = this.client.credentials.access_token ?? undefined;
    // An expiry in the past (rather than no token) keeps the refresh token and makes the library refresh before the next call.
    this.client.setCredentials({ ...this.client.credentials, expiry_date: 1 });
  }

  private singleGrant(): Promise<GrantedToken> {
    // Concurrent calls after an invalidate share one grant.
    this.pendingGrant ??= this.grant().finally(() => (this.pendingGrant = undefined));
    return this.pendingGrant;
  }

  private async grant(): Promise<GrantedToken> {
    this.tokenRequests++;
    if (this.creds.kind === 'access-token') {
      const fresh = await readCredentialsFile(this.options.source).catch(() => undefined);
      const token = fresh?.kind === 'access-token' ? fresh.accessToken : this.client.credentials.access_token;
      // The expiry was only assumed: a token Drive has not refused stays in use.
      if (token && token !== this.refusedToken) return { access_token: token, expiry_date: Date.now() + DEFAULT_TOKEN_LIFETIME_MS };
      throw new RemoteError(`Drive refused the access token from ${this.options.source}, and it cannot be refreshed (it holds no refresh token): put a fresh token there or run \`pogfs auth\``, 'auth');
    }
    if (this.creds.kind !== 'service-account') throw new Error('unreachable: user tokens refresh through the library');
    const assertion = serviceAccountAssertion(this.creds, this.options.tokenUrl, (this.options.scopes ?? [DRIVE_FILE_SCOPE]).join(' '), this.options.source);
    let data: unknown;
    try {
      const res = await this.client.transporter.request({
        url: this.options.tokenUrl,
        method: 'POST',
        data: new URLSearchParams({ grant_type: JWT_BEARER_GRANT, assertion }),
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        responseType: 'json',
        retry: true,
      });
      data = res.data;
    } catch (e) {
      const status = (e as { response?: { status?: number; data?: unknown } }).response?.status;
      if (status !== undefined && status >= 400 && status < 500) {
        const reason = oauthErrorText((e as { response?: { data?: unknown } }).response?.data);
        throw new RemoteError(`the token endpoint refused the service account ${this.creds.clientEmail} from ${this.options.source} (HTTP ${status}${reason ? `: ${reason}` : ''})`, 'auth');
      }
      throw e;
    }
    const token = data as { access_token?: unknown; expires_in?: unknown } | undefined;
    if (typeof token !== 'object' || token === null || typeof token.access_token !== 'string') {
      throw new RemoteError(`the token endpoint ${this.options.tokenUrl} answered without an access token`, 'auth');
    }
    const lifetimeMs = typeof token.expires_in === 'number' ? token.expires_in * 1000 : DEFAULT_TOKEN_LIFETIME_MS;
    return { access_token: token.access_token, expiry_date: Date.now() + lifetimeMs };
  }
}

function withExpiry(c: Credentials): Credentials {
  // A token with no expiry makes the library retry 401s and 403s on its own; an hour is what Google gives.
  return { ...c, expiry_date: Date.now() + DEFAULT_TOKEN_LIFETIME_MS };
}

/** `error: error_description` of an OAuth error answer, if it is one (these never hold secrets). */
export function oauthErrorText(data: unknown): string | undefined {
  let value = data;
  if (typeof value === 'string') {
    try {
      value = JSON.parse(value);
    } catch {
      return undefined;
    }
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { error, error_description: description } = value as { error?: unknown; error_description?: unknown };
  if (typeof error !== 'string') return undefined;
  return typeof description === 'string' && description ? `${error}: ${description}` : error;
}

/** A signed JWT for the OAuth 2.0 JWT bearer grant (RFC 7523), as Google's token endpoint wants it. */
function serviceAccountAssertion(creds: { clientEmail: string; privateKey: string; privateKeyId: string | undefined }, tokenUrl: string, scope: string, source: string): string {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'RS256', typ: 'JWT', ...(creds.privateKeyId ? { kid: creds.privateKeyId } : {}) };
  const claims = { iss: creds.clientEmail, scope, aud: tokenUrl, iat: now, exp: now + 3600 };
  const encode = (v: object) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const unsigned = `${encode(header)}.${encode(claims)}`;
  let signature: Buffer;
  try {
    signature = sign('RSA-SHA256', Buffer.from(unsigned), creds.privateKey);
  } catch {
    throw new RemoteError(`the private key in ${source} cannot be used (not an RSA private key in PEM form)`, 'auth');
  }
  return `${unsigned}.${signature.toString('base64url')}`;
}
