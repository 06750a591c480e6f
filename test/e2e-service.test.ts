import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { liveDaemon } from '../src/cli/daemon-record';
import { EmulatorProcess } from './support/drive-emulator-process';
import { DriveEmulator } from './support/drive-emulator';
import { driveFlags, pogfsAsync, releaseView, shAsync, writeToken } from './support/drive-view';
import { CLI, isMounted, pogfs, pogfsOk } from './support/mount';
import { endDaemon, unmountQuietly } from './support/remote-mount';
import { tempDir } from './support/tmp';

/**
 * Running under a service manager: systemd's readiness protocol (Type=notify) against a
 * notification socket of our own (python3 plays systemd, as the protocol is one datagram
 * per message), and the bound on waiting for a daemon that never gets ready.
 */

const dir = tempDir('pogfs-service-');

/** One datagram as the receiver saw it, with what the mount point looked like at that moment. */
interface Notification {
  fields: Record<string, string>;
  /** The mount point was a mount, and stat through it worked, when the datagram arrived. */
  mountAnswered: boolean;
}

/**
 * systemd's side: binds a Unix datagram socket (`@NAME`: abstract) and, for each message,
 * stats the mount point before reading the next, so READY=1 can be checked to come only
 * once the mount answers.
 */
const RECEIVER = `
import json, os, socket, sys
path, mnt = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\\0' + path[1:] if path.startswith('@') else path)
print(json.dumps({'listening': True}), flush=True)
while True:
    data = s.recv(4096).decode()
    fields = dict(line.split('=', 1) for line in data.split('\\n') if '=' in line)
    try:
        answered = os.path.ismount(mnt) and os.stat(mnt).st_ino == 1
    except OSError:
        answered = False
    print(json.dumps({'fields': fields, 'mountAnswered': answered}), flush=True)
`;

class NotifyReceiver {
  readonly received: Notification[] = [];
  private constructor(private readonly proc: ChildProcess) {}

  static async start(socketPath: string, mnt: string): Promise<NotifyReceiver> {
    const proc = spawn('python3', ['-c', RECEIVER, socketPath, mnt], { stdio: ['ignore', 'pipe', 'inherit'] });
    const r = new NotifyReceiver(proc);
    let buf = '';
    let listening!: () => void;
    const ready = new Promise<void>((resolve) => (listening = resolve));
    proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      buf += chunk;
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const m = JSON.parse(buf.slice(0, nl)) as Notification & { listening?: boolean };
        buf = buf.slice(nl + 1);
        if (m.listening) listening();
        else r.received.push(m);
      }
    });
    await ready;
    return r;
  }

  /** Waits (bounded) for a message with `field`. */
  async waitFor(field: string, timeoutMs = 20_000): Promise<Notification> {
    for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; await sleep(20)) {
      const m = this.received.find((n) => n.fields[field] !== undefined);
      if (m) return m;
    }
    throw new Error(`no ${field} within ${timeoutMs} ms; received ${JSON.stringify(this.received)}`);
  }

  stop(): void {
    this.proc.kill();
  }
}

/** Whether a process still runs (a zombie counts as gone: it does nothing and holds nothing). */
function processRuns(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('systemd readiness (Type=notify)', () => {
  it('a volume mounted in the background: READY=1 with the daemon as MAINPID once stat answers, STOPPING=1 at umount', { timeout: 60_000 }, async () => {
    const volume = join(dir, 'vol');
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    pogfsOk(['init', volume]);
    const socketPath = join(dir, 'notify.sock');
    const receiver = await NotifyReceiver.start(socketPath, mnt);
    try {
      const r = await pogfsAsyncEnv(['mount', volume, mnt], { NOTIFY_SOCKET: socketPath });
      assert.equal(r.code, 0, r.stderr);
      const ready = await receiver.waitFor('READY');
      const daemonPid = (JSON.parse(readFileSync(join(volume, 'daemon.json'), 'utf8')) as { pid: number }).pid;
      assert.equal(ready.fields.READY, '1');
      assert.equal(ready.fields.MAINPID, String(daemonPid), 'MAINPID names the daemon, not the command that started it');
      assert.ok(ready.mountAnswered, 'READY=1 came before the mount answered stat');
      assert.match(ready.fields.STATUS ?? '', /^mounted /);
      assert.equal(receiver.received.filter((n) => n.fields.STOPPING !== undefined).length, 0);

      const u = await pogfsAsyncEnv(['umount', mnt], {});
      assert.equal(u.code, 0, u.stderr);
      const stopping = await receiver.waitFor('STOPPING');
      assert.equal(stopping.fields.STOPPING, '1');
      assert.equal(receiver.received.filter((n) => n.fields.READY !== undefined).length, 1, 'READY=1 is sent once');
    } finally {
      receiver.stop();
      unmountQuietly(mnt);
    }
  });

  it('a Drive view in the foreground, abstract socket: READY=1 once stat answers, logs on stderr, STOPPING=1 on SIGTERM', { timeout: 90_000 }, async () => {
    const mnt = join(dir, 'drive-mnt');
    const state = join(dir, 'drive-state');
    mkdirSync(mnt);
    const emu = await DriveEmulator.start();
    const socketPath = `@pogfs-test-notify-${process.pid}`;
    const receiver = await NotifyReceiver.start(socketPath, mnt);
    let daemon: ChildProcess | undefined;
    try {
      emu.seedItems([{ name: 'a.mkv', size: 1000, contentSeed: 1 }]);
      const flags = driveFlags(emu, writeToken(emu, join(dir, 'drive-token.json')));
      daemon = spawn(process.execPath, [CLI, 'drive', 'mount', mnt, '--foreground', '--log-file', '-', '--state-dir', state, '--poll-interval', '0', ...flags], {
        env: { ...process.env, NOTIFY_SOCKET: socketPath },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      daemon.stderr?.setEncoding('utf8').on('data', (c: string) => (stderr += c));
      const exited = new Promise<number | null>((resolve) => daemon?.on('exit', (code) => resolve(code)));
      const ready = await receiver.waitFor('READY', 60_000);
      assert.equal(ready.fields.MAINPID, String(daemon.pid));
      assert.ok(ready.mountAnswered, 'READY=1 came before the mount answered stat');
      assert.match(ready.fields.STATUS ?? '', /Drive view .* 1 items/);
      // The journal reads a foreground daemon's stderr: the log is there as JSON lines.
      assert.match(stderr, /"msg":"mounted the Drive view/);

      daemon.kill('SIGTERM');
      const stopping = await receiver.waitFor('STOPPING');
      assert.equal(stopping.fields.STOPPING, '1');
      assert.equal(await exited, 0, stderr);
      assert.equal(isMounted(mnt), false);
    } finally {
      receiver.stop();
      if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
      await releaseView(mnt, state);
      await emu.close();
    }
  });
});

/** One sample of a Prometheus text exposition: `name{labels} value` (0 when absent). */
function sample(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  return res.text();
}

describe('the Drive view daemon: log and metrics options', () => {
  it('drive mount --log-file --log-level --metrics: the log goes there, and FUSE, cache and Drive counters move with a read', { timeout: 90_000 }, async () => {
    const mnt = join(dir, 'metrics-mnt');
    const state = join(dir, 'metrics-state');
    const logFile = join(dir, 'drive-view.log');
    mkdirSync(mnt);
    const emu = await DriveEmulator.start();
    try {
      const size = 3 * 1024 * 1024 + 17;
      emu.seedItems([{ name: 'movie.mkv', size, contentSeed: 3 }]);
      const flags = driveFlags(emu, writeToken(emu, join(dir, 'metrics-token.json')));
      const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', '--metrics', '0', '--log-file', logFile, '--log-level', 'debug', ...flags]);
      assert.equal(r.code, 0, r.stderr);
      const url = (JSON.parse(readFileSync(join(state, 'daemon.json'), 'utf8')) as { metrics?: string }).metrics ?? '';
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const before = await scrape(url);
      assert.match(before, /^# TYPE pogfs_driveview_chunk_cache_hits_total counter$/m);
      assert.match(before, /^pogfs_remote_calls_total\{method="files\.list"\} [1-9]/m, 'the first scan is counted');
      assert.doesNotMatch(before, /^pogfs_block_store/m, 'a Drive view has no block store');

      const first = await readFile(join(mnt, 'movie.mkv'));
      assert.equal(first.length, size);
      const afterFirst = await scrape(url);
      assert.ok(sample(afterFirst, 'pogfs_read_bytes_total') - sample(before, 'pogfs_read_bytes_total') >= size);
      assert.ok(sample(afterFirst, 'pogfs_fuse_op_duration_seconds_count', '{op="read"}') > sample(before, 'pogfs_fuse_op_duration_seconds_count', '{op="read"}'));
      assert.ok(sample(afterFirst, 'pogfs_driveview_chunk_cache_misses_total') > sample(before, 'pogfs_driveview_chunk_cache_misses_total'));
      assert.ok(sample(afterFirst, 'pogfs_driveview_download_bytes_total') >= size);
      assert.ok(sample(afterFirst, 'pogfs_remote_calls_total', '{method="files.get"}') > sample(before, 'pogfs_remote_calls_total', '{method="files.get"}'));
      assert.ok(sample(afterFirst, 'pogfs_remote_requests_total', '{method="files.get",status="ok"}') >= 1);

      // The same bytes again, past the page cache: served by the chunk cache, no download.
      await shAsync(`dd if=${join(mnt, 'movie.mkv')} of=/dev/null bs=1M iflag=direct status=none`);
      const afterSecond = await scrape(url);
      assert.ok(sample(afterSecond, 'pogfs_driveview_chunk_cache_hits_total') > sample(afterFirst, 'pogfs_driveview_chunk_cache_hits_total'));
      assert.equal(sample(afterSecond, 'pogfs_driveview_download_bytes_total'), sample(afterFirst, 'pogfs_driveview_download_bytes_total'));
      // Chunks reach the disk cache behind the reads: bounded by --cache-size, more than nothing.
      assert.ok(sample(afterSecond, 'pogfs_driveview_chunk_cache_bytes') > 0);
      assert.equal(sample(afterSecond, 'pogfs_driveview_chunk_cache_capacity_bytes'), 10 * 1024 ** 3);

      const lines = readFileSync(logFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: number });
      assert.ok(lines.some((l) => /^metrics at http/.test(l.msg)));
      assert.ok(lines.some((l) => l.level === 20), 'debug lines with --log-level debug');
      assert.equal(existsSync(join(state, 'pogfs.log')), false, 'nothing in the default log');
    } finally {
      await releaseView(mnt, state);
      await emu.close();
    }
  });
});

describe('a daemon that never gets ready', () => {
  let emu: EmulatorProcess | undefined;
  after(async () => {
    await emu?.stop();
  });

  it('pogfs mount gives up after POGFS_READY_TIMEOUT_SECONDS: exit 1, one line, no daemon and no mount left', { timeout: 90_000 }, async () => {
    emu = await EmulatorProcess.start({ seed: 21 });
    const volume = join(dir, 'stalled-vol');
    const mnt = join(dir, 'stalled-mnt');
    mkdirSync(mnt);
    const credentials = join(dir, 'stalled-token.json');
    await emu.writeAccessTokenFile(credentials);
    pogfsOk(['init', volume, '--remote', 'drive:pogfs-stalled', '--credentials', credentials, '--drive-api-url', emu.rootUrl, '--drive-token-url', emu.tokenUrl]);
    // Drive accepts every connection from now on and answers none within the test.
    await emu.setFaults({ latencyMs: 600_000 });
    try {
      const limit = 3;
      const started = Date.now();
      const r = pogfs(['mount', volume, mnt], { env: { ...process.env, POGFS_READY_TIMEOUT_SECONDS: String(limit) } });
      const seconds = (Date.now() - started) / 1000;
      assert.equal(r.status, 1, r.stderr);
      assert.ok(seconds < limit + 10, `took ${seconds} s`);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], new RegExp(`^pogfs: the mount daemon \\(pid \\d+\\) did not get the mount ready within ${limit} s and was stopped; see .*pogfs\\.log for what it waited on, then try again`));
      assert.match(readFileSync(join(volume, 'pogfs.log'), 'utf8'), /attaching the remote drive:pogfs-stalled/, 'the log says what the daemon waited on');
      const pid = Number(/pid (\d+)/.exec(lines[0])?.[1]);
      for (const deadline = Date.now() + 5000; processRuns(pid) && Date.now() < deadline; ) await sleep(50);
      assert.equal(processRuns(pid), false, `daemon ${pid} still runs`);
      assert.equal(isMounted(mnt), false);
      assert.equal(liveDaemon(volume), undefined);
      assert.ok(existsSync(join(volume, 'pogfs.log')), 'the log the line points to exists');
    } finally {
      unmountQuietly(mnt);
      await endDaemon(volume, 1000);
    }
  });
});

/** pogfsAsync with extra environment variables. */
function pogfsAsyncEnv(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('exit', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

