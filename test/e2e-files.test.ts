import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { describe, it } from 'node:test';
import { mountFresh, sh } from './support/mount';

function sha256File(path: string): string {
  return sh(`sha256sum '${path}'`).split(' ')[0];
}

function errorCode(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
}

describe('files through the kernel mount', () => {
  const m = mountFresh();

  it('a 300 MiB file reads back with the same sha256, also after remount', () => {
    const path = m.p('big.bin');
    sh(`head -c $((300 * 1024 * 1024)) /dev/urandom | tee '${path}' | sha256sum > '${m.volume}.sum'`);
    const expected = fs.readFileSync(`${m.volume}.sum`, 'utf8').split(' ')[0];
    assert.equal(sha256File(path), expected);
    assert.equal(fs.statSync(path).size, 300 * 1024 * 1024);
    m.umount();
    m.mount();
    assert.equal(sha256File(path), expected);
    fs.unlinkSync(path);
  });

  it('files of 128 KiB and one byte either side round-trip', () => {
    for (const size of [0, 1, 131071, 131072, 131073, 262143, 262144, 262145]) {
      const data = randomBytes(size);
      fs.writeFileSync(m.p(`s${size}`), data);
      const back = fs.readFileSync(m.p(`s${size}`));
      assert.equal(back.length, size);
      assert.ok(back.equals(data), `content of the ${size}-byte file differs`);
    }
  });

  it('sparse files: 1 TiB costs nothing and reads zeros', () => {
    const path = m.p('sparse');
    sh(`truncate -s 1T '${path}' && printf 'tail' | dd of='${path}' bs=1 seek=$((1024*1024*1024*1024 - 4)) conv=notrunc status=none`);
    const st = fs.statSync(path);
    assert.equal(st.size, 1024 ** 4);
    assert.ok(st.blocks * 512 < 1024 * 1024, `du says ${st.blocks * 512} bytes`);
    const fd = fs.openSync(path, 'r');
    const buf = Buffer.alloc(8192, 1);
    fs.readSync(fd, buf, 0, 8192, 512 * 1024 ** 3);
    assert.ok(buf.equals(Buffer.alloc(8192)));
    const tail = Buffer.alloc(4);
    fs.readSync(fd, tail, 0, 4, 1024 ** 4 - 4);
    assert.equal(tail.toString(), 'tail');
    fs.closeSync(fd);
  });

  it('mmap: shared-mapping writes reach the file and other readers', () => {
    const path = m.p('mapped');
    fs.writeFileSync(path, Buffer.alloc(3 * 131072, 0x2e));
    sh(`python3 - '${path}' <<'PY'
import mmap, sys
with open(sys.argv[1], 'r+b') as f:
    mm = mmap.mmap(f.fileno(), 0)
    assert mm[0:1] == b'.'
    mm[131070:131076] = b'MAPPED'
    mm[-4:] = b'TAIL'
    mm.flush()
    mm.close()
PY`);
    const back = fs.readFileSync(path);
    assert.equal(back.subarray(131070, 131076).toString(), 'MAPPED');
    assert.equal(back.subarray(-4).toString(), 'TAIL');
    assert.equal(back.length, 3 * 131072);
  });

  it('hard links, symlinks and renames', () => {
    fs.mkdirSync(m.p('links'));
    fs.writeFileSync(m.p('links', 'a'), 'A');
    fs.linkSync(m.p('links', 'a'), m.p('links', 'b'));
    assert.equal(fs.statSync(m.p('links', 'a')).nlink, 2);
    fs.appendFileSync(m.p('links', 'b'), 'B');
    assert.equal(fs.readFileSync(m.p('links', 'a'), 'utf8'), 'AB');
    fs.unlinkSync(m.p('links', 'a'));
    assert.equal(fs.statSync(m.p('links', 'b')).nlink, 1);
    assert.equal(errorCode(() => fs.linkSync(m.p('links'), m.p('links2'))), 'EPERM');
    fs.symlinkSync('b', m.p('links', 'sym'));
    assert.equal(fs.readlinkSync(m.p('links', 'sym')), 'b');
    assert.equal(fs.readFileSync(m.p('links', 'sym'), 'utf8'), 'AB');
    fs.renameSync(m.p('links', 'b'), m.p('links', 'c'));
    assert.equal(errorCode(() => fs.readFileSync(m.p('links', 'sym'))), 'ENOENT');
    fs.mkdirSync(m.p('links', 'd1'));
    fs.mkdirSync(m.p('links', 'd2'));
    fs.writeFileSync(m.p('links', 'd2', 'x'), 'x');
    assert.equal(errorCode(() => fs.renameSync(m.p('links', 'd1'), m.p('links', 'd2'))), 'ENOTEMPTY');
    assert.equal(errorCode(() => fs.renameSync(m.p('links', 'd1'), m.p('links', 'd1', 'in'))), 'EINVAL');
    assert.equal(errorCode(() => fs.renameSync(m.p('links', 'c'), m.p('links', 'd1'))), 'EISDIR');
    assert.equal(errorCode(() => fs.renameSync(m.p('links', 'd1'), m.p('links', 'c'))), 'ENOTDIR');
    fs.renameSync(m.p('links', 'd2', 'x'), m.p('links', 'c')); // replace a file
    assert.equal(fs.readFileSync(m.p('links', 'c'), 'utf8'), 'x');
    fs.renameSync(m.p('links', 'd2'), m.p('links', 'd1')); // replace an empty directory
    assert.deepEqual(fs.readdirSync(m.p('links')).sort(), ['c', 'd1', 'sym']);
  });

  it('a 5,000-entry directory lists completely and deletes', () => {
    const dir = m.p('many');
    fs.mkdirSync(dir);
    for (let i = 0; i < 5000; i++) fs.writeFileSync(`${dir}/entry-${i}`, String(i));
    const names = fs.readdirSync(dir);
    assert.equal(names.length, 5000);
    assert.equal(new Set(names).size, 5000);
    assert.equal(fs.readFileSync(`${dir}/entry-4321`, 'utf8'), '4321');
    sh(`rm -r '${dir}'`);
    assert.equal(fs.existsSync(dir), false);
  });

  it('names are bytes up to 255; longer is ENAMETOOLONG', () => {
    const odd = Buffer.concat([Buffer.from(m.p('') + '/'), Buffer.from([0x80, 0xff, 0x20, 0x0a, 0x41])]);
    fs.writeFileSync(odd, 'odd');
    const listed = fs.readdirSync(m.mnt, { encoding: 'buffer' });
    assert.ok(listed.some((n) => n.equals(Buffer.from([0x80, 0xff, 0x20, 0x0a, 0x41]))));
    fs.writeFileSync(m.p('n'.repeat(255)), 'ok');
    assert.equal(errorCode(() => fs.writeFileSync(m.p('n'.repeat(256)), 'no')), 'ENAMETOOLONG');
  });

  it('nanosecond times survive touch, including mtime alone', () => {
    const path = m.p('times');
    fs.writeFileSync(path, '');
    sh(`touch -m -d '2001-02-03 04:05:06.123456789' '${path}'`);
    sh(`touch -a -d '1999-12-31 23:59:59.987654321' '${path}'`);
    assert.equal(sh(`stat -c '%y|%x' '${path}'`).trim().replace(/ \+0000/g, ''), '2001-02-03 04:05:06.123456789|1999-12-31 23:59:59.987654321');
  });

  it('extended attributes: set, get, list, remove', () => {
    const path = m.p('xattr');
    fs.writeFileSync(path, 'x');
    const out = sh(`python3 - '${path}' <<'PY'
import os, sys, errno
p = sys.argv[1]
os.setxattr(p, 'user.color', b'blue')
os.setxattr(p, 'user.bin', bytes(range(256)))
assert os.getxattr(p, 'user.color') == b'blue'
assert os.getxattr(p, 'user.bin') == bytes(range(256))
print(sorted(os.listxattr(p)))
try:
    os.setxattr(p, 'user.color', b'red', os.XATTR_CREATE)
except OSError as e:
    print('create-existing', errno.errorcode[e.errno])
os.removexattr(p, 'user.color')
try:
    os.getxattr(p, 'user.color')
except OSError as e:
    print('removed', errno.errorcode[e.errno])
PY`);
    assert.equal(out.trim(), "['user.bin', 'user.color']\ncreate-existing EEXIST\nremoved ENODATA");
  });

  it('an unlinked open file stays readable and its directory can be removed', () => {
    fs.mkdirSync(m.p('gone'));
    const path = m.p('gone', 'f');
    const data = randomBytes(500000);
    fs.writeFileSync(path, data);
    const fd = fs.openSync(path, 'r');
    fs.unlinkSync(path);
    assert.deepEqual(fs.readdirSync(m.p('gone')), []);
    fs.rmdirSync(m.p('gone'));
    const back = Buffer.alloc(data.length);
    assert.equal(fs.readSync(fd, back, 0, back.length, 0), data.length);
    assert.ok(back.equals(data));
    fs.closeSync(fd);
  });

  it('two handles see each other at once; another process sees closed writes', () => {
    const path = m.p('two');
    const a = fs.openSync(path, 'w+');
    const b = fs.openSync(path, 'r+');
    fs.writeSync(a, 'hello', 0);
    const buf = Buffer.alloc(5);
    fs.readSync(b, buf, 0, 5, 0);
    assert.equal(buf.toString(), 'hello');
    fs.writeSync(b, 'HE', 0);
    fs.closeSync(b);
    fs.closeSync(a);
    assert.equal(sh(`cat '${path}'`), 'HEllo');
  });

  it('concurrent writers and readers in separate processes', async () => {
    const writers = 4;
    const perWriter = 8 * 1024 * 1024;
    const jobs = [];
    for (let w = 0; w < writers; w++) {
      jobs.push(
        new Promise<void>((resolve, reject) => {
          const child = spawn('/bin/sh', ['-c', `head -c ${perWriter} /dev/urandom > '${m.p(`c${w}.src`)}.tmp' && cp '${m.p(`c${w}.src`)}.tmp' '${m.p(`c${w}`)}' && cat '${m.p(`c${w}`)}' '${m.p(`c${w}`)}' > /dev/null`]);
          child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`writer ${w} exited ${code}`))));
        }),
      );
    }
    await Promise.all(jobs);
    for (let w = 0; w < writers; w++) {
      const a = createHash('sha256').update(fs.readFileSync(m.p(`c${w}.src.tmp`))).digest('hex');
      assert.equal(sha256File(m.p(`c${w}`)), a);
    }
  });

  it('FIFOs and errno of everyday mistakes', () => {
    sh(`mkfifo '${m.p('fifo')}'`);
    assert.ok(fs.lstatSync(m.p('fifo')).isFIFO());
    assert.equal(errorCode(() => fs.mkdirSync(m.p('fifo'))), 'EEXIST');
    assert.equal(errorCode(() => fs.readFileSync(m.p('nope'))), 'ENOENT');
    assert.equal(errorCode(() => fs.rmdirSync(m.p('two'))), 'ENOTDIR');
    fs.mkdirSync(m.p('full'));
    fs.writeFileSync(m.p('full', 'x'), '');
    assert.equal(errorCode(() => fs.rmdirSync(m.p('full'))), 'ENOTEMPTY');
    assert.equal(errorCode(() => fs.unlinkSync(m.p('full'))), 'EISDIR');
    assert.equal(errorCode(() => fs.readdirSync(m.p('two'))), 'ENOTDIR');
  });

  it('statfs has real numbers', () => {
    const s = fs.statfsSync(m.mnt);
    assert.ok(s.blocks > 0 && s.bavail > 0 && s.files > 0);
    assert.equal(sh(`stat -f -c '%l' '${m.mnt}'`).trim(), '255');
    const df = sh(`df -P -B1 '${m.mnt}' | tail -1`).split(/\s+/);
    assert.ok(Number(df[1]) > 0 && Number(df[3]) > 0, `df says ${df.join(' ')}`);
  });
});
