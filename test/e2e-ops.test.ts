import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { openLog } from '../src/cli/log';
import { parseMetricsAddress } from '../src/cli/metrics-address';
import type { VersionReport } from '../src/cli/version-command';
import { CLI, isMounted, mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { endDaemon, unmountQuietly, waitUploaded } from './support/remote-mount';
import { tempDir } from './support/tmp';
import { EmulatorProcess } from './support/drive-emulator-process';

/** One sample of a Prometheus text exposition: `name{labels} value` (0 when absent). */
function sample(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

function daemonRecord(volume: string): { pid: number; metrics?: string } {
  return JSON.parse(readFileSync(join(volume, 'daemon.json'), 'utf8')) as { pid: number; metrics?: string };
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return res.text();
}

describe('operating pogfs: versions, logs, metrics', () => {
  it('pogfs version and --version report pogfs, Node, libfuse and every native module', () => {
    const pkg = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string };
    const r = JSON.parse(pogfsOk(['version', '--json'])) as VersionReport;
    assert.equal(r.pogfs, pkg.version);
    assert.equal(r.node, process.versions.node);
    assert.match(r.libfuse ?? '', /^3\.\d+/);
    assert.deepEqual(
      r.native.map((m) => m.name),
      ['better-sqlite3', 'lmdb', 'lz4-napi', '@napi-rs/blake-hash', 'pogfs_zstd (zstd binding)', 'pogfs_fuse (FUSE binding)'],
    );
    for (const m of r.native) {
      assert.ok(m.loaded, `${m.name}: ${m.error}`);
      assert.match(m.file ?? '', /\.node$/, m.name);
      assert.match(m.version ?? '', /^\d+\.\d+\.\d+/, m.name);
    }
    const text = pogfsOk(['--version']);
    assert.match(text, new RegExp(`^pogfs ${pkg.version.replace(/\./g, '\\.')}\\n`));
    assert.match(text, new RegExp(`node ${process.versions.node}`));
    assert.match(text, /libfuse 3\.\d+/);
    assert.doesNotMatch(text, /NOT LOADED/);
    assert.deepEqual(JSON.parse(pogfsOk(['--version', '--json'])), r);
  });

  it('pogfs version reports a native module that does not load instead of crashing', () => {
    // Preloaded: makes lz4-napi's addon fail as a build for another Node would.
    const breaker = join(tempDir(), 'break-lz4.js');
    writeFileSync(
      breaker,
      `const Module = require('module');
       const load = Module._extensions['.node'];
       Module._extensions['.node'] = (m, file) => {
         if (/lz4/.test(file)) throw new Error('was compiled against a different Node.js version using NODE_MODULE_VERSION 1');
         return load(m, file);
       };`,
    );
    const r = pogfs(['version', '--json'], { env: { ...process.env, NODE_OPTIONS: `--require ${breaker}` } });
    assert.equal(r.status, 1, r.stderr);
    const report = JSON.parse(r.stdout) as VersionReport;
    const lz4 = report.native.find((m) => m.name === 'lz4-napi');
    assert.equal(lz4?.loaded, false);
    assert.match(lz4?.error ?? '', /NODE_MODULE_VERSION/);
    assert.ok(report.native.filter((m) => m.name !== 'lz4-napi').every((m) => m.loaded), r.stdout);
    const text = pogfs(['--version'], { env: { ...process.env, NODE_OPTIONS: `--require ${breaker}` } });
    assert.equal(text.status, 1);
    assert.match(text.stdout, /lz4-napi .*NOT LOADED: .*NODE_MODULE_VERSION/);
  });

  it('--metrics and --log-file mistakes are one line and exit 2, and nothing is mounted', async () => {
    assert.deepEqual(parseMetricsAddress('9567'), { host: '127.0.0.1', port: 9567 });
    assert.deepEqual(parseMetricsAddress(':9567'), { host: '127.0.0.1', port: 9567 });
    assert.deepEqual(parseMetricsAddress('0.0.0.0:80'), { host: '0.0.0.0', port: 80 });
    assert.deepEqual(parseMetricsAddress('[::1]:9567'), { host: '::1', port: 9567 });
    const dir = tempDir();
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    pogfsOk(['init', join(dir, 'vol')]);
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const takenPort = (taken.address() as AddressInfo).port;
    for (const [args, pattern] of [
      [['--metrics', String(takenPort)], /--metrics 127\.0\.0\.1:\d+: cannot listen: the port is in use/],
      [['--metrics', 'localhost'], /--metrics localhost: give PORT/],
      [['--metrics', '70000'], /--metrics 70000/],
      [['--log-file', '-'], /needs --foreground/],
      [['--log-level', 'loud'], /--log-level/],
    ] as const) {
      const r = pogfs(['mount', join(dir, 'vol'), mnt, ...args]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr.trim().split('\n')[0], pattern);
      assert.equal(existsSync(join(dir, 'vol', 'daemon.json')), false);
      assert.equal(isMounted(mnt), false);
    }
    taken.close();
  });

  it('a log file past --log-max-size moves to FILE.1 and starts again', () => {
    const file = join(tempDir(), 'test.log');
    const log = openLog(file, { level: 'info', maxBytes: 4096 });
    for (let i = 0; i < 200; i++) log.info(`line ${i} ${'x'.repeat(40)}`);
    log.info('the last line');
    log.flush();
    assert.ok(existsSync(`${file}.1`), 'no rotated file');
    assert.ok(statSync(file).size <= 4096 + 200, `current log ${statSync(file).size} bytes`);
    assert.ok(statSync(`${file}.1`).size <= 4096 + 200);
    // Nothing lost at the seam: the current file starts where FILE.1 ends.
    const msgs = (path: string) => readFileSync(path, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { msg: string }).msg);
    const current = msgs(file);
    const previous = msgs(`${file}.1`);
    assert.equal(current.at(-1), 'the last line');
    const lastOld = Number(/^line (\d+) /.exec(previous.at(-1) ?? '')?.[1]);
    assert.equal(current[0], lastOld === 199 ? 'the last line' : `line ${lastOld + 1} ${'x'.repeat(40)}`);
    log.debug('not at info level');
    log.flush();
    assert.doesNotMatch(readFileSync(file, 'utf8'), /not at info level/);
  });

  it('--log-file and --log-level take effect, and SIGHUP reopens the log (logrotate)', async () => {
    const m = mountFresh();
    m.umount();
    const logFile = join(tempDir(), 'daemon.log');
    pogfsOk(['mount', m.volume, m.mnt, '--log-file', logFile, '--log-level', 'debug']);
    try {
      writeFileSync(m.p('f'), 'hello');
      assert.match(readFileSync(logFile, 'utf8'), /"level":20,/, 'no debug line');
      assert.equal(existsSync(join(m.volume, 'pogfs.log.1')), false);
      renameSync(logFile, `${logFile}.old`);
      process.kill(daemonRecord(m.volume).pid, 'SIGHUP');
      for (const deadline = Date.now() + 10_000; !existsSync(logFile) && Date.now() < deadline; ) await sleep(50);
      assert.match(readFileSync(logFile, 'utf8'), /SIGHUP: log file reopened/);
      assert.equal(readFileSync(m.p('f'), 'utf8'), 'hello', 'the mount stayed up');
    } finally {
      m.umount();
    }
    assert.match(readFileSync(logFile, 'utf8'), /volume closed/);
    assert.doesNotMatch(readFileSync(`${logFile}.old`, 'utf8'), /volume closed/);
  });

  it('--foreground --log-file - logs JSON lines to stderr (for the journal) and no log file', async () => {
    const m = mountFresh();
    m.umount();
    rmSync(join(m.volume, 'pogfs.log'));
    const daemon = spawn(process.execPath, [CLI, 'mount', m.volume, m.mnt, '--foreground', '--log-file', '-'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    daemon.stderr.setEncoding('utf8');
    daemon.stderr.on('data', (t: string) => (stderr += t));
    const exited = new Promise<number | null>((resolve) => daemon.once('exit', resolve));
    try {
      for (const deadline = Date.now() + 30_000; !isMounted(m.mnt) && Date.now() < deadline; ) await sleep(50);
      assert.ok(isMounted(m.mnt), `not mounted: ${stderr}`);
    } finally {
      if (isMounted(m.mnt)) m.umount();
      else daemon.kill();
    }
    assert.equal(await exited, 0);
    const lines = stderr.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; level: number });
    assert.ok(lines.some((l) => l.msg.startsWith('mounted ')), stderr);
    assert.ok(lines.some((l) => l.msg === 'volume closed'), stderr);
    assert.equal(existsSync(join(m.volume, 'pogfs.log')), false);
  });

  it('--metrics serves Prometheus text on 127.0.0.1 and its counters move with reads and writes', async () => {
    const m = mountFresh();
    m.umount();
    pogfsOk(['mount', m.volume, m.mnt, '--metrics', '0']);
    const url = daemonRecord(m.volume).metrics ?? '';
    try {
      assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      const before = await scrape(url);
      assert.match(before, /^# TYPE pogfs_fuse_op_duration_seconds histogram$/m);
      assert.match(before, /^# TYPE pogfs_block_store_stored_bytes gauge$/m);
      assert.match(before, /^nodejs_eventloop_lag_seconds \d/m);
      const size = 3 * 1024 * 1024;
      sh(`head -c ${size} /dev/urandom > ${m.p('f')} && sync ${m.p('f')}`);
      // O_DIRECT: past the page cache, so the reads reach the daemon.
      sh(`dd if=${m.p('f')} of=/dev/null bs=1M iflag=direct status=none`);
      sh(`cat ${m.p('missing')} 2>/dev/null || true`);
      const after = await scrape(url);
      assert.ok(sample(after, 'pogfs_written_bytes_total') - sample(before, 'pogfs_written_bytes_total') >= size);
      assert.ok(sample(after, 'pogfs_read_bytes_total') - sample(before, 'pogfs_read_bytes_total') >= size);
      for (const op of ['write', 'read', 'create', 'lookup']) {
        assert.ok(sample(after, 'pogfs_fuse_op_duration_seconds_count', `{op="${op}"}`) > sample(before, 'pogfs_fuse_op_duration_seconds_count', `{op="${op}"}`), op);
      }
      assert.ok(sample(after, 'pogfs_fuse_op_duration_seconds_bucket', '{le="+Inf",op="read"}') > 0);
      assert.ok(sample(after, 'pogfs_fuse_op_errors_total', '{op="lookup",errno="ENOENT"}') >= 1);
      assert.ok(sample(after, 'pogfs_block_store_stored_bytes') >= size);
      assert.ok(sample(after, 'pogfs_block_store_blocks') >= size / (128 * 1024));
      assert.equal((await fetch(url.replace(/metrics$/, 'other'))).status, 404);
    } finally {
      m.umount();
    }
    await assert.rejects(fetch(url), 'nothing listens after unmount');
  });

  it('--metrics on a volume with a remote counts remote calls, pending uploads and fetches', async () => {
    const dir = tempDir('pogfs-e2e-', () => unmountQuietly(mnt));
    const volume = join(dir, 'vol');
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    // A cache smaller than the file: once uploaded, most of it is evicted and reading it back misses.
    pogfsOk(['init', volume, '--remote', `local:${join(dir, 'remote')}`, '--cache-size', '16M']);
    pogfsOk(['mount', volume, mnt, '--metrics', '0']);
    try {
      const url = daemonRecord(volume).metrics ?? '';
      const before = await scrape(url);
      sh(`head -c 41943040 /dev/urandom > ${join(mnt, 'f')} && sync ${join(mnt, 'f')}`);
      await waitUploaded(mnt);
      const uploaded = await scrape(url);
      assert.ok(sample(uploaded, 'pogfs_remote_calls_total', '{method="put"}') > sample(before, 'pogfs_remote_calls_total', '{method="put"}'), uploaded);
      assert.equal(sample(uploaded, 'pogfs_upload_pending_bytes'), 0);
      sh(`dd if=${join(mnt, 'f')} of=/dev/null bs=1M iflag=direct status=none`);
      const after = await scrape(url);
      assert.ok(sample(after, 'pogfs_remote_cache_misses_total') > 0, after);
      assert.ok(sample(after, 'pogfs_remote_fetch_bytes_total') > 0);
      assert.ok(sample(after, 'pogfs_remote_cache_hits_total') + sample(after, 'pogfs_remote_cache_misses_total') >= 64, 'every block read is a hit or a miss');
    } finally {
      unmountQuietly(mnt);
    }
  });

  it('--metrics on a Drive volume counts Drive requests by method and HTTP status', async () => {
    const dir = tempDir('pogfs-e2e-', () => unmountQuietly(mnt));
    const volume = join(dir, 'vol');
    const mnt = join(dir, 'mnt');
    const credentials = join(dir, 'token.json');
    mkdirSync(mnt);
    const emu = await EmulatorProcess.start({ seed: 21 });
    try {
      await emu.writeAccessTokenFile(credentials);
      pogfsOk(['init', volume, '--remote', 'drive:pogfs-e2e-metrics', '--credentials', credentials, '--drive-api-url', emu.rootUrl, '--drive-token-url', emu.tokenUrl]);
      pogfsOk(['mount', volume, mnt, '--metrics', ':0']);
      const url = daemonRecord(volume).metrics ?? '';
      sh(`head -c 1048576 /dev/urandom > ${join(mnt, 'f')} && sync ${join(mnt, 'f')}`);
      await waitUploaded(mnt);
      const text = await scrape(url);
      const ok = text.split('\n').filter((l) => /^pogfs_remote_requests_total\{method="[^"]+",status="ok"\} [1-9]/.test(l));
      assert.ok(ok.length > 0, text);
      assert.ok(sample(text, 'pogfs_remote_bytes_total', '{direction="up"}') >= 1048576, 'the pack went up');
      // Drive failing: the uploader's attempts (2 s after the write) are counted with their HTTP status.
      await emu.setFaults({ errorRate: 1, errorKinds: [503] });
      writeFileSync(join(mnt, 'g'), 'more');
      sh(`sync ${join(mnt, 'g')}`);
      let failed = 0;
      for (const deadline = Date.now() + 30_000; failed === 0 && Date.now() < deadline; await sleep(200)) {
        failed = (await scrape(url)).split('\n').filter((l) => /^pogfs_remote_requests_total\{method="[^"]+",status="503"\} [1-9]/.test(l)).length;
      }
      await emu.setFaults({ errorRate: 0 });
      assert.ok(failed > 0, 'no request counted with status 503');
    } finally {
      unmountQuietly(mnt);
      await endDaemon(volume, 30_000);
      await emu.stop();
    }
  });

  it('gc and pin show progress with rate and ETA on a terminal, and nothing when not on one', async () => {
    const dir = tempDir('pogfs-e2e-', () => unmountQuietly(mnt));
    const volume = join(dir, 'vol');
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    pogfsOk(['init', volume, '--remote', `local:${join(dir, 'remote')}`]);
    pogfsOk(['mount', volume, mnt]);
    // `script` gives the command a terminal; its output is the terminal's.
    const onTerminal = (args: string[]) => sh(`script -qec "${[process.execPath, CLI, ...args].join(' ')}" /dev/null`);
    const statusLine = (what: string) => new RegExp(`\\r\\x1b\\[K${what}: \\d+/\\d+ \\(\\d+%\\) \\d+( MB)?/s, ETA \\d+:\\d\\d`);
    try {
      sh(`mkdir ${join(mnt, 'd')} && head -c 2000000 /dev/urandom > ${join(mnt, 'd', 'f')}`);
      assert.match(onTerminal(['pin', join(mnt, 'd')]), statusLine('pin: fetching blocks'));
      assert.match(onTerminal(['gc', volume]), statusLine('gc: scanning blocks'));
      // A deleted file's pack is deleted from the remote by gc: that phase shows too.
      await waitUploaded(mnt);
      sh(`head -c 1000000 /dev/urandom > ${join(mnt, 'gone')}`);
      await waitUploaded(mnt);
      rmSync(join(mnt, 'gone'));
      assert.match(onTerminal(['gc', volume]), statusLine('gc: deleting remote packs'));
      for (const args of [['pin', join(mnt, 'd')], ['gc', volume]]) {
        const r = pogfs(args);
        assert.equal(r.status, 0, r.stderr);
        assert.doesNotMatch(r.stderr + r.stdout, /\x1b\[K/, args[0]);
      }
    } finally {
      unmountQuietly(mnt);
    }
    assert.match(onTerminal(['gc', volume]), statusLine('gc: scanning blocks'));
    const r = pogfs(['gc', volume]);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /\x1b\[K/);
    // Mounting from the remote alone, and rebuilding the metadata from it, read every
    // pack's index: that shows too (fsck exits 1 when it repaired something).
    const copy = join(dir, 'copy');
    const mnt2 = join(dir, 'mnt2');
    mkdirSync(mnt2);
    try {
      assert.match(onTerminal(['mount', `local:${join(dir, 'remote')}`, mnt2, '--cache-dir', copy]), statusLine('reading pack indexes'));
    } finally {
      unmountQuietly(mnt2);
    }
    const rebuilt = sh(`script -qec "${[process.execPath, CLI, 'fsck', volume, '--rebuild-from-remote'].join(' ')}" /dev/null || true`);
    assert.match(rebuilt, statusLine('reading pack indexes'));
  });
});
