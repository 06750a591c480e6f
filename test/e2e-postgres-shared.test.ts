/**
 * Several mounts of one PostgreSQL volume at once over a shared `local:` remote, through
 * the real kernel mount: A is the volume directory (`pogfs init V --meta URL --remote
 * local:R`), B joins from the database's URL alone (`pogfs mount URL MB --cache-dir C`),
 * each with its own block store. What is closed on one reads identically on the other
 * (its blocks reached the remote and the shared pack index before its rows were
 * committed), both create files in one directory at once with no entry lost, and a killed
 * A leaves B serving while A's session expires (POGFS_SESSION_EXPIRY_SECONDS, which only
 * tests set). Kernel caches following the other mount's changes (the change feed) are
 * test/e2e-postgres-feed.test.ts's.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { liveDaemon } from '../src/cli/daemon-record';
import { isMounted, pogfs, pogfsOk, sh, unmountAnyway } from './support/mount';
import { queryPostgres, startPostgres } from './support/postgres';
import { sharedVolumePlaces } from './support/shared-volume';

const EXPIRY_S = 2;
// Inherited by every daemon this file starts.
process.env.POGFS_SESSION_EXPIRY_SECONDS = String(EXPIRY_S);

const server = startPostgres();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs a shell command without blocking this process (two writers at once); rejects on a non-zero exit. */
function shAsync(command: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${command}: exit ${code}: ${err}`))));
  });
}

/** Sessions with a heartbeat within the expiry (an expired row stays until the next claim deletes it). */
async function liveSessions(url: string): Promise<number> {
  const q = `SELECT count(*)::int AS n FROM sessions WHERE heartbeat >= clock_timestamp() - interval '${EXPIRY_S} seconds'`;
  return (await queryPostgres(url, q))[0].n as number;
}

describe('several mounts of one PostgreSQL volume over a shared remote', () => {
  const url = server.createDatabase();
  // Unmounted before the directory is removed, also after a failure.
  const { volume, remote, cacheB, ma, mb } = sharedVolumePlaces('pogfs-shared-');

  it('mounts the volume directory on A and the database URL on B, both live at once', async () => {
    pogfsOk(['init', volume, '--meta', url, '--remote', `local:${remote}`]);
    pogfsOk(['mount', volume, ma]);
    const joined = pogfs(['mount', url, mb, '--cache-dir', cacheB]);
    assert.equal(joined.status, 0, joined.stderr);
    assert.doesNotMatch(joined.stderr, /password/i);
    assert.ok(isMounted(ma) && isMounted(mb));
    assert.equal(await liveSessions(url), 2);
    assert.equal(fs.readFileSync(join(cacheB, 'meta.url'), 'utf8').trim(), url);
  });

  it('a small file and a file of several blocks closed on one mount read identically on the other, both ways', () => {
    const small = Buffer.from('written on A\n');
    const big = randomBytes(5 * 128 * 1024 + 4321);
    fs.writeFileSync(join(ma, 'small-a.txt'), small);
    fs.writeFileSync(join(ma, 'big-a.bin'), big);
    assert.deepEqual(fs.readFileSync(join(mb, 'small-a.txt')), small);
    assert.deepEqual(fs.readFileSync(join(mb, 'big-a.bin')), big);

    const smallB = Buffer.from('written on B\n');
    const bigB = randomBytes(6 * 128 * 1024 + 99);
    fs.writeFileSync(join(mb, 'small-b.txt'), smallB);
    fs.writeFileSync(join(mb, 'big-b.bin'), bigB);
    assert.deepEqual(fs.readFileSync(join(ma, 'small-b.txt')), smallB);
    assert.deepEqual(fs.readFileSync(join(ma, 'big-b.bin')), bigB);
    // The blocks went through the shared remote and its index in the database.
    assert.ok(fs.readdirSync(remote, { recursive: true }).length > 0);
  });

  it('both create 200 files in one directory at once: no entry is lost', async () => {
    fs.mkdirSync(join(ma, 'both'));
    const ino = fs.statSync(join(ma, 'both')).ino;
    await Promise.all([
      shAsync(`for i in $(seq 1 200); do echo "a $i" > '${join(ma, 'both')}'/a-$i; done`),
      shAsync(`for i in $(seq 1 200); do echo "b $i" > '${join(mb, 'both')}'/b-$i; done`),
    ]);
    const rows = await queryPostgres(url, `SELECT convert_from(name, 'UTF8') AS name FROM dentries WHERE parent = ${ino} ORDER BY name`);
    const names = rows.map((r) => r.name as string);
    const expected = [...Array.from({ length: 200 }, (_, i) => `a-${i + 1}`), ...Array.from({ length: 200 }, (_, i) => `b-${i + 1}`)].sort();
    assert.deepEqual(names, expected);
    // Each mount lists every name, its own and the other's.
    for (const [m, which] of [[ma, 'A'], [mb, 'B']] as const) {
      const start = Date.now();
      while (fs.readdirSync(join(m, 'both')).length !== expected.length && Date.now() - start < 1000) await sleep(20);
      assert.deepEqual(fs.readdirSync(join(m, 'both')).sort(), expected, `${which} lists every name`);
    }
    // Contents cross over too.
    assert.equal(fs.readFileSync(join(mb, 'both', 'a-137'), 'utf8'), 'a 137\n');
    assert.equal(fs.readFileSync(join(ma, 'both', 'b-58'), 'utf8'), 'b 58\n');
  });

  it('B copies by reference, unlinks, truncates and overwrites files whose blocks only A stored: no error, and the results read back', async () => {
    const v1 = randomBytes(4 * 128 * 1024);
    const v2 = randomBytes(4 * 128 * 1024 + 500);
    fs.writeFileSync(join(ma, 'victim-1.bin'), v1);
    fs.writeFileSync(join(ma, 'victim-2.bin'), v2);
    fs.writeFileSync(join(ma, 'victim-3.txt'), 'old content from A\n');
    const shared = randomBytes(3 * 128 * 1024);
    fs.writeFileSync(join(ma, 'copy-source.bin'), shared);
    // A copy by reference on B of blocks B never held (copy_file_range shares whole blocks).
    sh(
      `python3 -c 'import os, sys\ns = os.open(sys.argv[1], os.O_RDONLY)\nd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)\n` +
        `n = os.fstat(s).st_size\nwhile n > 0: n -= os.copy_file_range(s, d, n)' '${join(mb, 'copy-source.bin')}' '${join(mb, 'copied-on-b.bin')}'`,
    );
    assert.deepEqual(fs.readFileSync(join(mb, 'copied-on-b.bin')), shared);
    assert.deepEqual(fs.readFileSync(join(ma, 'copied-on-b.bin')), shared);
    fs.rmSync(join(mb, 'victim-1.bin'));
    // Mid-block: B's new tail block is made from bytes it fetches first.
    fs.truncateSync(join(mb, 'victim-2.bin'), 200_000);
    fs.writeFileSync(join(mb, 'victim-3.txt'), 'new from B\n');
    assert.deepEqual(fs.readFileSync(join(mb, 'victim-2.bin')), v2.subarray(0, 200_000));
    assert.equal(fs.readFileSync(join(mb, 'victim-3.txt'), 'utf8'), 'new from B\n');
    const rows = await queryPostgres(url, "SELECT convert_from(d.name, 'UTF8') AS name, i.size::int AS size FROM dentries d JOIN inodes i ON i.ino = d.ino WHERE d.name LIKE 'victim%' ORDER BY 1");
    assert.deepEqual(rows, [
      { name: 'victim-2.bin', size: 200_000 },
      { name: 'victim-3.txt', size: 11 },
    ]);
    // Releasing blocks its store never counted is not an error (nor a negative count).
    const errors = fs
      .readFileSync(join(cacheB, 'pogfs.log'), 'utf8')
      .split('\n')
      .filter((l) => l !== '' && (JSON.parse(l) as { level: number }).level >= 50);
    assert.deepEqual(errors, []);
  });

  it('kill -9 of A leaves B serving; A\'s session expires; what A closed before still reads on B', async () => {
    const data = randomBytes(3 * 128 * 1024 + 17);
    fs.writeFileSync(join(ma, 'before-kill.bin'), data);
    const daemonA = liveDaemon(volume);
    assert.ok(daemonA, "A's daemon is running");
    process.kill(daemonA.pid, 'SIGKILL');
    try {
      fs.writeFileSync(join(mb, 'after-kill.txt'), 'B goes on\n');
      assert.equal(fs.readFileSync(join(mb, 'after-kill.txt'), 'utf8'), 'B goes on\n');
      assert.deepEqual(fs.readFileSync(join(mb, 'before-kill.bin')), data);
      await sleep(EXPIRY_S * 1000 + 1500);
      assert.equal(await liveSessions(url), 1, "A's session expired, B's is live");
      assert.equal(fs.readFileSync(join(mb, 'small-a.txt'), 'utf8'), 'written on A\n');
    } finally {
      unmountAnyway(ma);
    }
  });
});
