/**
 * End-to-end test of the libfuse binding (src/fuse/native + session.ts) with MemFs,
 * through the real kernel. Needs /dev/fuse and root (or fusermount3).
 *
 * MemFs is served by this test's own JS thread, so all I/O on the mount goes through
 * fs.promises (libuv threadpool) or child processes: a synchronous fs call from this
 * thread would wait for a reply only this thread can send.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { FuseSession, type FuseLog } from '../src/fuse/session';
import type { Entry } from '../src/fuse/types';
import { MemFs } from '../bench/memfs';

const run = promisify(execFile);
const UTC = { ...process.env, TZ: 'UTC', LC_ALL: 'C' };

/** MemFs with a few names whose handlers misbehave on purpose. */
class TestFs extends MemFs {
  destroyed = false;
  override lookup(parent: number, name: Buffer): Entry {
    const n = name.toString('latin1');
    if (n === 'throw-plain') throw new Error('plain handler failure (expected by the test)');
    if (n === 'throw-errno') throw { errno: 2 };
    if (n === 'throw-string') throw 'a string (expected by the test)';
    return super.lookup(parent, name);
  }
  destroy(): void {
    this.destroyed = true;
  }
}

function mounted(mnt: string): boolean {
  return fs.readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mnt);
}

function forceUnmount(mnt: string): void {
  if (!mounted(mnt)) return;
  try {
    execFileSync('fusermount3', ['-u', '-z', mnt], { stdio: 'ignore' });
  } catch {
    try {
      execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
    } catch {
      /* nothing more to try */
    }
  }
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('pogfs FUSE binding with MemFs', () => {
  const errors: string[] = [];
  const log: FuseLog = { error: (msg) => errors.push(msg) };
  const memfs = new TestFs();
  let base: string;
  let mnt: string;
  let session: FuseSession | undefined;

  before(() => {
    base = fs.mkdtempSync(path.join(os.tmpdir(), 'pogfs-fuse-test-'));
    mnt = path.join(base, 'mnt');
    fs.mkdirSync(mnt);
    session = FuseSession.mount(
      mnt,
      memfs,
      {
        fsname: 'memfs-test',
        subtype: 'memfs',
        allowOther: false,
        defaultPermissions: true,
        writebackCache: true,
        negativeTimeout: 1,
      },
      log,
    );
  });

  after(async () => {
    try {
      if (session) await session.unmount();
    } finally {
      forceUnmount(mnt);
      fs.rmSync(base, { recursive: true, force: true });
    }
  });

  test('mount is listed in /proc/mounts', () => {
    assert.ok(mounted(mnt));
  });

  test('create, write, read back; 5 MiB file by sha256', async () => {
    const small = path.join(mnt, 'hello.txt');
    await fsp.writeFile(small, 'hello, fuse\n');
    assert.equal(await fsp.readFile(small, 'utf8'), 'hello, fuse\n');

    const big = randomBytes(5 * 1024 * 1024 + 123);
    const file = path.join(mnt, 'big.bin');
    await fsp.writeFile(file, big);
    const st = await fsp.stat(file);
    assert.equal(st.size, big.length);
    assert.equal(sha256(await fsp.readFile(file)), sha256(big));
    // What MemFs actually holds (not the kernel's page cache).
    assert.equal(sha256(memfs.contentOf(st.ino)), sha256(big));
    // And through another process.
    const { stdout } = await run('sha256sum', [file]);
    assert.equal(stdout.split(' ')[0], sha256(big));
  });

  test('partial overwrite and truncate', async () => {
    const file = path.join(mnt, 'patch.bin');
    await fsp.writeFile(file, Buffer.alloc(10000, 0x61));
    const fh = await fsp.open(file, 'r+');
    await fh.write(Buffer.from('XYZ'), 0, 3, 4097);
    await fh.truncate(5000);
    await fh.close();
    const got = await fsp.readFile(file);
    assert.equal(got.length, 5000);
    assert.equal(got.subarray(4097, 4100).toString(), 'XYZ');
    assert.equal(got[4096], 0x61);
    await fsp.truncate(file, 8000);
    const grown = await fsp.readFile(file);
    assert.equal(grown.length, 8000);
    assert.ok(grown.subarray(5000).every((b) => b === 0), 'extended region reads as zeros');
  });

  test('mkdir and readdir of 2,000 entries', async () => {
    const dir = path.join(mnt, 'many');
    await fsp.mkdir(dir);
    const names = Array.from({ length: 2000 }, (_, i) => `entry-${i.toString().padStart(4, '0')}-${'x'.repeat(i % 40)}`);
    for (let i = 0; i < names.length; i += 100) {
      await Promise.all(names.slice(i, i + 100).map((n) => fsp.writeFile(path.join(dir, n), n)));
    }
    const listed = await fsp.readdir(dir);
    assert.equal(listed.length, names.length);
    assert.deepEqual([...listed].sort(), [...names].sort());
    // ls through the kernel too (getdents in a child process, includes . and ..)
    const { stdout } = await run('ls', ['-1a', dir], { maxBuffer: 1 << 22 });
    const lsNames = stdout.split('\n').filter(Boolean);
    assert.equal(lsNames.length, names.length + 2);
  });

  test('rename: plain, replacing a target, moving a directory', async () => {
    const a = path.join(mnt, 'ren-a');
    const b = path.join(mnt, 'ren-b');
    await fsp.writeFile(a, 'A');
    await fsp.rename(a, b);
    await assert.rejects(fsp.stat(a), { code: 'ENOENT' });
    assert.equal(await fsp.readFile(b, 'utf8'), 'A');
    // Replace an existing target.
    await fsp.writeFile(a, 'A2');
    await fsp.rename(a, b);
    assert.equal(await fsp.readFile(b, 'utf8'), 'A2');
    // Directory moves.
    await fsp.mkdir(path.join(mnt, 'd1/sub'), { recursive: true });
    await fsp.writeFile(path.join(mnt, 'd1/sub/f'), 'F');
    await fsp.mkdir(path.join(mnt, 'd2'));
    await fsp.rename(path.join(mnt, 'd1/sub'), path.join(mnt, 'd2/sub'));
    assert.equal(await fsp.readFile(path.join(mnt, 'd2/sub/f'), 'utf8'), 'F');
    assert.deepEqual(await fsp.readdir(path.join(mnt, 'd1')), []);
  });

  test('unlink, rmdir, symlink, hard link', async () => {
    const f = path.join(mnt, 'gone');
    await fsp.writeFile(f, 'x');
    await fsp.unlink(f);
    await assert.rejects(fsp.stat(f), { code: 'ENOENT' });
    await assert.rejects(fsp.unlink(f), { code: 'ENOENT' });
    await fsp.mkdir(path.join(mnt, 'emptydir'));
    await fsp.rmdir(path.join(mnt, 'emptydir'));
    await assert.rejects(fsp.rmdir(path.join(mnt, 'd2')), { code: 'ENOTEMPTY' });

    await fsp.symlink('hello.txt', path.join(mnt, 'sym'));
    assert.equal(await fsp.readlink(path.join(mnt, 'sym')), 'hello.txt');
    assert.equal(await fsp.readFile(path.join(mnt, 'sym'), 'utf8'), 'hello, fuse\n');

    await fsp.link(path.join(mnt, 'hello.txt'), path.join(mnt, 'hard'));
    assert.equal((await fsp.stat(path.join(mnt, 'hello.txt'))).nlink, 2);
    await fsp.unlink(path.join(mnt, 'hard'));
    assert.equal((await fsp.stat(path.join(mnt, 'hello.txt'))).nlink, 1);
  });

  test('names with non-UTF-8 bytes round-trip (sync API in a child process)', async () => {
    const dir = path.join(mnt, 'bytes');
    await fsp.mkdir(dir);
    // Sync fs calls on the mount must not run on this thread (it serves the mount).
    const script = `
      const fs = require('fs');
      const dir = Buffer.from(process.argv[1]);
      const name = Buffer.concat([dir, Buffer.from('/'), Buffer.from([0x66, 0xff, 0xfe])]);
      fs.writeFileSync(name, 'bytes');
      const list = fs.readdirSync(dir, { encoding: 'buffer' });
      process.stdout.write(JSON.stringify({ names: list.map((b) => b.toString('hex')), body: fs.readFileSync(name, 'utf8') }));
    `;
    const { stdout } = await run(process.execPath, ['-e', script, dir]);
    const out = JSON.parse(stdout) as { names: string[]; body: string };
    assert.deepEqual(out.names, ['66fffe']);
    assert.equal(out.body, 'bytes');
    // And from this process, asynchronously.
    const listed = await fsp.readdir(Buffer.from(dir), { encoding: 'buffer' });
    assert.deepEqual(listed.map((b) => b.toString('hex')), ['66fffe']);
  });

  test('utimes with nanosecond precision', async () => {
    const f = path.join(mnt, 'times');
    await fsp.writeFile(f, 't');
    await run('touch', ['-d', '2001-02-03 04:05:06.123456789', f], { env: UTC });
    const { stdout } = await run('stat', ['-c', '%y|%x', f], { env: UTC });
    assert.equal(stdout.trim(), '2001-02-03 04:05:06.123456789 +0000|2001-02-03 04:05:06.123456789 +0000');
    const st = await fsp.stat(f, { bigint: true });
    assert.equal(st.mtimeNs % 1_000_000_000n, 123456789n);
  });

  test('xattrs, and the security.* fast path', async () => {
    const f = path.join(mnt, 'hello.txt');
    // Node has no xattr API; python3's os module does (the system one starts fastest).
    const python = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
    const py = (code: string): Promise<string> =>
      run(python, ['-c', `import os, sys\nf = sys.argv[1]\n${code}`, f]).then((r) => r.stdout.trim());
    // No security.* attribute stored: answered ENODATA in C.
    assert.equal(await py(`
try:
    os.getxattr(f, 'security.capability'); print('found')
except OSError as e:
    print(e.errno)`), String(os.constants.errno.ENODATA));
    await py(`os.setxattr(f, 'user.color', b'blue')`);
    assert.equal(await py(`print(os.getxattr(f, 'user.color').decode())`), 'blue');
    assert.equal(await py(`print(sorted(os.listxattr(f)))`), "['user.color']");
    // Storing a security.* attribute switches the fast path off by itself.
    await py(`os.setxattr(f, 'security.pogfs', b'x')`);
    assert.equal(await py(`print(os.getxattr(f, 'security.pogfs').decode())`), 'x');
    await py(`os.removexattr(f, 'security.pogfs')`);
    await py(`os.removexattr(f, 'user.color')`);
    assert.equal(await py(`print(len(os.listxattr(f)))`), '0');
    session!.setSecurityXattrsPresent(false);
  });

  test('a handler throwing a plain Error gives EIO, is logged, and the mount stays usable', async () => {
    const before = errors.length;
    await assert.rejects(fsp.stat(path.join(mnt, 'throw-plain')), { code: 'EIO' });
    assert.equal(errors.length, before + 1);
    assert.match(errors[before], /lookup/);
    assert.match(errors[before], /plain handler failure/);
    assert.match(errors[before], /at TestFs\.lookup/, 'the stack is logged');
    await assert.rejects(fsp.stat(path.join(mnt, 'throw-string')), { code: 'EIO' });
    assert.equal(errors.length, before + 2);
    // Still serving.
    await fsp.writeFile(path.join(mnt, 'after-eio'), 'ok');
    assert.equal(await fsp.readFile(path.join(mnt, 'after-eio'), 'utf8'), 'ok');
  });

  test('a handler throwing {errno: 2} gives ENOENT without logging', async () => {
    const before = errors.length;
    await assert.rejects(fsp.stat(path.join(mnt, 'throw-errno')), { code: 'ENOENT' });
    assert.equal(errors.length, before);
  });

  test('writes arrive in large requests with the writeback cache', async (t) => {
    const st = memfs.stats;
    st.writes = 0;
    st.writeBytes = 0;
    st.maxWrite = 0;
    st.writeSizes.clear();
    await run('dd', ['if=/dev/zero', `of=${path.join(mnt, 'dd.bin')}`, 'bs=1M', 'count=64', 'conv=fsync']);
    const sizes = [...st.writeSizes.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5);
    t.diagnostic(`dd bs=1M count=64: ${st.writes} write requests, max ${st.maxWrite} bytes; [size, count] ${JSON.stringify(sizes)}`);
    assert.equal(st.writeBytes, 64 * 1024 * 1024);
    assert.ok(st.maxWrite >= 512 * 1024, `largest write request was only ${st.maxWrite} bytes`);
    assert.ok(st.writes <= 128, `${st.writes} write requests for 64 MiB`);
  });

  test('mounting fails cleanly with errno codes', () => {
    const noop = new MemFs();
    const opts = { fsname: 'x', subtype: 'x', allowOther: false, defaultPermissions: true, writebackCache: false };
    assert.throws(() => FuseSession.mount(path.join(base, 'missing'), noop, opts, log), { code: 'ENOENT' });
    const file = path.join(base, 'a-file');
    fs.writeFileSync(file, '');
    assert.throws(() => FuseSession.mount(file, noop, opts, log), { code: 'ENOTDIR' });
    assert.throws(() => FuseSession.mount(mnt, noop, opts, log), { code: 'EBUSY' });
  });

  test('ended resolves when unmounted from outside', async () => {
    const mnt2 = path.join(base, 'mnt2');
    fs.mkdirSync(mnt2);
    const fs2 = new TestFs();
    const s2 = FuseSession.mount(mnt2, fs2, { fsname: 'memfs-test2', subtype: 'memfs', allowOther: false, defaultPermissions: true, writebackCache: true }, log);
    try {
      await fsp.writeFile(path.join(mnt2, 'f'), 'data');
      await run('fusermount3', ['-u', mnt2]);
      await s2.ended;
      assert.ok(fs2.destroyed, 'destroy() was called');
      assert.ok(!mounted(mnt2));
      await s2.unmount(); // no-op once ended
    } finally {
      forceUnmount(mnt2);
    }
  });

  test('unmount resolves and the mount is gone', async () => {
    const s = session!;
    // Dirty data in the page cache must reach the FS during unmount.
    await fsp.writeFile(path.join(mnt, 'last-words'), 'flushed on unmount');
    const ino = (await fsp.stat(path.join(mnt, 'last-words'))).ino;
    await s.unmount();
    session = undefined;
    assert.ok(!mounted(mnt));
    assert.ok(memfs.destroyed);
    assert.equal(memfs.contentOf(ino).toString(), 'flushed on unmount');
    await s.ended;
    assert.deepEqual(errors.filter((e) => !/expected by the test/.test(e)), []);
  });
});
