import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { auth } from '../src/cli/auth-command';
import { UsageError } from '../src/cli/errors';
import { DriveAuth, parseCredentials } from '../src/remote/credentials';
import { LocalRemote } from '../src/remote/local-remote';
import { packName, PACK_PREFIXES } from '../src/remote/object-names';
import { openDriveClient, openRemote, type RemoteSettings } from '../src/remote/open-remote';
import { isRemoteSpec, localRemoteDir, normalizeRemoteSpec, parseRemoteSpec } from '../src/remote/remote-spec';
import { RemoteError, type Remote, type RemoteLock } from '../src/remote/remote';
import { DriveEmulator, FOLDER_MIME } from './support/drive-emulator';
import { emulatorSettings } from './support/remote-settings';
import { tempDir } from './support/tmp';

const MiB = 1024 * 1024;

function accessTokenFile(emu: DriveEmulator, dir: string, name = 'token.json'): string {
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify({ access_token: emu.issueAccessToken() }), { mode: 0o600 });
  return path;
}

function userCredentialsFile(emu: DriveEmulator, dir: string): { path: string; refreshToken: string } {
  const { clientId, clientSecret } = emu.registerOAuthClient();
  const refreshToken = emu.issueRefreshToken(clientId);
  const path = join(dir, 'user.json');
  writeFileSync(path, JSON.stringify({ type: 'authorized_user', client_id: clientId, client_secret: clientSecret, refresh_token: refreshToken }), { mode: 0o600 });
  return { path, refreshToken };
}

async function rejectsWith(p: Promise<unknown>, code: RemoteError['code'], pattern?: RegExp): Promise<RemoteError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof RemoteError, `expected a RemoteError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return e;
  }
  assert.fail(`expected RemoteError ${code}`);
}

/** The calls a client made, by Drive method, next to what the server saw (only methods both name). */
function driveCalls(counters: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(counters).filter(([k]) => /^(files|upload|changes|about)\./.test(k)));
}

function delta(now: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(now)) if (v - (before[k] ?? 0) > 0) out[k] = v - (before[k] ?? 0);
  return driveCalls(out);
}

const lockA: RemoteLock = { owner: 'volume-a', host: 'host-a', pid: 101, since: '2026-01-02T03:04:05.000Z' };
const lockB: RemoteLock = { owner: 'volume-b', host: 'host-b', pid: 202, since: '2026-02-03T04:05:06.000Z' };

/** The contract every backend keeps, run against each. */
function conformance(label: string, open: () => Promise<Remote>) {
  describe(`Remote conformance: ${label}`, () => {
    const opened: Remote[] = [];
    const fresh = async () => {
      const r = await open();
      opened.push(r);
      return r;
    };
    after(async () => {
      for (const r of opened) await r.close();
    });

    it('lists nothing before init; init is idempotent', async () => {
      const r = await fresh();
      assert.deepEqual(await r.list('pack'), []);
      assert.deepEqual(await r.list('meta'), []);
      assert.equal(await r.readLock(), undefined);
      await r.init();
      await r.init();
      assert.deepEqual(await r.list('pack'), []);
    });

    it('stores packs across subfolders and reads them whole, in ranges, with exactly the bytes asked for', async () => {
      const r = await fresh();
      await r.init();
      const packs = new Map<string, Buffer>([
        ['aa01', randomBytes(1)],
        ['ab02', randomBytes(1000)],
        ['ff03', randomBytes(700_000)],
        ['0c04', randomBytes(2 * MiB + 12345)],
        ['aa05', Buffer.alloc(0)],
      ]);
      const stored = [];
      for (const [name, data] of packs) {
        const obj = await r.put('pack', name, data);
        assert.deepEqual([obj.kind, obj.name, obj.size], ['pack', name, data.length]);
        assert.ok(obj.id);
        stored.push(obj);
      }
      const listed = await r.list('pack');
      assert.deepEqual(
        listed.map((o) => [o.name, o.size, o.id]).sort(),
        stored.map((o) => [o.name, o.size, o.id]).sort(),
      );
      assert.deepEqual(await r.list('meta'), []);
      for (const obj of stored) {
        const data = packs.get(obj.name)!;
        assert.ok((await r.read(obj)).equals(data), obj.name);
        if (data.length === 0) continue;
        assert.ok((await r.read(obj, 0, 1)).equals(data.subarray(0, 1)));
        assert.ok((await r.read(obj, data.length - 1, 1)).equals(data.subarray(data.length - 1)));
        const mid = Math.floor(data.length / 3);
        const len = Math.floor(data.length / 2);
        assert.ok((await r.read(obj, mid, len)).equals(data.subarray(mid, mid + len)));
        assert.ok((await r.read(obj, mid)).equals(data.subarray(mid)));
        assert.equal((await r.read(obj, mid, 0)).length, 0);
        await rejectsWith(r.read(obj, data.length - 1, 2), 'io', /past the end/);
        assert.equal((await r.read(obj, data.length)).length, 0);
        await rejectsWith(r.read(obj, data.length + 1), 'io', /past the end/);
        await rejectsWith(r.read(obj, data.length + 10, 5), 'io', /past the end/);
      }
    });

    it('keeps metadata objects apart from packs', async () => {
      const r = await fresh();
      const gen1 = randomBytes(3000);
      const gen2 = randomBytes(600_000);
      await r.put('meta', 'meta-000001.db.lz4', gen1);
      await r.put('meta', 'meta-000002.db.lz4', gen2);
      await r.put('pack', 'meta-000001.db.lz4', Buffer.from('a pack that happens to share the name'));
      const meta = await r.list('meta');
      assert.deepEqual(meta.map((o) => [o.name, o.size]).sort(), [
        ['meta-000001.db.lz4', 3000],
        ['meta-000002.db.lz4', 600_000],
      ]);
      assert.ok((await r.read(meta.find((o) => o.name === 'meta-000002.db.lz4')!)).equals(gen2));
      assert.ok((await r.read({ kind: 'meta', name: 'meta-000001.db.lz4', id: meta.find((o) => o.name === 'meta-000001.db.lz4')!.id })).equals(gen1));
      assert.equal((await r.list('pack')).length, 1);
    });

    it('replaces an object put twice under one name; delete is idempotent; a deleted object is not-found', async () => {
      const r = await fresh();
      const first = await r.put('pack', 'beef', Buffer.from('first'));
      const second = await r.put('pack', 'beef', Buffer.from('second!'));
      const listed = await r.list('pack');
      assert.equal(listed.length, 1);
      assert.equal(listed[0].size, 7);
      assert.equal((await r.read(second)).toString(), 'second!');
      assert.equal((await r.read({ ...first, id: listed[0].id })).toString(), 'second!');
      const again = await r.put('pack', 'beef', Buffer.from('second!'));
      assert.equal(again.size, 7);
      await r.delete(second);
      assert.deepEqual(await r.list('pack'), []);
      await r.delete(second);
      await rejectsWith(r.read(second), 'not-found');
      await rejectsWith(r.read({ kind: 'meta', name: 'never-stored', id: '' }), 'not-found');
    });

    it('stores a fresh object (a name never used before) as put does', async () => {
      const r = await fresh();
      await r.init();
      const small = randomBytes(5000);
      const large = randomBytes(MiB + 777);
      const a = await r.put('pack', 'f1e501', small, { fresh: true });
      const b = await r.put('pack', 'f1e502', large, { fresh: true });
      const m = await r.put('meta', 'meta-fresh', small, { fresh: true });
      assert.deepEqual([a.kind, a.name, a.size, b.size, m.kind], ['pack', 'f1e501', small.length, large.length, 'meta']);
      assert.deepEqual((await r.list('pack')).map((o) => o.name).sort(), ['f1e501', 'f1e502']);
      assert.ok((await r.read(a)).equals(small));
      assert.ok((await r.read(b, 1000, 5000)).equals(large.subarray(1000, 6000)));
      assert.ok((await r.read(m)).equals(small));
    });

    it('refuses names that are not plain tokens', async () => {
      const r = await fresh();
      for (const name of ['', '../escape', '.hidden', 'a/b', 'x'.repeat(201), "it's"]) {
        await assert.rejects(r.put('pack', name, Buffer.from('x')), /invalid pack name/, JSON.stringify(name));
      }
    });

    it('lock: free, same owner again, another owner refused naming host, pid and since, force, release', async () => {
      const r = await fresh();
      assert.equal(await r.readLock(), undefined);
      await r.acquireLock(lockA);
      assert.deepEqual(await r.readLock(), lockA);
      const restarted = { ...lockA, pid: 999, since: '2026-03-01T00:00:00.000Z' };
      await r.acquireLock(restarted);
      assert.deepEqual(await r.readLock(), restarted);
      const refused = await rejectsWith(r.acquireLock(lockB), 'locked');
      assert.match(refused.message, /host-a/);
      assert.match(refused.message, /999/);
      assert.match(refused.message, /2026-03-01T00:00:00\.000Z/);
      assert.deepEqual(await r.readLock(), restarted);
      await r.releaseLock(lockB.owner);
      assert.deepEqual(await r.readLock(), restarted);
      await r.acquireLock(lockB, { force: true });
      assert.deepEqual(await r.readLock(), lockB);
      await rejectsWith(r.acquireLock(lockA), 'locked', /host-b/);
      await r.releaseLock(lockB.owner);
      assert.equal(await r.readLock(), undefined);
      await r.acquireLock(lockA);
      assert.deepEqual(await r.readLock(), lockA);
    });

    it('counts calls per method', async () => {
      const r = await fresh();
      const obj = await r.put('pack', 'c0ffee', Buffer.from('counted'));
      await r.read(obj);
      await r.list('pack');
      await r.delete(obj);
      const c = r.counters();
      assert.ok(Object.values(c).every((v) => Number.isInteger(v) && v > 0));
      assert.ok(Object.keys(c).length >= 4, JSON.stringify(c));
    });
  });
}

let localCount = 0;
const localBase = tempDir('pogfs-remote-local-');
conformance('LocalRemote', async () => new LocalRemote(join(localBase, `r${++localCount}`)));

let sharedEmulator: DriveEmulator | undefined;
let driveCount = 0;
const driveBase = tempDir('pogfs-remote-drive-');
after(async () => {
  await sharedEmulator?.close();
});
conformance('DriveRemote on the emulator', async () => {
  sharedEmulator ??= await DriveEmulator.start({ seed: 3 });
  const n = ++driveCount;
  return openRemote(`drive:conformance ${n}`, emulatorSettings(sharedEmulator, accessTokenFile(sharedEmulator, driveBase, `t${n}.json`)));
});

describe('LocalRemote layout', () => {
  it('writes DIR/packs/xx/NAME, DIR/meta/NAME and DIR/lock.json, leaving no temp files', async () => {
    const dir = join(tempDir(), 'remote');
    const r = new LocalRemote(dir);
    await r.init();
    const obj = await r.put('pack', 'abcdef', Buffer.from('x'));
    await r.put('meta', 'm1', Buffer.from('y'));
    await r.acquireLock(lockA);
    assert.equal(obj.id, join('packs', 'ab', 'abcdef'));
    assert.equal(readFileSync(join(dir, 'packs', 'ab', 'abcdef'), 'utf8'), 'x');
    assert.equal(readFileSync(join(dir, 'meta', 'm1'), 'utf8'), 'y');
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'lock.json'), 'utf8')), lockA);
    assert.deepEqual(readdirSync(join(dir, 'packs', 'ab')), ['abcdef']);
    assert.deepEqual(readdirSync(dir).sort(), ['lock.json', 'meta', 'packs']);
    // A temp file left by a crash is not an object.
    writeFileSync(join(dir, 'packs', 'ab', '.0123.tmp'), 'partial');
    assert.deepEqual((await r.list('pack')).map((o) => o.name), ['abcdef']);
    assert.deepEqual(r.counters(), { init: 1, put: 2, acquireLock: 1, list: 1, 'bytes.up': 2 });
  });

  it('refuses a lock.json that is not a lock unless forced', async () => {
    const dir = join(tempDir(), 'remote');
    const r = new LocalRemote(dir);
    await r.init();
    writeFileSync(join(dir, 'lock.json'), 'garbage');
    await rejectsWith(r.acquireLock(lockA), 'io', /not a lock/);
    await r.acquireLock(lockA, { force: true });
    assert.deepEqual(await r.readLock(), lockA);
  });
});

describe('openRemote and credentials', () => {
  it('parses local:DIR and drive:FOLDER and explains a bad spec', async () => {
    assert.deepEqual(parseRemoteSpec('drive:My backups'), { kind: 'drive', folder: 'My backups' });
    assert.equal(parseRemoteSpec('local:/x/y').kind, 'local');
    for (const bad of ['bogus', 'local:', 'drive:', 's3:bucket', '/plain/path']) {
      assert.throws(() => parseRemoteSpec(bad), /expected local:DIR .* or drive:FOLDER/);
    }
    assert.deepEqual(parseRemoteSpec('local:rel/dir'), { kind: 'local', dir: resolve('rel/dir') });
    // The same reading decides what the command line and the settings take for a remote.
    for (const spec of ['local:/x', 'drive:Films', 'drive:id:abc']) assert.equal(isRemoteSpec(spec), true, spec);
    for (const text of ['local:', 'drive:', '/local:x', 'localx:y', 'vol']) assert.equal(isRemoteSpec(text), false, text);
    assert.equal(normalizeRemoteSpec(' local:rel/dir '), `local:${resolve('rel/dir')}`);
    assert.equal(normalizeRemoteSpec(' drive:My backups '), 'drive:My backups');
    assert.equal(localRemoteDir('local:/srv/remote'), '/srv/remote');
    assert.equal(localRemoteDir('drive:local:x'), undefined);
    assert.equal(localRemoteDir(undefined), undefined);
    const r = await openRemote(`local:${join(tempDir(), 'x')}`);
    assert.match(r.description, /^local:\//);
    await assert.rejects(openRemote('drive:X', { uploadChunkBytes: 1000, credentialsPath: '/nonexistent' }), /multiple of 256 KiB/);
  });

  it('says to run pogfs auth when there are no credentials, and never echoes a file\'s content', async () => {
    const dir = tempDir();
    await rejectsWith(openRemote('drive:X', { credentialsPath: join(dir, 'missing.json') }), 'auth', /pogfs auth/);
    const secret = 'ya29.SECRET-looking token with spaces';
    writeFileSync(join(dir, 'bad.json'), secret);
    const e = await rejectsWith(openRemote('drive:X', { credentialsPath: join(dir, 'bad.json') }), 'auth');
    assert.ok(!e.message.includes('SECRET'));
    assert.deepEqual(parseCredentials('ya29.bare-token\n', 'f'), { kind: 'access-token', accessToken: 'ya29.bare-token' });
    assert.equal(parseCredentials('{"type":"service_account","client_email":"a@b","private_key":"k"}', 'f').kind, 'service-account');
    assert.throws(() => parseCredentials('{"type":"authorized_user","client_id":"x"}', 'f'), /refresh_token/);
  });

  it('keeps using an access token past its assumed expiry until Drive refuses it', async () => {
    const path = join(tempDir(), 'token');
    writeFileSync(path, 'ya29.still-good\n');
    const driveAuth = new DriveAuth(parseCredentials('ya29.still-good', path), { tokenUrl: 'http://127.0.0.1:9/token', source: path });
    // An hour later, as far as the library knows:
    driveAuth.client.setCredentials({ ...driveAuth.client.credentials, expiry_date: 1 });
    assert.equal((await driveAuth.client.getRequestHeaders()).get('authorization'), 'Bearer ya29.still-good');
    driveAuth.invalidate();
    await rejectsWith(driveAuth.client.getRequestHeaders(), 'auth', /cannot be refreshed/);
  });
});

describe('DriveRemote', () => {
  const dir = tempDir('pogfs-drive-remote-');
  const emulators: DriveEmulator[] = [];
  const remotes: Remote[] = [];
  const start = async (options: Parameters<typeof DriveEmulator.start>[0] = {}) => {
    const e = await DriveEmulator.start(options);
    emulators.push(e);
    return e;
  };
  const open = async (spec: string, settings: Partial<RemoteSettings>) => {
    const r = await openRemote(spec, settings);
    remotes.push(r);
    return r;
  };
  after(async () => {
    for (const r of remotes) await r.close();
    for (const e of emulators) await e.close();
  });

  it('finds its folder again by name (no duplicate), by id and by id:ID; a missing id is not-found', async () => {
    const emu = await start();
    const creds = accessTokenFile(emu, dir, 'find.json');
    const first = await open('drive:Shared name', emulatorSettings(emu, creds));
    await first.init();
    await first.put('pack', 'aa11', Buffer.from('hello'));
    const second = await open('drive:Shared name', emulatorSettings(emu, creds));
    await second.init();
    assert.deepEqual((await second.list('pack')).map((o) => o.name), ['aa11']);
    const tops = emu.storedFiles().filter((f) => f.name === 'Shared name' && f.parents.includes(emu.rootFolderId));
    assert.equal(tops.length, 1);
    assert.equal(tops[0].mimeType, FOLDER_MIME);
    assert.match(second.description, new RegExp(`^drive:Shared name \\(${tops[0].id}\\)$`));
    for (const spec of [`drive:${tops[0].id}`, `drive:id:${tops[0].id}`]) {
      const byId = await open(spec, emulatorSettings(emu, creds));
      assert.deepEqual((await byId.list('pack')).map((o) => o.name), ['aa11'], spec);
    }
    // The layout inside: packs/aa/aa11, meta/.
    const packs = emu.storedFiles().find((f) => f.name === 'packs' && f.parents.includes(tops[0].id))!;
    const sub = emu.storedFiles().find((f) => f.name === 'aa' && f.parents.includes(packs.id))!;
    assert.ok(emu.storedFiles().some((f) => f.name === 'aa11' && f.parents.includes(sub.id)));
    assert.ok(emu.storedFiles().some((f) => f.name === 'meta' && f.parents.includes(tops[0].id)));
    const missing = await open('drive:id:1NoSuchFolderAnywhere0123456789', emulatorSettings(emu, creds));
    await rejectsWith(missing.init(), 'not-found', /not found/);
  });

  it('round-trips 32 MiB of packs byte-identical through 20% error answers, resets and truncated bodies; counters match the server', async (t) => {
    const emu = await start({ seed: 11 });
    const r = await open('drive:faulty', emulatorSettings(emu, accessTokenFile(emu, dir, 'faulty.json')));
    await r.init();
    emu.setFaults({ errorRate: 0.2, errorKinds: [429, 500, 503, 'rateLimitExceeded', 'userRateLimitExceeded'], resetRate: 0.04, truncateRate: 0.04 });
    const packs = Array.from({ length: 8 }, (_, i) => ({ name: `${(i * 37).toString(16).padStart(2, '0')}pack${i}`, data: randomBytes(3 * MiB + i * 200_000) }));
    const t0 = performance.now();
    const objects = await Promise.all(packs.map((p) => r.put('pack', p.name, p.data)));
    const listed = await r.list('pack');
    assert.deepEqual(listed.map((o) => o.name).sort(), packs.map((p) => p.name).sort());
    for (const [i, p] of packs.entries()) {
      assert.ok((await r.read(objects[i])).equals(p.data), p.name);
      const off = 12345 * (i + 1);
      assert.ok((await r.read(objects[i], off, 100_000)).equals(p.data.subarray(off, off + 100_000)));
    }
    t.diagnostic(`32 MiB up and down through faults in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    emu.setFaults({ errorRate: 0, resetRate: 0, truncateRate: 0 });
    for (const p of packs) {
      const stored = emu.storedFiles().filter((f) => f.name === p.name);
      assert.equal(stored.length, 1, `one copy of ${p.name}`);
      assert.ok((await emu.readStoredFile(stored[0].id)).equals(p.data));
    }
    const faults = emu.stats().faults;
    assert.ok((faults['429'] ?? 0) > 0 && (faults['500'] ?? 0) + (faults['503'] ?? 0) > 0 && (faults.reset ?? 0) > 0 && (faults.truncate ?? 0) > 0, JSON.stringify(faults));
    const counters = r.counters();
    assert.ok(Object.keys(counters).some((k) => k.startsWith('retry.')), JSON.stringify(counters));
    // This emulator served only this remote: every attempt it counted, the client counted, and no more.
    assert.deepEqual(driveCalls(counters), driveCalls(emu.calls()));
  });

  it('resumes an interrupted resumable upload from what the server holds instead of starting over', async () => {
    const emu = await start();
    const r = await open('drive:resume', emulatorSettings(emu, accessTokenFile(emu, dir, 'resume.json'), { uploadChunkBytes: 4 * MiB }));
    await r.init();
    const data = randomBytes(16 * MiB);
    emu.resetStats();
    const before = emu.calls();
    emu.injectFault({ method: 'upload.resumable.chunk', fault: 'reset', afterBytes: 1.3 * MiB });
    const obj = await r.put('pack', 'cafe01', data);
    const stats = emu.stats();
    const calls = delta(emu.calls(), before);
    assert.equal(stats.faults.reset, 1);
    assert.equal(calls['upload.resumable.status'], 1);
    assert.equal(calls['upload.resumable.chunk'], 5); // 4 chunks plus the one cut short
    assert.equal(stats.uploadBytesPersisted, data.length);
    // Only the tail of the cut chunk past the last whole 256 KiB unit went twice.
    assert.ok(stats.bytesReceived > data.length && stats.bytesReceived < data.length + 256 * 1024 + 4096, String(stats.bytesReceived));
    assert.ok((await r.read(obj)).equals(data));
  });

  it('refreshes the access token once on a 401; a refused refresh is RemoteError auth without secrets', async () => {
    const emu = await start();
    const { path, refreshToken } = userCredentialsFile(emu, dir);
    const r = await open('drive:refresh', emulatorSettings(emu, path));
    await r.init();
    const obj = await r.put('meta', 'm1', Buffer.from('meta'));
    const tokenCalls = emu.calls()['oauth.token'];
    assert.equal(tokenCalls, 1);
    emu.expireAccessTokens();
    assert.equal((await r.read(obj)).toString(), 'meta');
    assert.equal(emu.calls()['oauth.token'], 2);
    assert.equal(r.counters()['retry.401'], 1);
    assert.equal(r.counters()['oauth.token'], 2);
    emu.expireAccessTokens();
    emu.setTokenEndpointMode('garbage');
    try {
      await rejectsWith(r.read(obj), 'auth', /not an OAuth token/);
    } finally {
      emu.setTokenEndpointMode('normal');
    }
    emu.revokeRefreshTokens();
    const e = await rejectsWith(r.read(obj), 'auth', /invalid_grant/);
    assert.ok(!e.message.includes(refreshToken));
  });

  it('refreshes a token that expires in the middle of a resumable upload and carries on with the session', async () => {
    const emu = await start();
    const { path } = userCredentialsFile(emu, dir);
    const r = await open('drive:midway', emulatorSettings(emu, path));
    await r.init();
    emu.setFaults({ bandwidthBytesPerSec: 20e6 });
    const data = randomBytes(6 * MiB);
    const uploading = r.put('pack', 'fe01', data);
    await new Promise((resolve) => setTimeout(resolve, 120));
    emu.expireAccessTokens();
    const obj = await uploading;
    emu.setFaults({ bandwidthBytesPerSec: 0 });
    assert.equal(r.counters()['retry.401'], 1);
    assert.equal(emu.calls()['oauth.token'], 2);
    // Folders top, packs, meta, the pack subfolders, packs/fe, then one upload session: it was not restarted.
    assert.equal(emu.calls()['files.create'], 3 + PACK_PREFIXES.length + 1 + 1);
    assert.equal(emu.calls()['upload.resumable.status'], 1);
    assert.ok((await r.read(obj)).equals(data));
  });

  it('streams a ranged read: the front is usable before the end arrives, and a body cut off midway is read again', async () => {
    const emu = await start();
    const r = await open('drive:stream', emulatorSettings(emu, accessTokenFile(emu, dir, 'stream.json')));
    const data = randomBytes(4 * MiB);
    const obj = await r.put('pack', 'st01', data);
    emu.setFaults({ bandwidthBytesPerSec: 8e6 });
    let firstSeenAt = -1;
    let attempts = 0;
    let lastFilled = -1;
    const start0 = Date.now();
    emu.injectFault({ method: 'files.get', fault: 'reset', afterBytes: 1 * MiB });
    const got = await r.read(obj, 1000, 3 * MiB, (buf, filled) => {
      if (filled < lastFilled) attempts++; // a new attempt starts from 0
      else assert.ok(filled > lastFilled, 'each report brings new bytes');
      lastFilled = filled;
      // Whatever is reported as in must already be the right bytes.
      assert.ok(buf.subarray(0, Math.min(filled, 4096)).equals(data.subarray(1000, 1000 + Math.min(filled, 4096))));
      if (firstSeenAt < 0 && filled > 0) firstSeenAt = Date.now() - start0;
    });
    const total = Date.now() - start0;
    emu.setFaults({ bandwidthBytesPerSec: 0 });
    assert.ok(got.equals(data.subarray(1000, 1000 + 3 * MiB)));
    assert.equal(attempts, 1, 'the reset attempt, then one that completed');
    assert.equal(r.counters()['retry.short'], 1);
    assert.ok(firstSeenAt >= 0 && firstSeenAt < total / 2, `first bytes at ${firstSeenAt} ms of ${total} ms`);
    await r.close();
  });

  it('makes the pack subfolders once, so a pack costs only its upload', async () => {
    const emu = await start();
    const token = accessTokenFile(emu, dir, 'buckets.json');
    const first = await open('drive:buckets', emulatorSettings(emu, token));
    await first.init();
    await first.close();
    const folders = emu.storedFiles().filter((f) => f.mimeType === FOLDER_MIME).map((f) => f.name);
    for (const prefix of PACK_PREFIXES) assert.ok(folders.includes(prefix), `packs/${prefix} made by init`);
    // A later mount learns them with one listing and makes none.
    const r = await open('drive:buckets', emulatorSettings(emu, token));
    const before = emu.calls();
    await r.init();
    const mid = emu.calls();
    assert.equal((mid['files.create'] ?? 0) - (before['files.create'] ?? 0), 0);
    assert.ok((mid['files.list'] ?? 0) - (before['files.list'] ?? 0) <= 4, 'top, packs, meta and the subfolders: one listing each');
    for (const digit of '0123456789abcdef') await r.put('pack', packName(`${digit}${'0'.repeat(39)}`), randomBytes(1000), { fresh: true });
    const after = emu.calls();
    assert.equal((after['files.list'] ?? 0) - (mid['files.list'] ?? 0), 0, 'no folder look-ups while writing');
    assert.equal((after['files.create'] ?? 0) - (mid['files.create'] ?? 0), 16, 'one create per pack, no folder creates');
    await r.close();
  });

  it('retries a request that times out', async () => {
    const emu = await start();
    const r = await open('drive:slow', emulatorSettings(emu, accessTokenFile(emu, dir, 'slow.json'), { requestTimeoutMs: 150 }));
    const obj = await r.put('pack', 'ad01', Buffer.from('patience'));
    emu.setFaults({ latencyMs: 400 });
    const reading = r.read(obj);
    await new Promise((resolve) => setTimeout(resolve, 100));
    emu.setFaults({ latencyMs: 0 });
    assert.equal((await reading).toString(), 'patience');
    assert.equal(r.counters()['retry.network'], 1);
  });

  it('lists every object through many short pages across pack subfolders', async () => {
    const emu = await start({ maxPageSize: 3 });
    const r = await open('drive:pages', emulatorSettings(emu, accessTokenFile(emu, dir, 'pages.json')));
    const names = Array.from({ length: 20 }, (_, i) => `${(i % 5).toString(16)}${i % 2}obj${i}`);
    for (const name of names) await r.put('pack', name, Buffer.from(name));
    for (let i = 0; i < 7; i++) await r.put('meta', `m${i}`, Buffer.from('m'));
    assert.deepEqual((await r.list('pack')).map((o) => o.name).sort(), [...names].sort());
    assert.equal((await r.list('meta')).length, 7);
    assert.ok(r.counters()['files.list'] >= 20 / 3);
  });

  it('with only an access token: a 401 is RemoteError auth, and a token replaced in the file is picked up', async () => {
    const emu = await start();
    const path = accessTokenFile(emu, dir, 'rotating.json');
    const r = await open('drive:rotating', emulatorSettings(emu, path));
    const obj = await r.put('pack', 'dd01', Buffer.from('x'));
    emu.expireAccessTokens();
    const e = await rejectsWith(r.read(obj), 'auth', /rotating\.json/);
    const fresh = emu.issueAccessToken();
    assert.ok(!e.message.includes('ya29.'));
    writeFileSync(path, `${fresh}\n`);
    assert.equal((await r.read(obj)).toString(), 'x');
  });

  it('authenticates with a service-account key through the JWT bearer grant', async () => {
    const emu = await start();
    const path = join(dir, 'sa.json');
    writeFileSync(path, JSON.stringify(emu.createServiceAccount()), { mode: 0o600 });
    const r = await open('drive:service', emulatorSettings(emu, path));
    const obj = await r.put('pack', 'ee01', Buffer.from('from a robot'));
    assert.equal((await r.read(obj)).toString(), 'from a robot');
    assert.equal(emu.calls()['oauth.token'], 1);
    emu.expireAccessTokens();
    assert.equal((await r.read(obj)).toString(), 'from a robot');
    assert.equal(emu.calls()['oauth.token'], 2);
  });

  it('refuses a lock.json that is not a lock unless forced', async () => {
    const emu = await start();
    const token = emu.issueAccessToken();
    const path = join(dir, 'garbage-lock.json');
    writeFileSync(path, JSON.stringify({ access_token: token }), { mode: 0o600 });
    const r = await open('drive:garbage lock', emulatorSettings(emu, path));
    await r.init();
    const top = emu.storedFiles().find((f) => f.name === 'garbage lock')!;
    const made = await fetch(`${emu.rootUrl}upload/drive/v3/files?uploadType=media&fields=id`, { method: 'POST', headers: { authorization: `Bearer ${token}` }, body: 'garbage' });
    const { id } = (await made.json()) as { id: string };
    await fetch(`${emu.rootUrl}drive/v3/files/${id}?addParents=${top.id}&removeParents=${emu.rootFolderId}`, { method: 'PATCH', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'lock.json' }) });
    await rejectsWith(r.readLock(), 'io', /not a lock/);
    await rejectsWith(r.acquireLock(lockA), 'io', /not a lock/);
    await r.acquireLock(lockA, { force: true });
    assert.deepEqual(await r.readLock(), lockA);
    assert.equal(emu.storedFiles().filter((f) => f.name === 'lock.json').length, 1);
  });

  it('out of storage is RemoteError quota, for multipart and resumable uploads alike', async () => {
    const emu = await start();
    const r = await open('drive:quota', emulatorSettings(emu, accessTokenFile(emu, dir, 'quota.json')));
    await r.init();
    emu.setStorageQuota(MiB);
    await rejectsWith(r.put('pack', 'ab01', randomBytes(300_000 + MiB)), 'quota', /storage/);
    await rejectsWith(r.put('meta', 'm-too-big', randomBytes(MiB + 1)), 'quota');
    await r.put('meta', 'm-fits', randomBytes(1000));
  });

  it('paces calls: bounded concurrency and minimum spacing, as the server sees them', async () => {
    const emu = await start({ faults: { latencyMs: 40 } });
    const creds = accessTokenFile(emu, dir, 'pace.json');
    const r = await open('drive:paced', emulatorSettings(emu, creds, { maxConcurrentCalls: 2 }));
    const obj = await r.put('pack', 'ac01', randomBytes(1000));
    emu.resetStats();
    await Promise.all(Array.from({ length: 10 }, () => r.read(obj)));
    assert.equal(emu.stats().maxInFlight, 2);
    emu.setFaults({ latencyMs: 0 });
    const spaced = await open('drive:paced', emulatorSettings(emu, creds, { minCallSpacingMs: 30, maxConcurrentCalls: 8 }));
    await spaced.list('meta'); // resolves the folders first
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 8 }, () => spaced.read(obj)));
    assert.ok(performance.now() - t0 >= 7 * 30 - 5, `${performance.now() - t0} ms`);
  });

  it('measures upload and download rates, with no cap and with a 100 MB/s cap', async (t) => {
    const emu = await start();
    const r = await open('drive:speed', emulatorSettings(emu, accessTokenFile(emu, dir, 'speed.json'), { uploadChunkBytes: 8 * MiB, multipartMaxBytes: 5 * MiB }));
    await r.init();
    const data = randomBytes(64 * MiB);
    const rate = async (label: string, name: string) => {
      let t0 = performance.now();
      const obj = await r.put('pack', name, data);
      const up = data.length / 1e6 / ((performance.now() - t0) / 1000);
      t0 = performance.now();
      const back = await r.read(obj);
      const down = data.length / 1e6 / ((performance.now() - t0) / 1000);
      assert.ok(back.equals(data));
      t.diagnostic(`${label}: upload ${up.toFixed(0)} MB/s, download ${down.toFixed(0)} MB/s (64 MiB, 8 MiB chunks)`);
      return { up, down };
    };
    await rate('no cap', 'fa01');
    emu.setFaults({ bandwidthBytesPerSec: 100e6 });
    const capped = await rate('100 MB/s cap', 'fa02');
    assert.ok(capped.up <= 105 && capped.down <= 105, JSON.stringify(capped));
    assert.ok(capped.up > 40 && capped.down > 40, JSON.stringify(capped));
  });
});

describe('pogfs auth against the emulator', () => {
  let emu: DriveEmulator;
  const dir = tempDir('pogfs-auth-');
  before(async () => {
    emu = await DriveEmulator.start();
  });
  after(async () => {
    await emu.close();
  });

  /** Runs auth(); `browser` gets the URL it printed and plays the user. */
  async function runAuth(options: Parameters<typeof auth>[0], browser: (url: string, input: PassThrough) => Promise<void>): Promise<{ output: string }> {
    const input = new PassThrough();
    const output = new PassThrough();
    let text = '';
    output.on('data', (d: Buffer) => (text += d.toString()));
    const running = auth({ authUrl: emu.authUrl, tokenUrl: emu.tokenUrl, noBrowser: true, input, output, timeoutMs: 10_000, ...options });
    const browsing = (async () => {
      for (let i = 0; i < 200 && !/\n {2}(http\S+)/.test(text); i++) await new Promise((r) => setTimeout(r, 10));
      const url = /\n {2}(http\S+)/.exec(text)?.[1];
      assert.ok(url, 'auth printed the address to open');
      await browser(url, input);
    })();
    try {
      await Promise.all([running, browsing]);
    } finally {
      input.end();
    }
    return { output: text };
  }

  const followRedirect = async (url: string) => {
    const consent = await fetch(url, { redirect: 'manual' });
    assert.equal(consent.status, 302);
    return consent.headers.get('location')!;
  };

  function clientFile(): string {
    const { clientId, clientSecret } = emu.registerOAuthClient();
    const path = join(dir, `client-${clientId.slice(0, 6)}.json`);
    writeFileSync(path, JSON.stringify({ installed: { client_id: clientId, client_secret: clientSecret, redirect_uris: ['http://localhost'] } }));
    return path;
  }

  it('runs the loopback flow with PKCE and stores a 0600 credentials file whose token works', async () => {
    const credentials = join(dir, 'new-config-dir', 'pogfs', 'drive-credentials.json');
    const { output } = await runAuth({ clientSecretFile: clientFile(), credentials }, async (url) => {
      assert.match(url, /code_challenge=/);
      assert.match(url, /code_challenge_method=S256/);
      assert.match(url, /access_type=offline/);
      assert.match(url, /scope=https%3A%2F%2Fwww\.googleapis\.com%2Fauth%2Fdrive\.file/);
      const back = await followRedirect(url);
      const page = await fetch(back);
      assert.equal(page.status, 200);
      assert.match(await page.text(), /authorized/);
    });
    assert.equal(statSync(credentials).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, 'new-config-dir', 'pogfs')).mode & 0o777, 0o700);
    const saved = JSON.parse(readFileSync(credentials, 'utf8')) as { type: string; refresh_token: string };
    assert.equal(saved.type, 'authorized_user');
    assert.ok(saved.refresh_token);
    assert.ok(!output.includes(saved.refresh_token));
    assert.match(output, /Saved Drive credentials to /);
    const r = await openRemote('drive:after auth', emulatorSettings(emu, credentials));
    try {
      const obj = await r.put('pack', 'ab12', Buffer.from('authorized'));
      assert.equal((await r.read(obj)).toString(), 'authorized');
    } finally {
      await r.close();
    }
  });

  it('--scope readonly asks for drive.readonly: the saved token reads the Drive and cannot change it', async () => {
    const credentials = join(dir, 'readonly.json');
    const { output } = await runAuth({ clientSecretFile: clientFile(), credentials, scope: 'readonly' }, async (url) => {
      assert.match(url, /scope=https%3A%2F%2Fwww\.googleapis\.com%2Fauth%2Fdrive\.readonly(&|$)/);
      await fetch(await followRedirect(url));
    });
    assert.match(output, /read the files in your Google Drive/);
    const client = await openDriveClient(emulatorSettings(emu, credentials));
    try {
      assert.ok(await client.startPageToken());
      await assert.rejects(client.createFolder('not allowed', 'root'), /insufficientPermissions/);
    } finally {
      await client.close();
    }
  });

  it('takes the pasted address on a machine without a browser', async () => {
    const credentials = join(dir, 'pasted.json');
    await runAuth({ clientSecretFile: clientFile(), credentials }, async (url, input) => {
      const back = await followRedirect(url);
      input.write('not a code\n');
      input.write(`${back}\n`);
    });
    assert.equal(statSync(credentials).mode & 0o777, 0o600);
  });

  it('fails in one clear line: missing client id, denied consent, a token endpoint answering garbage', async () => {
    await assert.rejects(auth({ credentials: join(dir, 'x.json'), input: new PassThrough(), output: new PassThrough() }), (e: unknown) => e instanceof UsageError && /no OAuth client id/.test(e.message));
    emu.setConsent('deny');
    try {
      await assert.rejects(
        runAuth({ clientSecretFile: clientFile(), credentials: join(dir, 'denied.json') }, async (url) => {
          await fetch(await followRedirect(url)).catch(() => undefined);
        }),
        (e: unknown) => e instanceof UsageError && /denied/.test(e.message) && !e.message.includes('\n'),
      );
    } finally {
      emu.setConsent('grant');
    }
    emu.setTokenEndpointMode('garbage');
    try {
      await assert.rejects(
        runAuth({ clientSecretFile: clientFile(), credentials: join(dir, 'garbage.json') }, async (url) => {
          await fetch(await followRedirect(url)).catch(() => undefined);
        }),
        (e: unknown) => e instanceof UsageError && /not an OAuth token/.test(e.message),
      );
    } finally {
      emu.setTokenEndpointMode('normal');
    }
    assert.throws(() => statSync(join(dir, 'garbage.json')));
  });
});
