import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { tempDir } from './support/tmp';

const MiB = 1024 * 1024;
const B = 128 * 1024;

interface Stats {
  storedBytes: number;
  uniqueBytes: number;
  blockReferences: number;
}

const stats = (volume: string) => JSON.parse(pogfsOk(['stats', volume, '--json'])) as Stats;
const sha = (path: string) => sh(`sha256sum '${path}'`).split(' ')[0];

/** Seconds a shell command takes (run by the shell, so the mount is never touched from this thread). */
function timed(command: string): number {
  const out = sh(`s=$(date +%s%N); ${command}; e=$(date +%s%N); echo $((e - s))`);
  return Number(out.trim().split('\n').pop()) / 1e9;
}

/**
 * For every probe offset, what SEEK_DATA and SEEK_HOLE return (or the errno name), as
 * a Python one-liner sees it: the layout is written (and closed, so the kernel has
 * written back its pages) before the file is opened again to seek.
 */
function seekMap(path: string, layout: string, probes: number[]): string {
  const program = `
import os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
${layout}
os.close(fd)
fd = os.open(path, os.O_RDONLY)
out = []
for off in [${probes.join(',')}]:
    for whence in (os.SEEK_DATA, os.SEEK_HOLE):
        try:
            out.append(str(os.lseek(fd, off, whence)))
        except OSError as e:
            out.append(os.strerror(e.errno))
print(' '.join(out))
`;
  return execFileSync('python3', ['-c', program, path], { encoding: 'utf8' }).trim();
}

describe('dedup-native operations through a real mount', () => {
  const m = mountFresh();

  it('cp copies a 256 MiB file by reference: under 1% new stored bytes, identical, then independent; fsck clean, gc removes nothing live', (t) => {
    const size = 256 * MiB;
    const writeSeconds = timed(`head -c ${size} /dev/urandom > '${m.p('original')}'`);
    const original = sha(m.p('original'));
    const before = stats(m.volume);
    const cpSeconds = timed(`cp '${m.p('original')}' '${m.p('copy')}'`);
    const after = stats(m.volume);
    t.diagnostic(`write ${writeSeconds.toFixed(2)} s, cp ${cpSeconds.toFixed(3)} s; stored bytes +${after.storedBytes - before.storedBytes}`);
    assert.ok(after.storedBytes - before.storedBytes < size / 100, `cp added ${after.storedBytes - before.storedBytes} stored bytes`);
    assert.equal(after.blockReferences - before.blockReferences, size / B, 'one more reference per block');
    assert.ok(cpSeconds < writeSeconds / 4, `cp took ${cpSeconds} s, writing ${writeSeconds} s`);
    assert.equal(sha(m.p('copy')), original);

    // Each side changes alone.
    sh(`printf COPY | dd of='${m.p('copy')}' bs=1 seek=${10 * B + 5} conv=notrunc status=none`);
    assert.equal(sha(m.p('original')), original);
    const changedCopy = sha(m.p('copy'));
    assert.notEqual(changedCopy, original);
    sh(`printf ORIG | dd of='${m.p('original')}' bs=1 seek=${20 * B + 5} conv=notrunc status=none`);
    assert.equal(sha(m.p('copy')), changedCopy);
    const changedOriginal = sha(m.p('original'));
    assert.equal(sh(`dd if='${m.p('copy')}' bs=1 skip=${10 * B + 5} count=4 status=none`), 'COPY');
    assert.notEqual(sh(`dd if='${m.p('original')}' bs=1 skip=${10 * B + 5} count=4 status=none`), 'COPY');

    // gc on the mounted volume removes nothing either file uses; fsck finds nothing.
    const gc = JSON.parse(pogfsOk(['gc', m.volume, '--json'])) as { removedBlocks: number };
    assert.equal(gc.removedBlocks, 0);
    m.umount();
    const fsck = pogfs(['fsck', m.volume, '--json']);
    assert.equal(fsck.status, 0, fsck.stdout);
    assert.deepEqual((JSON.parse(fsck.stdout) as { findings: unknown[] }).findings, []);
    m.mount();
    assert.equal(sha(m.p('copy')), changedCopy);
    assert.equal(sha(m.p('original')), changedOriginal);
    sh(`rm '${m.p('copy')}' '${m.p('original')}'`);
  });

  it('SEEK_DATA and SEEK_HOLE answer what tmpfs answers for the same sparse layout', () => {
    const dir = tempDir('pogfs-tmpfs-', () => void spawnSync('umount', [join(dir, 'tmpfs')]));
    const tmpfs = join(dir, 'tmpfs');
    mkdirSync(tmpfs);
    sh(`mount -t tmpfs -o size=64m pogfs-seek-test '${tmpfs}'`);
    // Data in blocks 0, 4 and 5, a punched hole in the middle of 8..11, a hole at the end.
    const layout = `
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
os.pwrite(fd, os.urandom(${B}), 0)
os.pwrite(fd, os.urandom(${2 * B}), ${4 * B})
os.pwrite(fd, os.urandom(${4 * B}), ${8 * B})
if libc.fallocate(fd, 3, ${9 * B}, ${2 * B}) != 0:
    raise OSError(ctypes.get_errno(), 'fallocate PUNCH_HOLE|KEEP_SIZE')
os.ftruncate(fd, ${16 * B})`;
    const probes: number[] = [];
    for (let off = 0; off <= 17 * B; off += B / 2) probes.push(off, off + 4095);
    const expected = seekMap(join(tmpfs, 'sparse'), layout, probes);
    assert.equal(seekMap(m.p('sparse'), layout, probes), expected);
    assert.match(expected, /No such device or address/);
    sh(`umount '${tmpfs}'`);
  });

  it('fallocate(1): preallocation as a hole, punch and zero range; collapse and insert range are not supported', () => {
    const f = m.p('falloc');
    sh(`head -c ${8 * B} /dev/urandom > '${f}' && cp '${f}' '${m.volume}.expected'`);
    sh(`fallocate -l ${16 * B} '${f}'`);
    assert.equal(sh(`stat -c %s '${f}'`).trim(), String(16 * B));
    sh(`fallocate -p -o ${B + 100} -l ${3 * B} '${f}'`);
    sh(`fallocate -z -o ${6 * B} -l ${B} '${f}'`);
    const expected = `${m.volume}.expected`;
    sh(`truncate -s ${16 * B} '${expected}'`);
    sh(`dd if=/dev/zero of='${expected}' bs=1 seek=${B + 100} count=${3 * B} conv=notrunc status=none`);
    sh(`dd if=/dev/zero of='${expected}' bs=${B} seek=6 count=1 conv=notrunc status=none`);
    assert.equal(sha(f), sha(expected));
    // Blocks 2 and 3 (whole in the punched range), 6 (zeroed) and 8..15 (preallocated) hold nothing.
    // Stored: blocks 0, 5 and 7, and 1 and 4 (partly zeroed, rewritten whole).
    assert.equal(Number(sh(`stat -c %b '${f}'`)) * 512, 5 * B);
    for (const mode of ['--collapse-range', '--insert-range']) {
      const r = spawnSync('fallocate', [mode, '-o', String(B), '-l', String(B), f], { encoding: 'utf8' });
      assert.notEqual(r.status, 0);
      assert.match(r.stderr, /Operation not supported/);
    }
    sh(`rm '${f}' '${expected}'`);
  });
});
