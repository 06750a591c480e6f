import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isMounted, mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { tempDir } from './support/tmp';

interface Stats {
  files: number;
  logicalBytes: number;
  uniqueBytes: number;
  storedBytes: number;
  blocks: number;
  dedupRatio: number;
}

function oneLineError(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.status, 2, `exit code ${r.status}, stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  assert.match(lines[0], pattern);
}

describe('pogfs command line', () => {
  it('every command has --help; unknown flags are errors', () => {
    for (const cmd of [[], ['init'], ['mount'], ['umount'], ['stats'], ['fsck'], ['gc'], ['tune']]) {
      const r = pogfs([...cmd, '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /Usage: pogfs/);
    }
    const r = pogfs(['init', join(tempDir(), 'v'), '--bogus']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown option '--bogus'/);
    assert.equal(pogfs(['frobnicate']).status, 2);
    assert.match(pogfs(['init', join(tempDir(), 'v'), '--block-size', '100K']).stderr, /power of two/);
  });

  it('init refuses a non-empty directory and an existing volume', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'file'), 'x');
    oneLineError(pogfs(['init', dir]), /not empty/);
    const vol = join(tempDir(), 'v');
    pogfsOk(['init', vol]);
    oneLineError(pogfs(['init', vol]), /already a pogfs volume/);
  });

  it('mount errors are one line and exit code 2', () => {
    const dir = tempDir();
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    oneLineError(pogfs(['mount', join(dir, 'missing'), mnt]), /no volume at .*pogfs init/);
    mkdirSync(join(dir, 'foreign'));
    writeFileSync(join(dir, 'foreign', 'x'), 'x');
    oneLineError(pogfs(['mount', join(dir, 'foreign'), mnt]), /not a pogfs volume/);
    const newer = join(dir, 'newer');
    pogfsOk(['init', newer]);
    const db = new Database(join(newer, 'meta.db'));
    db.prepare('UPDATE superblock SET format_version = format_version + 1').run();
    db.close();
    oneLineError(pogfs(['mount', newer, mnt]), /newer than this pogfs understands/);
    const vol = join(dir, 'vol');
    pogfsOk(['init', vol]);
    oneLineError(pogfs(['mount', vol, join(dir, 'nomnt')]), /does not exist/);
    assert.equal(isMounted(mnt), false);
  });

  it('a mount point inside its volume, or a volume under its mount point, is refused at once', () => {
    const dir = tempDir();
    const vol = join(dir, 'vol');
    pogfsOk(['init', vol]);
    // Before the check these hung for ever: the daemon waited on its own mount.
    oneLineError(pogfs(['mount', vol, vol]), /mount point .* is the volume itself/);
    mkdirSync(join(vol, 'sub'));
    oneLineError(pogfs(['mount', vol, join(vol, 'sub')]), /mount point .* is inside the volume/);
    oneLineError(pogfs(['mount', vol, dir]), /the volume .* is inside mount point/);
    // The default volume under $XDG_DATA_HOME: `pogfs mount ~` must not even create it.
    const home = tempDir();
    const data = join(home, '.local', 'share');
    oneLineError(pogfs(['mount', home], { env: { ...process.env, XDG_DATA_HOME: data } }), /the volume .* is inside mount point/);
    assert.equal(existsSync(join(data, 'pogfs')), false);
    // A remote whose local copy or directory lies under the mount point.
    const remoteDir = join(dir, 'remote');
    oneLineError(pogfs(['mount', `local:${remoteDir}`, dir, '--cache-dir', join(tempDir(), 'copy')]), /the remote directory .* is inside mount point/);
    const mnt = join(tempDir(), 'mnt');
    mkdirSync(mnt);
    oneLineError(pogfs(['mount', `local:${remoteDir}`, mnt, '--cache-dir', join(mnt, 'copy')]), /local copy .* is inside mount point/);
    for (const m of [vol, join(vol, 'sub'), dir, home, mnt]) assert.equal(isMounted(m), false);
  });

  it('a non-empty mount point is refused unless --allow-non-empty', () => {
    const vol = join(tempDir(), 'vol');
    pogfsOk(['init', vol]);
    const mnt = join(tempDir(), 'mnt');
    mkdirSync(mnt);
    writeFileSync(join(mnt, 'precious'), 'hidden by a mount');
    oneLineError(pogfs(['mount', vol, mnt]), /not empty .*--allow-non-empty/);
    assert.equal(isMounted(mnt), false);
    pogfsOk(['mount', vol, mnt, '--allow-non-empty']);
    try {
      assert.equal(existsSync(join(mnt, 'precious')), false);
    } finally {
      pogfsOk(['umount', mnt]);
    }
    assert.equal(readFileSync(join(mnt, 'precious'), 'utf8'), 'hidden by a mount');
  });

  it('messages point the right way: a file as volume, a bad remote, a missing remote, missing credentials', () => {
    const dir = tempDir();
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    writeFileSync(join(dir, 'afile'), 'x');
    const asFile = pogfs(['mount', join(dir, 'afile'), mnt]);
    oneLineError(asFile, /is a file, not a volume directory/);
    assert.doesNotMatch(asFile.stderr, /with: pogfs init/);
    mkdirSync(join(dir, 'empty'));
    oneLineError(pogfs(['mount', join(dir, 'empty'), mnt]), /not a pogfs volume .*pogfs init/);
    const s3 = pogfs(['init', join(dir, 'v1'), '--remote', 's3:bucket']);
    oneLineError(s3, /--remote: remote "s3:bucket" is not/);
    assert.doesNotMatch(s3.stderr, /tune/);
    const nope = pogfs(['mount', 'local:/nope/nothing', mnt]);
    oneLineError(nope, /holds no pogfs metadata backup/);
    assert.equal(nope.stderr.split('local:/nope/nothing').length, 2, `the source is named once: ${nope.stderr}`);
    const cred = pogfs(['init', join(dir, 'v2'), '--remote', 'drive:x', '--credentials', join(dir, 'none.json')]);
    assert.equal(cred.stderr.match(/pogfs auth/g)?.length, 1, cred.stderr);
    assert.equal(cred.stderr.trim().split('\n').length, 1, cred.stderr);
  });

  it('with --json, errors are JSON on stdout with the exit code', () => {
    for (const args of [['stats', join(tempDir(), 'none'), '--json'], ['stats', '--json', '--bogus'], ['fsck', join(tempDir(), 'none'), '--json']]) {
      const r = pogfs(args);
      assert.notEqual(r.status, 0);
      const parsed = JSON.parse(r.stdout) as { error: string; exitCode: number };
      assert.equal(parsed.exitCode, r.status);
      assert.ok(parsed.error.length > 0);
    }
  });

  it('a busy mount point or an already mounted volume is refused', () => {
    const m = mountFresh();
    const other = join(tempDir(), 'other');
    pogfsOk(['init', other]);
    oneLineError(pogfs(['mount', other, m.mnt]), /busy/);
    const mnt2 = join(tempDir(), 'mnt2');
    mkdirSync(mnt2);
    oneLineError(pogfs(['mount', m.volume, mnt2]), /already mounted at/);
    m.umount();
    assert.equal(isMounted(m.mnt), false);
    oneLineError(pogfs(['umount', m.mnt]), /is not mounted/);
  });

  it('mount MOUNTPOINT alone creates and uses the default volume under XDG_DATA_HOME', () => {
    const xdg = tempDir();
    const mnt = join(tempDir(), 'mnt');
    mkdirSync(mnt);
    const env = { ...process.env, XDG_DATA_HOME: xdg };
    const r = pogfs(['mount', mnt], { env });
    assert.equal(r.status, 0, r.stderr);
    try {
      assert.match(r.stderr, /created the default volume/);
      writeFileSync(join(mnt, 'hello'), 'world');
      const s = JSON.parse(pogfsOk(['stats', join(xdg, 'pogfs', 'default'), '--json'])) as Stats;
      assert.equal(s.files, 1);
    } finally {
      pogfs(['umount', mnt]);
    }
    assert.equal(isMounted(mnt), false);
  });

  it('stats by numbers: the same 100 MiB twice grows stored bytes by under 1%', () => {
    const m = mountFresh();
    const src = join(tempDir(), 'data');
    sh(`head -c $((100 * 1024 * 1024)) /dev/urandom > '${src}'`);
    sh(`cp '${src}' '${m.p('one')}'`);
    const first = JSON.parse(pogfsOk(['stats', m.mnt, '--json'])) as Stats;
    sh(`cp '${src}' '${m.p('two')}'`);
    const second = JSON.parse(pogfsOk(['stats', m.volume, '--json'])) as Stats;
    assert.equal(second.files, 2);
    assert.equal(second.logicalBytes, 200 * 1024 * 1024);
    assert.ok(first.storedBytes >= 100 * 1024 * 1024, `stored ${first.storedBytes}`);
    const growth = (second.storedBytes - first.storedBytes) / first.storedBytes;
    assert.ok(growth < 0.01, `stored bytes grew by ${(growth * 100).toFixed(2)}%`);
    assert.ok(second.dedupRatio > 1.99, `dedup ratio ${second.dedupRatio}`);
    const text = pogfsOk(['stats', m.mnt]);
    assert.match(text, /dedup ratio\s+2\.00x/);
  });

  it('umount refuses while the mount is in use, then works', async () => {
    const m = mountFresh();
    const busy = spawn('sleep', ['60'], { cwd: m.mnt, stdio: 'ignore' });
    await sleep(200);
    const r = pogfs(['umount', m.mnt]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /busy/i);
    assert.ok(isMounted(m.mnt));
    busy.kill('SIGKILL');
    await new Promise((done) => busy.on('exit', done));
    m.umount();
    assert.equal(isMounted(m.mnt), false);
  });

  it('SIGTERM to the daemon commits, unmounts and exits', async () => {
    const m = mountFresh();
    writeFileSync(m.p('kept'), 'kept across SIGTERM');
    const pid = m.daemonPid();
    process.kill(pid, 'SIGTERM');
    for (let i = 0; i < 400; i++) {
      try {
        process.kill(pid, 0);
      } catch {
        break;
      }
      await sleep(25);
    }
    assert.throws(() => process.kill(pid, 0), /ESRCH/);
    assert.equal(isMounted(m.mnt), false);
    assert.match(readFileSync(join(m.volume, 'pogfs.log'), 'utf8'), /SIGTERM: unmounting/);
    m.mount();
    assert.equal(readFileSync(m.p('kept'), 'utf8'), 'kept across SIGTERM');
  });
});
