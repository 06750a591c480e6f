import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { open } from 'lmdb';
import type { FsckReport } from '../fsck/report';
import { mountFresh, pogfs } from './support/mount';

const BLOCK = 128 * 1024;

/** Reads `length` bytes at `offset` of a file through the kernel; returns the bytes or the error code. */
function pread(path: string, offset: number, length: number): Buffer | string {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    let got = 0;
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'unknown';
  } finally {
    closeSync(fd);
  }
}

function readCode(path: string): string | undefined {
  try {
    readFileSync(path);
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

/** Damages one stored block of the volume: the value keeps its header but loses its tail. */
async function damageBlock(volume: string, hash: Buffer): Promise<void> {
  const env = open<Buffer, Buffer>({ path: join(volume, 'blocks'), maxDbs: 8, encoding: 'binary', keyEncoding: 'binary', compression: false, cache: false });
  const blocks = env.openDB<Buffer, Buffer>({ name: 'blocks', encoding: 'binary', keyEncoding: 'binary', compression: false, cache: false });
  const value = Buffer.from(blocks.getBinary(hash)!);
  assert.equal(value.length, BLOCK + 8);
  blocks.putSync(hash, value.subarray(0, 5000));
  await env.close();
}

describe('fsck through a real mount', () => {
  it('a damaged block reads as EIO while the rest works; fsck refuses the mount, then names the file, repairs, and is clean', async () => {
    const m = mountFresh();
    const big = randomBytes(BLOCK * 8 + 777);
    const other = randomBytes(BLOCK * 2 + 3);
    mkdirSync(m.p('dir'));
    writeFileSync(m.p('dir', 'big.bin'), big);
    writeFileSync(m.p('other.bin'), other);
    writeFileSync(m.p('small.txt'), 'hello\n');
    m.umount();

    const db = new Database(join(m.volume, 'meta.db'), { readonly: true });
    const ino = (db.prepare("SELECT ino FROM dentries WHERE name = CAST('big.bin' AS BLOB)").get() as { ino: number }).ino;
    const row = db.prepare('SELECT hash FROM blocks WHERE ino = ? AND idx = 3').get(ino) as { hash: Buffer };
    db.close();
    await damageBlock(m.volume, row.hash);

    m.mount();
    const pid = m.daemonPid();
    const bigPath = m.p('dir', 'big.bin');
    assert.equal(readCode(bigPath), 'EIO', 'reading the whole file fails with EIO');
    assert.equal(pread(bigPath, 3 * BLOCK + 100, 1000), 'EIO', 'reading inside the damaged block fails with EIO');
    const head = pread(bigPath, 0, 3 * BLOCK);
    assert.ok(Buffer.isBuffer(head) && head.equals(big.subarray(0, 3 * BLOCK)), 'the blocks before read fine');
    const tail = pread(bigPath, 4 * BLOCK, big.length);
    assert.ok(Buffer.isBuffer(tail) && tail.equals(big.subarray(4 * BLOCK)), 'the blocks after read fine');
    assert.ok(readFileSync(m.p('other.bin')).equals(other), 'other files read fine');
    assert.equal(readFileSync(m.p('small.txt'), 'utf8'), 'hello\n');
    process.kill(pid, 0); // the daemon is still there

    const busy = pogfs(['fsck', m.volume]);
    assert.equal(busy.status, 8, busy.stdout + busy.stderr);
    assert.match(busy.stderr, new RegExp(`mounted at ${m.mnt.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(daemon pid ${pid}\\)`));
    const busyRepair = pogfs(['fsck', m.volume, '--repair', '--force']);
    assert.equal(busyRepair.status, 8);
    const busyGc = pogfs(['gc', m.volume, '--compact']);
    assert.equal(busyGc.status, 2);
    assert.match(busyGc.stderr, /needs the volume unmounted/);
    const liveGc = pogfs(['gc', m.volume]);
    assert.equal(liveGc.status, 0, liveGc.stderr);
    assert.match(liveGc.stdout, /done by its daemon/);
    m.umount();

    const found = pogfs(['fsck', m.volume, '--json']);
    assert.equal(found.status, 4, found.stderr);
    const report = JSON.parse(found.stdout) as FsckReport;
    // The shortened value also makes the recorded stored-bytes total wrong.
    assert.deepEqual(report.findings.map((f) => f.kind), ['corrupt-block', 'bad-totals']);
    assert.match(report.findings[0].examples[0], new RegExp(`^/dir/big\\.bin: bytes ${3 * BLOCK}-${4 * BLOCK - 1} \\(block 3, `));
    assert.ok(report.stats.bytesVerified > big.length + other.length - BLOCK, 'every block was read (one is short now)');

    const repaired = pogfs(['fsck', m.volume, '--repair']);
    assert.equal(repaired.status, 1, repaired.stdout + repaired.stderr);
    const clean = pogfs(['fsck', m.volume]);
    assert.equal(clean.status, 0, clean.stdout + clean.stderr);
    assert.match(clean.stdout, /known-damaged: 1 .*\n\s+\/dir\/big\.bin: bytes 393216-524287/);

    // After the repair the lost range still reads as EIO (never as zeros), the rest as before.
    m.mount();
    assert.equal(pread(bigPath, 3 * BLOCK, 10), 'EIO');
    const again = pread(bigPath, 4 * BLOCK, BLOCK);
    assert.ok(Buffer.isBuffer(again) && again.equals(big.subarray(4 * BLOCK, 5 * BLOCK)));
    assert.ok(readFileSync(m.p('other.bin')).equals(other));
    m.umount();
  });
});
