import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { auth, drive, type drive_v3 } from '@googleapis/drive';
import { DriveEmulator, FOLDER_MIME, UPLOAD_UNIT } from './support/drive-emulator';

/** The real client against the emulator, as pogfs uses it: rootUrl per call (media uploads ignore the global one), no library retries. */
function realClient(emu: DriveEmulator, token = emu.issueAccessToken()): { api: drive_v3.Drive; o: { rootUrl: string; retry: false } } {
  const client = new auth.OAuth2({});
  client.setCredentials({ access_token: token, expiry_date: Date.now() + 3600_000 });
  return { api: drive({ version: 'v3', auth: client, rootUrl: emu.rootUrl }), o: { rootUrl: emu.rootUrl, retry: false } };
}

/** The client hands back node-fetch's Headers (not the global class, so the library leaves them as they are). */
function header(headers: unknown, name: string): string | undefined {
  const h = headers as { get?: (n: string) => string | null } & Record<string, string | undefined>;
  return typeof h.get === 'function' ? (h.get(name) ?? undefined) : h[name];
}

function md5(b: Buffer): string {
  return createHash('md5').update(b).digest('hex');
}

async function status(p: Promise<unknown>): Promise<{ status: number | undefined; reason: string | undefined; body: unknown }> {
  try {
    await p;
    return { status: 200, reason: undefined, body: undefined };
  } catch (e) {
    const res = (e as { response?: { status?: number; data?: unknown } }).response;
    let data = res?.data;
    if (data instanceof ArrayBuffer) {
      const text = Buffer.from(data).toString('utf8');
      data = text ? (JSON.parse(text) as unknown) : undefined;
    }
    const reason = (data as { error?: { errors?: Array<{ reason?: string }> } } | undefined)?.error?.errors?.[0]?.reason;
    return { status: res?.status, reason, body: data };
  }
}

describe('Drive emulator against the real @googleapis/drive client', () => {
  let emu: DriveEmulator;
  before(async () => {
    emu = await DriveEmulator.start({ seed: 7 });
  });
  after(async () => {
    await emu.close();
  });

  it('creates, lists with q and fields, pages, reads ranges, updates, deletes', async () => {
    const { api, o } = realClient(emu);
    const folder = (await api.files.create({ requestBody: { name: 'top', mimeType: FOLDER_MIME }, fields: 'id,name,mimeType,parents' }, o)).data;
    assert.equal(folder.mimeType, FOLDER_MIME);
    assert.deepEqual(folder.parents, [emu.rootFolderId]);
    const content = randomBytes(300_000);
    const created = (
      await api.files.create({ requestBody: { name: "it's \\ odd", parents: [folder.id!] }, media: { mimeType: 'application/octet-stream', body: Readable.from([content]) }, fields: 'id,name,size,md5Checksum' }, o)
    ).data;
    assert.deepEqual(Object.keys(created).sort(), ['id', 'md5Checksum', 'name', 'size']);
    assert.equal(created.size, String(content.length));
    assert.equal(created.md5Checksum, md5(content));
    assert.ok((await emu.readStoredFile(created.id!)).equals(content));

    // q: escaping, in parents, mimeType, trashed, and/or/parentheses, not
    const q = (query: string) => api.files.list({ q: query, fields: 'files(id,name)', pageSize: 1000 }, o).then((r) => r.data.files ?? []);
    assert.deepEqual((await q(`'${folder.id}' in parents and name = 'it\\'s \\\\ odd' and trashed = false`)).map((f) => f.id), [created.id]);
    assert.equal((await q(`'${folder.id}' in parents and name = 'its odd'`)).length, 0);
    assert.deepEqual((await q(`'root' in parents and mimeType = '${FOLDER_MIME}'`)).map((f) => f.id), [folder.id]);
    assert.deepEqual((await q(`('${folder.id}' in parents or 'nope' in parents) and mimeType != '${FOLDER_MIME}' and not name contains 'zzz'`)).map((f) => f.id), [created.id]);
    assert.deepEqual((await status(q(`name = 'unterminated`))).status, 400);

    // fields masks: only what was asked; a field that does not exist is refused
    const masked = (await api.files.get({ fileId: created.id!, fields: 'id,size' }, o)).data;
    assert.deepEqual(masked, { id: created.id, size: String(content.length) });
    const defaults = (await api.files.get({ fileId: created.id! }, o)).data;
    assert.deepEqual(Object.keys(defaults).sort(), ['id', 'kind', 'mimeType', 'name']);
    assert.equal((await status(api.files.get({ fileId: created.id!, fields: 'id,sizee' }, o))).status, 400);

    // ranged media reads: 206 with exactly the range; past the end 416
    const ranged = await api.files.get({ fileId: created.id!, alt: 'media' }, { ...o, responseType: 'arraybuffer', headers: { Range: 'bytes=1000-1999' } });
    assert.equal(ranged.status, 206);
    assert.equal(header(ranged.headers, 'content-range'), `bytes 1000-1999/${content.length}`);
    assert.ok(Buffer.from(ranged.data as unknown as ArrayBuffer).equals(content.subarray(1000, 2000)));
    const whole = await api.files.get({ fileId: created.id!, alt: 'media' }, { ...o, responseType: 'arraybuffer' });
    assert.equal(whole.status, 200);
    assert.ok(Buffer.from(whole.data as unknown as ArrayBuffer).equals(content));
    assert.equal((await status(api.files.get({ fileId: created.id!, alt: 'media' }, { ...o, responseType: 'arraybuffer', headers: { Range: `bytes=${content.length}-` } }))).status, 416);

    // paging: 25 files, 10 a page
    for (let i = 0; i < 25; i++) await api.files.create({ requestBody: { name: `p${i}`, parents: [folder.id!] }, media: { body: Readable.from([Buffer.from(String(i))]) } }, o);
    const seen: string[] = [];
    let pageToken: string | undefined;
    let pages = 0;
    do {
      const r = await api.files.list({ q: `'${folder.id}' in parents and name contains 'p'`, pageSize: 10, pageToken, fields: 'nextPageToken,files(name)' }, o);
      seen.push(...(r.data.files ?? []).map((f) => f.name!));
      pageToken = r.data.nextPageToken ?? undefined;
      pages++;
    } while (pageToken && pages < 10);
    assert.equal(pages, 3);
    assert.deepEqual(seen.sort(), Array.from({ length: 25 }, (_, i) => `p${i}`).sort());
    assert.equal((await status(api.files.list({ pageSize: 1001 }, o))).status, 400);

    // update: rename, move, trash, new content
    const other = (await api.files.create({ requestBody: { name: 'other', mimeType: FOLDER_MIME } }, o)).data;
    const moved = (await api.files.update({ fileId: created.id!, addParents: other.id!, removeParents: folder.id!, requestBody: { name: 'renamed' }, fields: 'name,parents' }, o)).data;
    assert.deepEqual(moved, { name: 'renamed', parents: [other.id] });
    const newContent = randomBytes(5000);
    const updated = (await api.files.update({ fileId: created.id!, media: { body: Readable.from([newContent]) }, fields: 'size,md5Checksum,version' }, o)).data;
    assert.equal(updated.md5Checksum, md5(newContent));
    assert.equal(Number(updated.size), 5000);
    assert.ok((await emu.readStoredFile(created.id!)).equals(newContent));
    await api.files.update({ fileId: created.id!, requestBody: { trashed: true } }, o);
    assert.equal((await q(`'${other.id}' in parents and trashed = false`)).length, 0);
    assert.equal((await q(`'${other.id}' in parents and trashed = true`)).length, 1);

    // delete: gone, and a folder takes its content with it
    const startToken = (await api.changes.getStartPageToken({}, o)).data.startPageToken!;
    await api.files.delete({ fileId: created.id! }, o);
    const gone = await status(api.files.get({ fileId: created.id! }, o));
    assert.equal(gone.status, 404);
    assert.equal(gone.reason, 'notFound');
    assert.match(JSON.stringify(gone.body), /"code":404,"message":"File not found: /);
    await api.files.delete({ fileId: folder.id! }, o);
    assert.equal(emu.storedFiles().filter((f) => f.parents.includes(folder.id!)).length, 0);

    // changes: every delete since the token, marked removed
    const changes = (await api.changes.list({ pageToken: startToken, pageSize: 1000, fields: 'newStartPageToken,nextPageToken,changes(fileId,removed)' }, o)).data;
    assert.ok(changes.newStartPageToken);
    const removed = new Set((changes.changes ?? []).filter((c) => c.removed).map((c) => c.fileId));
    assert.ok(removed.has(created.id!) && removed.has(folder.id!));
    assert.equal(removed.size, 27); // the file, the folder and its 25 children
  });

  it('records creates, updates and trashes in the changes feed with a token sequence', async () => {
    const { api, o } = realClient(emu);
    const start = (await api.changes.getStartPageToken({}, o)).data.startPageToken!;
    const f = (await api.files.create({ requestBody: { name: 'c1' }, media: { body: Readable.from([Buffer.from('x')]) } }, o)).data;
    await api.files.update({ fileId: f.id!, requestBody: { name: 'c2' } }, o);
    await api.files.update({ fileId: f.id!, requestBody: { trashed: true } }, o);
    const page1 = (await api.changes.list({ pageToken: start, pageSize: 2, fields: 'nextPageToken,newStartPageToken,changes(fileId,removed,file(name,trashed))' }, o)).data;
    assert.equal(page1.changes?.length, 2);
    assert.ok(page1.nextPageToken);
    const page2 = (await api.changes.list({ pageToken: page1.nextPageToken!, fields: 'nextPageToken,newStartPageToken,changes(fileId,removed,file(name,trashed))' }, o)).data;
    assert.equal(page2.changes?.length, 1);
    assert.ok(page2.newStartPageToken && Number(page2.newStartPageToken) > Number(start));
    assert.deepEqual(page2.changes?.[0], { fileId: f.id, removed: false, file: { name: 'c2', trashed: true } });
    const again = (await api.changes.list({ pageToken: page2.newStartPageToken!, fields: 'changes(fileId),newStartPageToken' }, o)).data;
    assert.equal(again.changes?.length, 0);
  });

  it('speaks the resumable protocol: 308 with Range, whole 256 KiB units only, status probes, completion', async () => {
    const token = emu.issueAccessToken();
    const content = randomBytes(UPLOAD_UNIT * 3 + 1000);
    const init = await fetch(`${emu.rootUrl}upload/drive/v3/files?uploadType=resumable&fields=id,size,md5Checksum`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'x-upload-content-length': String(content.length) },
      body: JSON.stringify({ name: 'resumable.bin' }),
    });
    assert.equal(init.status, 200);
    const session = init.headers.get('location')!;
    assert.match(session, /upload_id=/);
    const put = (range: string, body?: Buffer) =>
      fetch(session, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-range': range }, body: body ?? new Uint8Array(0), redirect: 'manual' });
    let r = await put(`bytes 0-${UPLOAD_UNIT - 1}/${content.length}`, content.subarray(0, UPLOAD_UNIT));
    assert.equal(r.status, 308);
    assert.equal(r.headers.get('range'), `bytes=0-${UPLOAD_UNIT - 1}`);
    // A non-final chunk that is not whole units keeps only the whole units.
    r = await put(`bytes ${UPLOAD_UNIT}-${UPLOAD_UNIT * 2 + 99}/${content.length}`, content.subarray(UPLOAD_UNIT, UPLOAD_UNIT * 2 + 100));
    assert.equal(r.status, 308);
    assert.equal(r.headers.get('range'), `bytes=0-${UPLOAD_UNIT * 2 - 1}`);
    r = await put(`bytes */${content.length}`);
    assert.equal(r.status, 308);
    assert.equal(r.headers.get('range'), `bytes=0-${UPLOAD_UNIT * 2 - 1}`);
    // A gap is refused.
    r = await put(`bytes ${UPLOAD_UNIT * 3}-${content.length - 1}/${content.length}`, content.subarray(UPLOAD_UNIT * 3));
    assert.equal(r.status, 400);
    r = await put(`bytes ${UPLOAD_UNIT * 2}-${content.length - 1}/${content.length}`, content.subarray(UPLOAD_UNIT * 2));
    assert.equal(r.status, 200);
    const file = (await r.json()) as { id: string; size: string; md5Checksum: string };
    assert.equal(file.size, String(content.length));
    assert.equal(file.md5Checksum, md5(content));
    assert.ok((await emu.readStoredFile(file.id)).equals(content));
    // A probe after completion answers with the file, as Drive does.
    r = await put(`bytes */${content.length}`);
    assert.equal(r.status, 200);
    assert.equal(((await r.json()) as { id: string }).id, file.id);
    assert.ok((emu.calls()['upload.resumable.status'] ?? 0) >= 2);
  });

  it('answers errors in Drive shape: 401 for wrong or expired tokens, about.get needs fields', async () => {
    const wrong = await status(realClient(emu, 'ya29.not-a-token').api.files.list({}, { rootUrl: emu.rootUrl, retry: false }));
    assert.equal(wrong.status, 401);
    assert.equal(wrong.reason, 'authError');
    const expired = realClient(emu, emu.issueAccessToken(-1));
    assert.equal((await status(expired.api.files.list({}, expired.o))).status, 401);
    const { api, o } = realClient(emu);
    assert.equal((await status(api.about.get({}, o))).status, 400);
    const about = (await api.about.get({ fields: 'user(emailAddress),storageQuota(usage)' }, o)).data;
    assert.equal(about.user?.emailAddress, emu.userEmail);
    assert.ok(Number(about.storageQuota?.usage) > 0);
  });

  it('injects error answers, resets, truncated bodies, latency and a bandwidth cap', async () => {
    const { api, o } = realClient(emu);
    const content = randomBytes(200_000);
    const f = (await api.files.create({ requestBody: { name: 'faulty' }, media: { body: Readable.from([content]) } }, o)).data;
    const get = () => api.files.get({ fileId: f.id!, alt: 'media' }, { ...o, responseType: 'arraybuffer' });

    for (const [kind, code, reason] of [
      [429, 429, 'rateLimitExceeded'],
      ['rateLimitExceeded', 403, 'rateLimitExceeded'],
      ['userRateLimitExceeded', 403, 'userRateLimitExceeded'],
      [500, 500, 'backendError'],
      [503, 503, 'backendError'],
    ] as const) {
      emu.injectFault({ method: 'files.get', fault: kind });
      const r = await status(get());
      assert.deepEqual([r.status, r.reason], [code, reason], String(kind));
    }
    emu.injectFault({ method: 'files.get', fault: 'truncate', afterBytes: 1000 });
    const truncated = await get().then(
      () => 'complete',
      (e: { code?: string }) => e.code,
    );
    assert.equal(truncated, 'ECONNRESET');
    emu.injectFault({ method: 'files.get', fault: 'reset' });
    assert.notEqual(await get().then(() => 'complete', () => 'failed'), 'complete');
    // A reset mid-upload: the client fails, nothing is created.
    const before = emu.storedFiles().length;
    emu.injectFault({ method: 'files.create', fault: 'reset', afterBytes: 50_000 });
    const upload = await api.files.create({ requestBody: { name: 'cut' }, media: { body: Readable.from([randomBytes(100_000)]) } }, o).then(() => 'complete', () => 'failed');
    assert.equal(upload, 'failed');
    assert.equal(emu.storedFiles().length, before);
    assert.ok(Buffer.from((await get()).data as unknown as ArrayBuffer).equals(content));

    emu.setFaults({ latencyMs: 150 });
    let t0 = performance.now();
    await api.files.get({ fileId: f.id! }, o);
    assert.ok(performance.now() - t0 >= 140);
    emu.setFaults({ latencyMs: 0, bandwidthBytesPerSec: 1_000_000 });
    t0 = performance.now();
    await get();
    const seconds = (performance.now() - t0) / 1000;
    emu.setFaults({ bandwidthBytesPerSec: 0 });
    // 200 kB at 1 MB/s, less the link's 50 ms of burst credit.
    assert.ok(seconds >= 0.14 && seconds < 2, `200 kB at 1 MB/s took ${seconds} s`);
  });

  it('draws random faults at the configured share, repeatably from the seed', async () => {
    const outcomes = async (seed: number) => {
      const e = await DriveEmulator.start({ seed, faults: { errorRate: 0.3, errorKinds: [429, 503] } });
      try {
        const { api, o } = realClient(e);
        const out: Array<number | undefined> = [];
        for (let i = 0; i < 60; i++) out.push((await status(api.files.list({ fields: 'files(id)' }, o))).status);
        return out;
      } finally {
        await e.close();
      }
    };
    const a = await outcomes(42);
    assert.deepEqual(await outcomes(42), a);
    assert.notDeepEqual(await outcomes(43), a);
    const failures = a.filter((s) => s !== 200).length;
    assert.ok(failures >= 8 && failures <= 30, `${failures} of 60 failed`);
    assert.ok(a.includes(429) && a.includes(503));
  });

  it('enforces a storage quota with 403 storageQuotaExceeded', async () => {
    const { api, o } = realClient(emu);
    const used = emu.storedFiles().reduce((n, f) => n + f.size, 0);
    emu.setStorageQuota(used + 10_000);
    try {
      const r = await status(api.files.create({ requestBody: { name: 'big' }, media: { body: Readable.from([randomBytes(20_000)]) } }, o));
      assert.deepEqual([r.status, r.reason], [403, 'storageQuotaExceeded']);
      await api.files.create({ requestBody: { name: 'small' }, media: { body: Readable.from([randomBytes(5_000)]) } }, o);
    } finally {
      emu.setStorageQuota(undefined);
    }
  });

  it('lets tests read and corrupt stored files, and counts calls per method', async () => {
    const { api, o } = realClient(emu);
    const content = Buffer.alloc(1000, 7);
    const f = (await api.files.create({ requestBody: { name: 'victim' }, media: { body: Readable.from([content]) } }, o)).data;
    const calls = emu.calls()['files.get'] ?? 0;
    await emu.corruptStoredFile(f.id!, 10, 3);
    const read = Buffer.from((await api.files.get({ fileId: f.id!, alt: 'media' }, { ...o, responseType: 'arraybuffer' })).data as unknown as ArrayBuffer);
    assert.deepEqual([...read.subarray(9, 14)], [7, 7 ^ 0xff, 7 ^ 0xff, 7 ^ 0xff, 7]);
    assert.equal(emu.calls()['files.get'], calls + 1);
    assert.equal(emu.storedFile(f.id!)?.md5Checksum, md5(content));
  });

  it('grants tokens: refresh, authorization code with PKCE (via the auth redirect), and refuses bad ones', async () => {
    const { clientId, clientSecret } = emu.registerOAuthClient();
    const refresh = emu.issueRefreshToken(clientId);
    const post = (form: Record<string, string>) => fetch(emu.tokenUrl, { method: 'POST', body: new URLSearchParams(form) });
    let r = await post({ grant_type: 'refresh_token', refresh_token: refresh, client_id: clientId, client_secret: clientSecret });
    assert.equal(r.status, 200);
    const granted = (await r.json()) as { access_token: string; expires_in: number };
    assert.ok(granted.access_token && granted.expires_in > 0);
    const { api, o } = realClient(emu, granted.access_token);
    await api.files.list({ fields: 'files(id)' }, o);
    r = await post({ grant_type: 'refresh_token', refresh_token: 'bogus', client_id: clientId, client_secret: clientSecret });
    assert.equal(r.status, 400);
    assert.equal(((await r.json()) as { error: string }).error, 'invalid_grant');

    const verifier = randomBytes(32).toString('base64url');
    const challenge = createHash('sha256').update(verifier).digest('base64url');
    const redirectUri = 'http://127.0.0.1:9/';
    const authUrl = `${emu.authUrl}?${new URLSearchParams({ client_id: clientId, redirect_uri: redirectUri, response_type: 'code', scope: 'https://www.googleapis.com/auth/drive.file', state: 's1', code_challenge: challenge, code_challenge_method: 'S256' })}`;
    const redirect = await fetch(authUrl, { redirect: 'manual' });
    assert.equal(redirect.status, 302);
    const back = new URL(redirect.headers.get('location')!);
    assert.equal(back.origin + back.pathname, redirectUri);
    assert.equal(back.searchParams.get('state'), 's1');
    const code = back.searchParams.get('code')!;
    r = await post({ grant_type: 'authorization_code', code, client_id: clientId, client_secret: clientSecret, redirect_uri: redirectUri, code_verifier: 'wrong' });
    assert.equal(r.status, 400);
    r = await post({ grant_type: 'authorization_code', code, client_id: clientId, client_secret: clientSecret, redirect_uri: redirectUri, code_verifier: verifier });
    assert.equal(r.status, 200);
    assert.ok(((await r.json()) as { refresh_token: string }).refresh_token);
    emu.setConsent('deny');
    try {
      const denied = await fetch(authUrl, { redirect: 'manual' });
      assert.equal(new URL(denied.headers.get('location')!).searchParams.get('error'), 'access_denied');
    } finally {
      emu.setConsent('grant');
    }
  });

  it('close() ends every socket, even one waiting on injected latency', async () => {
    const e = await DriveEmulator.start({ faults: { latencyMs: 30_000 } });
    const { api, o } = realClient(e);
    const pending = api.files.list({}, o).then(
      () => 'answered',
      () => 'failed',
    );
    await new Promise((r) => setTimeout(r, 100));
    const t0 = performance.now();
    await e.close();
    assert.equal(await pending, 'failed');
    assert.ok(performance.now() - t0 < 2000);
  });
});
