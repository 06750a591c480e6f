import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openRemote, type RemoteSettings } from '../src/remote/open-remote';
import { RemoteError, type Remote } from '../src/remote/remote';
import type { FaultKind } from './support/drive-emulator';
import { EmulatorProcess } from './support/drive-emulator-process';
import { emulatorSettings } from './support/remote-settings';
import { tempDir } from './support/tmp';

const MiB = 1024 * 1024;

function md5(data: Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

/** Drive methods only (the client also counts retries and bytes). */
function driveCalls(counters: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(counters).filter(([k]) => /^(files|upload|changes|about)\./.test(k)));
}

function delta(now: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(driveCalls(now))) if (v - (before[k] ?? 0) > 0) out[k] = v - (before[k] ?? 0);
  return out;
}

async function rejectsWith(p: Promise<unknown>, code: RemoteError['code'], pattern?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof RemoteError, `expected a RemoteError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

/** Running and not a zombie: an orphan that exited stays in the process table until whoever adopted it reaps it. */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function waitUntil(condition: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (condition()) return true;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return condition();
}

describe('Drive emulator in a process of its own', () => {
  const dir = tempDir('pogfs-emulator-process-');
  const remotes: Remote[] = [];
  let emu: EmulatorProcess;
  before(async () => {
    emu = await EmulatorProcess.start({ seed: 5 });
  });
  after(async () => {
    for (const r of remotes) await r.close();
    await emu?.stop();
  });

  /** A DriveRemote on the emulator with an access-token file of its own. */
  const open = async (folder: string, extra: Partial<RemoteSettings> = {}) => {
    const credentials = join(dir, `${folder.replace(/\W/g, '-')}.json`);
    await emu.writeAccessTokenFile(credentials);
    const remote = await openRemote(`drive:${folder}`, emulatorSettings(emu, credentials, { maxAttempts: 8, ...extra }));
    remotes.push(remote);
    return { remote, credentials };
  };

  it('listens on 127.0.0.1 and answers Drive; the admin API wants its secret and refuses malformed requests; admin calls are not counted', async () => {
    assert.match(emu.rootUrl, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    assert.equal(emu.tokenUrl, `${emu.rootUrl}token`);
    assert.equal(emu.authUrl, `${emu.rootUrl}auth`);
    assert.notEqual(emu.pid, process.pid);
    assert.ok(isRunning(emu.pid));
    assert.ok(existsSync(emu.contentDir));
    assert.equal((await fetch(`${emu.rootUrl}drive/v3/files`)).status, 401);
    const wrongSecrets: Array<Record<string, string>> = [{}, { 'x-emulator-secret': 'guess' }];
    for (const headers of wrongSecrets) {
      const res = await fetch(`${emu.rootUrl}__emulator/calls`, { headers });
      assert.equal(res.status, 401);
      assert.match(((await res.json()) as { error: string }).error, /secret/);
    }
    const before = await emu.calls();
    await assert.rejects(emu.setFaults({ errorRate: 2 }), /HTTP 400: faults.errorRate must be a number from 0 to 1/);
    await assert.rejects(emu.injectFault({ method: 'files.get', fault: 'explode' as FaultKind }), /HTTP 400: injected fault.fault must be one of/);
    await assert.rejects(emu.corruptStoredFile('1NoSuchFile'), /HTTP 404: no stored file 1NoSuchFile/);
    await emu.resetStats();
    assert.deepEqual(await emu.calls(), before);
  });

  it('serves the real DriveRemote: put, list and read, and holds exactly the bytes put', async () => {
    const { remote, credentials } = await open('basic');
    assert.equal(statSync(credentials).mode & 0o777, 0o600);
    await remote.init();
    const pack = randomBytes(700_000);
    const meta = randomBytes(3000);
    const packObj = await remote.put('pack', 'ab01', pack);
    await remote.put('meta', 'meta-1', meta);
    assert.deepEqual((await remote.list('pack')).map((o) => [o.name, o.size]), [['ab01', pack.length]]);
    assert.deepEqual((await remote.list('meta')).map((o) => [o.name, o.size]), [['meta-1', meta.length]]);
    assert.ok((await remote.read(packObj)).equals(pack));
    assert.ok((await remote.read(packObj, 1000, 50_000)).equals(pack.subarray(1000, 51_000)));
    const stored = (await emu.storedFiles()).filter((f) => f.name === 'ab01');
    assert.equal(stored.length, 1);
    assert.deepEqual([stored[0].id, stored[0].size, stored[0].md5Checksum, stored[0].trashed], [packObj.id, pack.length, md5(pack), false]);
    assert.ok((await emu.readStoredFile(packObj.id)).equals(pack));
    const folder = (await emu.storedFiles()).find((f) => f.id === stored[0].parents[0]);
    assert.equal(folder?.name, 'ab');
    assert.equal(folder?.md5Checksum, undefined);
  });

  it('counts the calls the client made, and byte statistics until reset', async () => {
    const before = await emu.calls();
    const { remote } = await open('counted');
    const obj = await remote.put('pack', 'cc01', randomBytes(1000));
    await remote.read(obj);
    await remote.list('pack');
    await remote.delete(obj);
    const server = delta(await emu.calls(), before);
    assert.deepEqual(server, driveCalls(remote.counters()));
    assert.ok(server['files.list'] >= 2 && server['files.delete'] === 1, JSON.stringify(server));

    await emu.resetStats();
    assert.deepEqual(await emu.stats(), { bytesReceived: 0, bytesSent: 0, uploadBytesPersisted: 0, faults: {}, maxInFlight: 0 });
    const data = randomBytes(MiB + 5);
    await remote.put('pack', 'cc02', data, { fresh: true });
    const stats = await emu.stats();
    assert.equal(stats.uploadBytesPersisted, data.length);
    assert.ok(stats.bytesReceived >= data.length && stats.bytesSent > 0, JSON.stringify(stats));
  });

  it('makes the faults set through the admin API happen: injected, by rate and method, latency, bandwidth, quota, expired tokens', async () => {
    const { remote, credentials } = await open('faults', { maxAttempts: 2 });
    const small = await remote.put('pack', 'fa01', randomBytes(10_000));
    const big = await remote.put('pack', 'fa02', randomBytes(2 * MiB));

    await emu.resetStats();
    await emu.injectFault({ method: 'files.get', fault: 503 });
    await remote.read(small);
    assert.equal(remote.counters()['retry.503'], 1);
    assert.deepEqual((await emu.stats()).faults, { '503': 1 });

    await emu.setFaults({ errorRate: 1, errorKinds: [429], methods: ['files.list'] });
    await rejectsWith(remote.list('pack'), 'io', /HTTP 429/);
    await remote.read(small);
    await emu.setFaults({ methods: undefined });
    await rejectsWith(remote.read(small), 'io', /files\.get: HTTP 429/);
    await emu.setFaults({ errorRate: 0 });
    await remote.read(small);

    await emu.setFaults({ latencyMs: 200 });
    let t0 = performance.now();
    await remote.read(small);
    const latency = performance.now() - t0;
    await emu.setFaults({ latencyMs: 0, bandwidthBytesPerSec: 4e6 });
    t0 = performance.now();
    await remote.read(big);
    const seconds = (performance.now() - t0) / 1000;
    await emu.setFaults({ bandwidthBytesPerSec: 0 });
    assert.ok(latency >= 190, `${latency} ms with 200 ms latency`);
    // 2 MiB at 4 MB/s, less the link's 50 ms of burst credit.
    assert.ok(seconds >= 0.45 && seconds < 3, `2 MiB at 4 MB/s took ${seconds} s`);

    const used = (await emu.storedFiles()).reduce((n, f) => n + f.size, 0);
    await emu.setStorageQuota(used + 100_000);
    await rejectsWith(remote.put('pack', 'fa03', randomBytes(200_000)), 'quota');
    await emu.setStorageQuota(undefined);
    await remote.put('pack', 'fa03', randomBytes(200_000));

    await emu.expireAccessTokens();
    await rejectsWith(remote.read(small), 'auth', /refused the access token/);
    // The remote reads its credentials file again after a 401: a fresh token there is picked up.
    await emu.writeAccessTokenFile(credentials);
    assert.equal((await remote.read(small)).length, 10_000);
  });

  it('issues the other kinds of credentials: a refresh token of a registered OAuth client, a service-account key, an expired access token', async () => {
    const { clientId, clientSecret } = await emu.registerOAuthClient();
    const refreshToken = await emu.issueRefreshToken(clientId);
    const userCredentials = join(dir, 'user.json');
    writeFileSync(userCredentials, JSON.stringify({ type: 'authorized_user', client_id: clientId, client_secret: clientSecret, refresh_token: refreshToken }), { mode: 0o600 });
    const key = await emu.createServiceAccount('robot');
    assert.match(key.client_email, /^robot@/);
    assert.equal(key.token_uri, emu.tokenUrl);
    const keyFile = join(dir, 'robot.json');
    writeFileSync(keyFile, JSON.stringify(key), { mode: 0o600 });
    for (const [folder, path] of [['as user', userCredentials], ['as robot', keyFile]]) {
      const tokensBefore = (await emu.calls())['oauth.token'] ?? 0;
      const remote = await openRemote(`drive:${folder}`, emulatorSettings(emu, path, { maxAttempts: 8 }));
      remotes.push(remote);
      const obj = await remote.put('meta', 'm1', Buffer.from(folder));
      assert.equal((await remote.read(obj)).toString(), folder);
      assert.equal((await emu.calls())['oauth.token'], tokensBefore + 1, folder);
    }
    const expired = await emu.issueAccessToken(-1);
    assert.equal((await fetch(`${emu.rootUrl}drive/v3/files`, { headers: { authorization: `Bearer ${expired}` } })).status, 401);
    const live = await emu.issueAccessToken(60);
    assert.equal((await fetch(`${emu.rootUrl}drive/v3/files`, { headers: { authorization: `Bearer ${live}` } })).status, 200);
  });

  it('corrupts a stored file in place: DriveRemote reads the corrupted bytes back (hashes are checked above it)', async () => {
    const { remote } = await open('corrupt');
    const data = Buffer.alloc(100_000, 7);
    const obj = await remote.put('pack', 'bad1', data);
    await emu.corruptStoredFile(obj.id, 10, 3);
    const read = await remote.read(obj);
    assert.equal(read.length, data.length);
    assert.deepEqual([...read.subarray(9, 14)], [7, 7 ^ 0xff, 7 ^ 0xff, 7 ^ 0xff, 7]);
    assert.ok(read.subarray(13).equals(data.subarray(13)));
    // Drive's md5 is the one computed at upload, as with silent corruption.
    assert.equal((await emu.storedFiles()).find((f) => f.id === obj.id)?.md5Checksum, md5(data));
    await assert.rejects(emu.corruptStoredFile(obj.id, data.length - 1, 2), /HTTP 400: .*past the end/);
  });

  it('a fresh put makes no look-up: a 64 MiB pack is two Drive calls, session start and one 64 MiB chunk', async () => {
    const { remote } = await open('fresh', { uploadChunkBytes: 128 * MiB });
    await remote.init();
    // Folders are found or made once per remote; what is measured is the put itself.
    await remote.put('pack', 'f0warm', Buffer.from('x'), { fresh: true });

    let before = await emu.calls();
    await remote.put('pack', 'f0small1', randomBytes(1000));
    assert.deepEqual(delta(await emu.calls(), before), { 'files.list': 1, 'files.create': 1 });
    before = await emu.calls();
    await remote.put('pack', 'f0small2', randomBytes(1000), { fresh: true });
    assert.deepEqual(delta(await emu.calls(), before), { 'files.create': 1 });

    const data = randomBytes(64 * MiB);
    before = await emu.calls();
    const clientBefore = remote.counters();
    const obj = await remote.put('pack', 'f0big', data, { fresh: true });
    const expected = { 'files.create': 1, 'upload.resumable.chunk': 1 };
    assert.deepEqual(delta(await emu.calls(), before), expected);
    assert.deepEqual(delta(remote.counters(), clientBefore), expected);
    const stored = (await emu.storedFiles()).filter((f) => f.name === 'f0big');
    assert.deepEqual(stored.map((f) => [f.id, f.size, f.md5Checksum]), [[obj.id, data.length, md5(data)]]);
  });

  it('a fresh put whose answer was lost finds its own upload instead of storing a second copy', async () => {
    const { remote } = await open('lost answer');
    await remote.put('pack', 'e0warm', Buffer.from('x'), { fresh: true });
    await emu.resetStats();
    const before = await emu.calls();
    // Drive stores the file, then the connection drops halfway through its answer.
    await emu.injectFault({ method: 'files.create', fault: 'truncate' });
    const data = randomBytes(100_000);
    const obj = await remote.put('pack', 'e0lost', data, { fresh: true });
    assert.deepEqual((await emu.stats()).faults, { truncate: 1 });
    // One create, then the look-up before the retry found it: no second upload.
    assert.deepEqual(delta(await emu.calls(), before), { 'files.create': 1, 'files.list': 1 });
    const stored = (await emu.storedFiles()).filter((f) => f.name === 'e0lost');
    assert.deepEqual(stored.map((f) => [f.id, f.md5Checksum]), [[obj.id, md5(data)]]);
  });
});

describe('Drive emulator process lifetime', () => {
  const started: number[] = [];
  after(() => {
    // Whatever a failed test left running: only processes this file started, by pid.
    for (const pid of started) if (isRunning(pid)) process.kill(pid, 'SIGKILL');
  });

  it('starts with the faults and quota it is given; stop() ends it cleanly and removes its content; later admin calls fail saying so', async () => {
    const emu = await EmulatorProcess.start({ faults: { latencyMs: 150 }, storageQuotaBytes: 12345, accessTokenTtlSec: 60 });
    started.push(emu.pid);
    assert.ok(isRunning(emu.pid) && existsSync(emu.contentDir));
    const token = await emu.issueAccessToken();
    const t0 = performance.now();
    const about = await fetch(`${emu.rootUrl}drive/v3/about?fields=storageQuota(limit)`, { headers: { authorization: `Bearer ${token}` } });
    assert.ok(performance.now() - t0 >= 140, 'the initial latency applies');
    assert.deepEqual(await about.json(), { storageQuota: { limit: '12345' } });
    assert.deepEqual(await emu.stop(), { code: 0, signal: null });
    assert.equal(isRunning(emu.pid), false);
    assert.equal(existsSync(emu.contentDir), false);
    assert.deepEqual(await emu.stop(), { code: 0, signal: null });
    await assert.rejects(emu.calls(), /ECONNREFUSED.*exited with code 0/);
  });

  it('fails to start with the reason when the options are wrong', async () => {
    await assert.rejects(EmulatorProcess.start({ maxPageSize: 5000 }), /did not start: it exited with code 2\n.*maxPageSize must be an integer from 1 to 1000/);
  });

  for (const ending of ['SIGKILL', 'exit without stop()'] as const) {
    it(`exits when its parent ends: ${ending}`, async () => {
      // A parent of its own, so this test can kill it the way a crashed test runner dies.
      const parentScript = `
        const { EmulatorProcess } = require(process.env.EMULATOR_PROCESS_MODULE);
        EmulatorProcess.start().then((emu) => {
          process.stdout.write(JSON.stringify({ pid: emu.pid, contentDir: emu.contentDir }) + '\\n');
          if (process.env.PARENT_ENDING === 'exit without stop()') process.exit(0);
          setInterval(() => {}, 1000);
        }, (e) => {
          console.error(e);
          process.exit(1);
        });`;
      const parent = spawn(process.execPath, ['-e', parentScript], {
        env: { ...process.env, EMULATOR_PROCESS_MODULE: join(__dirname, 'support', 'drive-emulator-process.js'), PARENT_ENDING: ending },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      started.push(parent.pid!);
      const parentExited = new Promise<void>((resolve) => parent.once('exit', () => resolve()));
      const line = await new Promise<string>((resolve, reject) => {
        let text = '';
        parent.stdout.on('data', (chunk: Buffer) => {
          text += chunk.toString();
          if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')));
        });
        parent.once('exit', (code) => setTimeout(() => reject(new Error(`the parent exited with ${code} before the emulator was ready`)), 100));
      });
      const child = JSON.parse(line) as { pid: number; contentDir: string };
      started.push(child.pid);
      if (ending === 'SIGKILL') {
        assert.ok(isRunning(child.pid), 'the emulator runs while its parent does');
        parent.kill('SIGKILL');
      }
      await parentExited;
      assert.ok(await waitUntil(() => !isRunning(child.pid), 5000), `emulator ${child.pid} still running 5 s after its parent ended`);
      // It stopped cleanly, not killed: its content is gone too.
      assert.ok(await waitUntil(() => !existsSync(child.contentDir), 1000), `${child.contentDir} left behind`);
    });
  }
});
