/**
 * `pogfs auth`: the OAuth installed-app flow that gives pogfs a Drive refresh token.
 *
 * A loopback server on 127.0.0.1 (random port) is the redirect target; the user opens the
 * printed URL, consents, and the browser comes back to that server with the code, which is
 * exchanged (with PKCE) at the token endpoint. On a machine without a browser the user
 * opens the URL elsewhere and pastes back the address the browser ended on (which fails to
 * load there) or just the code. The token is saved 0600 in Google's `authorized_user` form.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { auth as googleAuth } from '@googleapis/drive';
import { DRIVE_FILE_SCOPE, DRIVE_FULL_SCOPE, DRIVE_READONLY_SCOPE, defaultCredentialsPath, oauthErrorText, writeUserCredentials, type OAuth2Client } from '../remote/credentials';
import { DEFAULT_AUTH_URL, DEFAULT_TOKEN_URL } from '../remote/open-remote';
import { UsageError } from './errors';

const SCOPES = {
  file: { url: DRIVE_FILE_SCOPE, what: 'keep its own files in your Google Drive' },
  readonly: { url: DRIVE_READONLY_SCOPE, what: 'read the files in your Google Drive (for pogfs drive mount)' },
  full: { url: DRIVE_FULL_SCOPE, what: 'read and change the files in your Google Drive (for pogfs drive dupes --apply)' },
} as const;

export interface AuthOptions {
  /** The JSON Google Cloud console gives for a "Desktop app" OAuth client. */
  clientSecretFile?: string;
  clientId?: string;
  clientSecret?: string;
  /** Where to save the token (default `$XDG_CONFIG_HOME/pogfs/drive-credentials.json`). */
  credentials?: string;
  authUrl?: string;
  tokenUrl?: string;
  /** Do not try to open a browser; just print the URL. */
  noBrowser?: boolean;
  /**
   * What pogfs may do in the Drive: 'file' (default: only the files pogfs made, for
   * volumes), 'readonly' (read every file: the Drive view, a dupes dry run), 'full'
   * (change every file: `drive dupes --apply`).
   */
  scope?: 'file' | 'readonly' | 'full';
  /** Where a pasted code or address is read from (stdin by default). */
  input?: NodeJS.ReadableStream;
  /** Where instructions go (stderr by default, so stdout stays clean). */
  output?: NodeJS.WritableStream;
  /** How long to wait for the browser or a paste (5 minutes by default). */
  timeoutMs?: number;
}

export async function auth(options: AuthOptions): Promise<void> {
  const out = options.output ?? process.stderr;
  const { clientId, clientSecret } = await clientCredentials(options);
  const authUrl = options.authUrl ?? DEFAULT_AUTH_URL;
  const tokenUrl = options.tokenUrl ?? DEFAULT_TOKEN_URL;
  const credentialsPath = options.credentials ?? defaultCredentialsPath();
  const timeoutMs = options.timeoutMs ?? 300_000;

  const state = randomBytes(16).toString('base64url');
  const loopback = await startLoopback(state);
  const cleanups: Array<() => void> = [() => loopback.close()];
  try {
    const redirectUri = loopback.redirectUri;
    const client = new googleAuth.OAuth2({ clientId, clientSecret, redirectUri, endpoints: { oauth2AuthBaseUrl: authUrl, oauth2TokenUrl: tokenUrl } });
    const { codeVerifier, codeChallenge } = await client.generateCodeVerifierAsync();
    const url = client.generateAuthUrl({
      access_type: 'offline',
      // Google hands out a refresh token only on consent; asking every time guarantees one.
      prompt: 'consent',
      scope: [SCOPES[options.scope ?? 'file'].url],
      state,
      code_challenge: codeChallenge,
      code_challenge_method: 'S256' as NonNullable<Parameters<OAuth2Client['generateAuthUrl']>[0]>['code_challenge_method'],
    });
    out.write(
      `Open this address in a browser and allow pogfs to ${SCOPES[options.scope ?? 'file'].what}:\n\n  ${url}\n\n` +
        `Waiting for the browser to come back to ${redirectUri}\n` +
        `(without a browser here: open it on another machine, then paste the address the browser ends on, or the code, and press Enter)\n`,
    );
    if (!options.noBrowser) openBrowser(url);

    const pasted = readPasted(options.input ?? process.stdin, state, out);
    cleanups.push(pasted.close);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new UsageError(`no authorization arrived within ${Math.round(timeoutMs / 1000)} s; run pogfs auth again`)), timeoutMs);
    });
    cleanups.push(() => clearTimeout(timer));
    const code = await Promise.race([loopback.code, pasted.code, timeout]);

    const tokens = await exchange(client, code, codeVerifier, redirectUri, tokenUrl);
    await writeUserCredentials(credentialsPath, { clientId, clientSecret, refreshToken: tokens.refreshToken });
    out.write(`Saved Drive credentials to ${credentialsPath}\n`);
  } finally {
    for (const cleanup of cleanups.reverse()) cleanup();
  }
}

async function clientCredentials(options: AuthOptions): Promise<{ clientId: string; clientSecret: string | undefined }> {
  let clientId = options.clientId;
  let clientSecret = options.clientSecret;
  if (options.clientSecretFile) {
    let json: unknown;
    try {
      json = JSON.parse(await readFile(options.clientSecretFile, 'utf8'));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UsageError(`cannot read the OAuth client file ${options.clientSecretFile}: ${code ?? 'not JSON'}`);
    }
    const section = (json as { installed?: unknown; web?: unknown }).installed ?? (json as { web?: unknown }).web ?? json;
    const fileId = (section as { client_id?: unknown }).client_id;
    const fileSecret = (section as { client_secret?: unknown }).client_secret;
    if (typeof fileId !== 'string' || !fileId) throw new UsageError(`${options.clientSecretFile} has no client_id (expected the JSON of a Desktop app OAuth client)`);
    clientId ??= fileId;
    if (typeof fileSecret === 'string') clientSecret ??= fileSecret;
  }
  if (!clientId) {
    throw new UsageError('no OAuth client id: pass --client-secret-file FILE (the JSON of a "Desktop app" OAuth client from the Google Cloud console) or --client-id ID [--client-secret SECRET]');
  }
  return { clientId, clientSecret };
}

/** The redirect target: answers the browser's one request carrying `code` (or `error`). */
async function startLoopback(state: string): Promise<{ redirectUri: string; code: Promise<string>; close: () => void }> {
  let settle!: { resolve: (code: string) => void; reject: (e: Error) => void };
  const code = new Promise<string>((resolve, reject) => (settle = { resolve, reject }));
  // Never unhandled: only one of the racers wins, the others may settle later.
  code.catch(() => {});
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const params = url.searchParams;
    if (url.pathname !== '/' || (!params.has('code') && !params.has('error'))) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    const outcome = fromRedirect(params, state);
    const ok = !(outcome instanceof Error);
    res
      .writeHead(ok ? 200 : 400, { 'content-type': 'text/html; charset=utf-8', connection: 'close' })
      .end(`<!doctype html><title>pogfs</title><p>${ok ? 'pogfs is authorized. You can close this tab.' : 'pogfs was not authorized. See the terminal.'}</p>`);
    if (ok) settle.resolve(outcome);
    else settle.reject(outcome);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    redirectUri: `http://127.0.0.1:${port}/`,
    code,
    close: () => {
      server.close();
      server.closeAllConnections();
    },
  };
}

/** The code from a redirect's query, or the error to report. */
function fromRedirect(params: URLSearchParams, state: string): string | UsageError {
  const error = params.get('error');
  if (error === 'access_denied') return new UsageError('consent was denied in the browser (access_denied); run pogfs auth again and allow access');
  if (error) return new UsageError(`the authorization failed: ${error.slice(0, 100)}`);
  if (params.get('state') !== state) return new UsageError('the authorization answer does not belong to this pogfs auth run (state mismatch); run pogfs auth again');
  const code = params.get('code');
  if (!code) return new UsageError('the authorization answer has no code');
  return code;
}

/** Lines typed or pasted: a redirected address (checked like the loopback's) or a bare code. */
function readPasted(input: NodeJS.ReadableStream, state: string, out: NodeJS.WritableStream): { code: Promise<string>; close: () => void } {
  const rl = createInterface({ input, terminal: false });
  const code = new Promise<string>((resolve, reject) => {
    rl.on('line', (raw) => {
      const line = raw.trim();
      if (!line) return;
      if (/^https?:\/\//i.test(line)) {
        let outcome: string | UsageError;
        try {
          outcome = fromRedirect(new URL(line).searchParams, state);
        } catch {
          outcome = new UsageError('that address cannot be parsed');
        }
        if (outcome instanceof Error) {
          if (outcome.message.startsWith('consent was denied')) reject(outcome);
          else out.write(`${outcome.message}; paste the address again\n`);
          return;
        }
        resolve(outcome);
      } else if (/^[\x21-\x7e]{10,}$/.test(line)) {
        resolve(line);
      } else {
        out.write('that is neither the address the browser ended on nor a code; paste again\n');
      }
    });
  });
  code.catch(() => {});
  return {
    code,
    close: () => {
      rl.close();
      // readline leaves the stream flowing; a paused stdin lets the process exit.
      (input as NodeJS.ReadableStream & { pause?: () => void }).pause?.();
    },
  };
}

async function exchange(
  client: OAuth2Client,
  code: string,
  codeVerifier: string,
  redirectUri: string,
  tokenUrl: string,
): Promise<{ refreshToken: string }> {
  let data: unknown;
  try {
    const res = await client.getToken({ code, codeVerifier, redirect_uri: redirectUri });
    data = res.tokens;
  } catch (e) {
    const response = (e as { response?: { status?: number; data?: unknown } }).response;
    if (response?.status !== undefined) {
      const reason = oauthErrorText(response.data);
      if (reason) throw new UsageError(`the token endpoint refused the authorization code (HTTP ${response.status}, ${reason}); run pogfs auth again`);
      throw new UsageError(`the token endpoint ${tokenUrl} answered HTTP ${response.status} with something that is not an OAuth answer`);
    }
    const code = (e as { code?: unknown }).code;
    throw new UsageError(`cannot reach the token endpoint ${tokenUrl}${typeof code === 'string' ? ` (${code})` : ''}`);
  }
  const tokens = data as { refresh_token?: unknown; access_token?: unknown } | null;
  if (typeof tokens !== 'object' || tokens === null || typeof tokens.access_token !== 'string') {
    throw new UsageError(`the token endpoint ${tokenUrl} answered something that is not an OAuth token`);
  }
  if (typeof tokens.refresh_token !== 'string' || !tokens.refresh_token) {
    throw new UsageError('the token endpoint gave no refresh token; remove pogfs under https://myaccount.google.com/permissions and run pogfs auth again');
  }
  return { refreshToken: tokens.refresh_token };
}

/** Best effort: a desktop session gets the page opened; anywhere else the printed URL is the way. */
function openBrowser(url: string): void {
  if (process.platform !== 'linux' || !(process.env.DISPLAY || process.env.WAYLAND_DISPLAY)) return;
  try {
    const child = spawn('xdg-open', [url], { stdio: 'ignore', detached: true });
    child.on('error', () => {});
    child.unref();
  } catch {
    // The URL is printed; that is enough.
  }
}
