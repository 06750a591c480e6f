/**
 * A file open on one mount of a shared PostgreSQL volume stays readable there until it is
 * closed, wherever it is unlinked, through the real kernel mounts: A is the volume
 * directory, B joins from the database's URL (as test/e2e-postgres-shared.test.ts sets
 * them up). B's unlink leaves the inode and its block rows in the database while A holds
 * it; A's close frees them. When A's daemon is killed while it holds such a file, its
 * session expires (POGFS_SESSION_EXPIRY_SECONDS, which only tests set) and the next mount
 * frees the inode, while B is still live.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { liveDaemon } from '../src/cli/daemon-record';
import { isMounted, pogfsOk, unmountAnyway } from './support/mount';
import { inodeRowCounts, queryPostgres, startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

const EXPIRY_S = 2;
// Inherited by every daemon this file starts.
process.env.POGFS_SESSION_EXPIRY_SECONDS = String(EXPIRY_S);

const server = startPostgres();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits (up to `ms`) until inode `ino` has no rows left in PostgreSQL. */
async function untilGone(url: string, ino: number, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const rows = await inodeRowCounts(url, ino);
    if (rows.inode === 0 && rows.blocks === 0 && rows.opens === 0) return;
    if (Date.now() > deadline) assert.fail(`inode ${ino} still has rows: ${JSON.stringify(rows)}`);
    await sleep(100);
  }
}

/** A process holding `path` open for reading (its descriptor 3), once it has opened it. */
async function holder(path: string): Promise<ChildProcess> {
  const child = spawn('/bin/sh', ['-c', 'exec 3< "$0" && echo open && exec sleep 600', path], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`the holder of ${path} exited (${code})`)));
  });
  return child;
}

/** Reads the whole file from an open descriptor, from its start. */
function readAll(fd: number): Buffer {
  const chunks: Buffer[] = [];
  for (let pos = 0; ; ) {
    const b = Buffer.alloc(200_000);
    const n = fs.readSync(fd, b, 0, b.length, pos);
    if (n === 0) return Buffer.concat(chunks);
    chunks.push(b.subarray(0, n));
    pos += n;
  }
}

describe('a file open on one mount of a shared PostgreSQL volume survives its unlink on another', () => {
  const url = server.createDatabase();
  const children: ChildProcess[] = [];
  // Unmounted before the directory is removed, also after a failure.
  const dir = tempDir('pogfs-open-unlinked-', () => {
    for (const c of children) c.kill('SIGKILL');
    unmountAnyway(mb);
    unmountAnyway(ma);
  });
  const volume = join(dir, 'vol');
  const remote = join(dir, 'remote');
  const cacheB = join(dir, 'cache-b');
  const ma = join(dir, 'ma');
  const mb = join(dir, 'mb');
  for (const d of [ma, mb]) fs.mkdirSync(d);

  it('mounts A and B', () => {
    pogfsOk(['init', volume, '--meta', url, '--remote', `local:${remote}`]);
    pogfsOk(['mount', volume, ma]);
    pogfsOk(['mount', url, mb, '--cache-dir', cacheB]);
    assert.ok(isMounted(ma) && isMounted(mb));
  });

  it('A holds a file of several blocks open, B unlinks it: A reads it whole; its rows stay until A closes it', async () => {
    const data = randomBytes(6 * 128 * 1024 + 777);
    fs.writeFileSync(join(mb, 'held.bin'), data);
    const fd = fs.openSync(join(ma, 'held.bin'), 'r');
    let open = true;
    try {
      const ino = fs.fstatSync(fd).ino;
      fs.rmSync(join(mb, 'held.bin'));
      assert.ok(!fs.readdirSync(mb).includes('held.bin'));
      const rows = await inodeRowCounts(url, ino);
      assert.deepEqual(rows, { inode: 1, blocks: 7, opens: 1 }, 'kept for A');
      assert.equal((await queryPostgres(url, `SELECT nlink::int AS n FROM inodes WHERE ino = ${ino}`))[0].n, 0, 'without a name');
      await sleep(500); // B's last handle and any late free have long been through
      assert.deepEqual(await inodeRowCounts(url, ino), rows);
      assert.deepEqual(readAll(fd), data, 'A reads it whole after the unlink');
      assert.equal(fs.fstatSync(fd).size, data.length);
      fs.closeSync(fd);
      open = false;
      await untilGone(url, ino, 5000);
    } finally {
      if (open) fs.closeSync(fd);
    }
    // The names still work both ways.
    fs.writeFileSync(join(ma, 'after.txt'), 'after\n');
    assert.equal(fs.readFileSync(join(mb, 'after.txt'), 'utf8'), 'after\n');
  });

  it('a file open on both mounts and unlinked on B is freed at the last close of the two', async () => {
    const data = randomBytes(3 * 128 * 1024);
    fs.writeFileSync(join(ma, 'both.bin'), data);
    const fa = fs.openSync(join(ma, 'both.bin'), 'r');
    const fb = fs.openSync(join(mb, 'both.bin'), 'r');
    const ino = fs.fstatSync(fa).ino;
    try {
      fs.rmSync(join(mb, 'both.bin'));
      fs.closeSync(fb);
      await sleep(500);
      assert.equal((await inodeRowCounts(url, ino)).inode, 1, 'A still holds it');
      assert.deepEqual(readAll(fa), data);
    } finally {
      fs.closeSync(fa);
    }
    await untilGone(url, ino, 5000);
  });

  it('kill -9 of A while it holds such a file: once its session expired, the next mount frees the inode (B live all along)', async () => {
    const data = randomBytes(4 * 128 * 1024 + 10);
    fs.writeFileSync(join(ma, 'orphan.bin'), data);
    const ino = fs.statSync(join(ma, 'orphan.bin')).ino;
    const child = await holder(join(ma, 'orphan.bin'));
    children.push(child);
    fs.rmSync(join(mb, 'orphan.bin'));
    assert.deepEqual(await inodeRowCounts(url, ino), { inode: 1, blocks: 5, opens: 1 });
    const daemonA = liveDaemon(volume);
    assert.ok(daemonA, "A's daemon is running");
    process.kill(daemonA.pid, 'SIGKILL');
    child.kill('SIGKILL');
    unmountAnyway(ma);
    await sleep(EXPIRY_S * 1000 + 1000);
    assert.equal((await inodeRowCounts(url, ino)).inode, 1, 'nothing frees it before a mount looks');
    assert.ok(isMounted(mb), 'B serves on');
    pogfsOk(['mount', volume, ma]);
    await untilGone(url, ino, 5000);
    assert.match(fs.readFileSync(join(volume, 'pogfs.log'), 'utf8'), /freed 1 inodes left unlinked by an earlier crash/);
    fs.writeFileSync(join(ma, 'alive.txt'), 'again\n');
    assert.equal(fs.readFileSync(join(mb, 'alive.txt'), 'utf8'), 'again\n');
  });

  it('unmounts both', () => {
    pogfsOk(['umount', mb]);
    pogfsOk(['umount', ma]);
    assert.ok(!isMounted(ma) && !isMounted(mb));
  });
});
