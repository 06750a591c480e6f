import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:os';
import { describe, it } from 'node:test';
import { runFsck } from '../src/cli/fsck-command';
import { Falloc, Whence, type CopyRange } from '../src/fuse/types';
import { hashBlock } from '../src/store/hash';
import { ROOT_INO, type PogFs } from '../src/vfs/filesystem';
import { b, newFs, root, type TestFs } from './support/fs';
import { errno } from './support/errno';

const E = constants.errno;
const O_RDWR = 2;
const B = 128 * 1024;

interface OpenFile {
  ino: number;
  fh: number;
}

async function create(fs: PogFs, name: string): Promise<OpenFile> {
  const f = await fs.create(ROOT_INO, b(name), 0o644, O_RDWR, root);
  return { ino: f.attr.ino, fh: f.fh };
}

async function write(fs: PogFs, f: OpenFile, data: Buffer, offset = 0): Promise<void> {
  await fs.write(f.ino, f.fh, data, offset, root);
}

async function readAll(fs: PogFs, f: OpenFile): Promise<Buffer> {
  return fs.read(f.ino, f.fh, (await fs.getattr(f.ino)).size + 1, 0);
}

function copy(fs: PogFs, src: OpenFile, offIn: number, dst: OpenFile, offOut: number, length: number): Promise<number> {
  const range: CopyRange = { inoIn: src.ino, fhIn: src.fh, offIn, inoOut: dst.ino, fhOut: dst.fh, offOut, length, flags: 0 };
  return fs.copyFileRange(range);
}


/** Commits everything and drops released references, as an unmount would. */
async function settle(t: TestFs): Promise<void> {
  await t.fs.commitAll();
  await t.fs.durability.move();
  await t.fs.reclaimer.run();
}

async function fsckFindings(t: TestFs): Promise<string[]> {
  const path = t.path;
  await t.close();
  const report = await runFsck(path, {});
  return report.findings.filter((f) => f.count > 0).map((f) => f.kind);
}

describe('copy_file_range', () => {
  it('copies whole blocks by reference and the edges as bytes; the two files then change independently', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const data = randomBytes(6 * B + 5000);
    const src = await create(fs, 'src');
    await write(fs, src, data);
    await settle(t);
    const before = volume.store.stats();

    // From 100 bytes before block 1 to 100 bytes into block 5, at the same offset in dst:
    // blocks 1..4 whole, the two edges as bytes.
    const dst = await create(fs, 'dst');
    const from = B - 100;
    const length = 4 * B + 200;
    assert.equal(await copy(fs, src, from, dst, from, length), length);
    const expected = Buffer.alloc(from + length);
    data.copy(expected, from, from, from + length);
    assert.deepEqual(await readAll(fs, dst), expected);
    await settle(t);
    const after = volume.store.stats();
    // Blocks 1 to 4 (whole in the range) gained a reference and no bytes; the edges are
    // new blocks of their own (mostly zeros).
    assert.equal(after.references - before.references, 4 + 2);
    for (const idx of [1, 2, 3, 4]) assert.equal(volume.store.refCount(hashBlock(data.subarray(idx * B, idx * B + B))), 2);
    assert.ok(after.uniqueBytes - before.uniqueBytes <= 2 * B, `${after.uniqueBytes - before.uniqueBytes} new bytes`);

    // A change on either side stays on that side.
    await write(fs, dst, b('DST'), 3 * B + 7);
    await write(fs, src, b('SRC'), 2 * B + 9);
    const d = await readAll(fs, dst);
    const s = await readAll(fs, src);
    assert.equal(d.subarray(3 * B + 7, 3 * B + 10).toString(), 'DST');
    assert.deepEqual(d.subarray(2 * B + 9, 2 * B + 12), data.subarray(2 * B + 9, 2 * B + 12));
    assert.equal(s.subarray(2 * B + 9, 2 * B + 12).toString(), 'SRC');
    assert.deepEqual(s.subarray(3 * B + 7, 3 * B + 10), data.subarray(3 * B + 7, 3 * B + 10));
    fs.release(src.ino, src.fh, 0);
    fs.release(dst.ino, dst.fh, 0);
    await settle(t);
    assert.deepEqual(await fsckFindings(t), []);
  });

  it('shares a short last block when the copy ends the file, and copies uncommitted source bytes as they are', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const data = randomBytes(3 * B + 777);
    const src = await create(fs, 'src');
    await write(fs, src, data);
    await settle(t);
    // Uncommitted: a partial write into block 1 (pending) and a whole new block 2 (sealed).
    await write(fs, src, b('pending'), B + 10);
    b('pending').copy(data, B + 10);
    const block2 = randomBytes(B);
    await write(fs, src, block2, 2 * B);
    block2.copy(data, 2 * B);

    const dst = await create(fs, 'dst');
    assert.equal(await copy(fs, src, 0, dst, 0, 10 * B), data.length, 'clipped to the source size');
    assert.deepEqual(await readAll(fs, dst), data);
    await settle(t);
    const last = hashBlock(data.subarray(3 * B));
    assert.equal(volume.store.refCount(last), 2, 'the short last block is shared');
    assert.equal(volume.store.refCount(hashBlock(block2)), 2, 'a sealed, uncommitted block is shared');
    assert.equal(volume.store.refCount(hashBlock(data.subarray(B, 2 * B))), 2, 'the pending block, copied as bytes, dedups');
    assert.deepEqual(await readAll(fs, dst), data);
    fs.release(src.ino, src.fh, 0);
    fs.release(dst.ino, dst.fh, 0);
    await settle(t);
    assert.deepEqual(await fsckFindings(t), []);
  });

  it('a shared reference never reaches the store before the block it shares, still being compressed', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const src = await create(fs, 'src');
    // Compressible, so every block is compressed off the JS thread before it is stored.
    const data = Buffer.alloc(64 * B);
    for (let i = 0; i < data.length; i += 64) data.write(`line ${i} ${Math.random()}\n`, i);
    await write(fs, src, data);
    // The blocks' batch waits for compression; the copy's batch of shared references
    // needs none and would otherwise be stored first.
    await new Promise((r) => setImmediate(r));
    const dst = await create(fs, 'dst');
    assert.equal(await copy(fs, src, 0, dst, 0, data.length), data.length);
    await settle(t);
    assert.equal(volume.store.stats().references, 128);
    assert.deepEqual(await readAll(fs, dst), data);
    fs.release(src.ino, src.fh, 0);
    fs.release(dst.ino, dst.fh, 0);
    await settle(t);
    assert.deepEqual(await fsckFindings(t), []);
  });

  it('copies misaligned ranges as bytes, keeps holes holes, and releases every shared reference when both files go', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const src = await create(fs, 'src');
    const data = Buffer.alloc(5 * B);
    randomBytes(B).copy(data, 0);
    randomBytes(B).copy(data, 3 * B); // blocks 1, 2 and 4 are holes
    await write(fs, src, data.subarray(0, B), 0);
    await write(fs, src, data.subarray(3 * B, 4 * B), 3 * B);
    await fs.fallocate(src.ino, src.fh, 0, 4 * B, B); // size 5 blocks, last one a hole
    await settle(t);

    const odd = await create(fs, 'odd');
    assert.equal(await copy(fs, src, 1000, odd, 3, 4 * B), 4 * B);
    const got = await readAll(fs, odd);
    assert.deepEqual(got.subarray(3), data.subarray(1000, 1000 + 4 * B));

    const same = await create(fs, 'same');
    await write(fs, same, randomBytes(5 * B)); // to be overwritten, holes included
    assert.equal(await copy(fs, src, 0, same, 0, 5 * B), 5 * B);
    assert.deepEqual(await readAll(fs, same), data);
    assert.equal(fs.lseek(same.ino, same.fh, 0, Whence.HOLE), B);
    assert.equal(fs.lseek(same.ino, same.fh, B, Whence.DATA), 3 * B);

    for (const f of [src, odd, same]) fs.release(f.ino, f.fh, 0);
    await settle(t);
    for (const name of ['src', 'odd', 'same']) await fs.unlink(ROOT_INO, b(name), root);
    for (const f of [src, odd, same]) fs.forget(f.ino, 1);
    await new Promise((r) => setImmediate(r));
    await fs.reclaimer.run();
    assert.equal(volume.store.stats().references, 0);
    assert.equal(volume.store.stats().blocks, 0);
    await t.close();
  });

  it('shares a block a close parked in the metadata before it reaches the store (cp right after writing)', async () => {
    const t = newFs();
    const { fs, volume } = t;
    // Moves held back: the small file's only block stays parked in the metadata.
    fs.durability.stop();
    const data = randomBytes(5000);
    const src = await create(fs, 'src');
    await write(fs, src, data);
    await fs.flush(src.ino, src.fh);
    assert.equal(volume.store.refCount(hashBlock(data)), 0, 'the block is parked, not in the store');
    const dst = await create(fs, 'dst');
    assert.equal(await copy(fs, src, 0, dst, 0, data.length), data.length);
    // A turn of the event loop, as before the kernel's next request: the reference goes to the store.
    await new Promise((resolve) => setImmediate(resolve));
    await fs.flush(dst.ino, dst.fh);
    fs.release(src.ino, src.fh, 0);
    fs.release(dst.ino, dst.fh, 0);
    await fs.durability.move();
    await settle(t);
    assert.equal(volume.store.refCount(hashBlock(data)), 2, 'one block, two references');
    const ino = (await fs.lookup(ROOT_INO, b('dst'), root)).attr.ino;
    const reopened = { ino, fh: (await fs.open(ino, 0)).fh };
    assert.deepEqual(await readAll(fs, reopened), data);
    fs.release(ino, reopened.fh, 0);
    assert.deepEqual(await fsckFindings(t), []);
  });

  it('refuses a destination opened read-only', async () => {
    const t = newFs();
    const { fs } = t;
    const src = await create(fs, 'src');
    await write(fs, src, randomBytes(B));
    const ro = { ino: src.ino, fh: (await fs.open(src.ino, 0, root)).fh };
    assert.equal(await errno(() => copy(fs, src, 0, ro, B, B)), E.EBADF);
    fs.release(src.ino, ro.fh, 0);
    fs.release(src.ino, src.fh, 0);
    await t.close();
  });
});

describe('fallocate', () => {
  it('mode 0 extends as a hole, KEEP_SIZE changes nothing, and neither stores a byte', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const f = await create(fs, 'f');
    await write(fs, f, b('head'));
    await fs.fallocate(f.ino, f.fh, 0, 0, 10 * B + 5);
    assert.equal((await fs.getattr(f.ino)).size, 10 * B + 5);
    await fs.fallocate(f.ino, f.fh, Falloc.KEEP_SIZE, 0, 20 * B);
    assert.equal((await fs.getattr(f.ino)).size, 10 * B + 5);
    await fs.fallocate(f.ino, f.fh, 0, 0, 4); // inside: nothing
    assert.equal((await fs.getattr(f.ino)).size, 10 * B + 5);
    await settle(t);
    assert.equal(volume.store.stats().uniqueBytes, 4);
    const all = await readAll(fs, f);
    assert.equal(all.subarray(0, 4).toString(), 'head');
    assert.ok(all.subarray(4).every((x) => x === 0));
    fs.release(f.ino, f.fh, 0);
    await t.close();
  });

  it('PUNCH_HOLE releases whole blocks and zeroes the partial ones; ZERO_RANGE may extend the size', async () => {
    const t = newFs();
    const { fs, volume } = t;
    const f = await create(fs, 'f');
    const data = randomBytes(4 * B);
    await write(fs, f, data);
    await settle(t);
    const from = B / 2;
    const to = 3 * B + 100; // blocks 1 and 2 whole, halves of 0 and 3
    await fs.fallocate(f.ino, f.fh, Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, from, to - from);
    data.fill(0, from, to);
    assert.deepEqual(await readAll(fs, f), data);
    assert.equal((await fs.getattr(f.ino)).size, 4 * B);
    await settle(t);
    assert.equal(volume.store.stats().blocks, 2, 'the two whole blocks are gone');
    assert.equal(fs.lseek(f.ino, f.fh, 0, Whence.HOLE), B);
    assert.equal(fs.lseek(f.ino, f.fh, B, Whence.DATA), 3 * B);

    // Past the end with KEEP_SIZE: the size stays; without: it grows, as zeros.
    await fs.fallocate(f.ino, f.fh, Falloc.ZERO_RANGE | Falloc.KEEP_SIZE, 4 * B - 10, 100);
    assert.equal((await fs.getattr(f.ino)).size, 4 * B);
    await fs.fallocate(f.ino, f.fh, Falloc.ZERO_RANGE, 4 * B - 10, 100);
    assert.equal((await fs.getattr(f.ino)).size, 4 * B + 90);
    data.fill(0, 4 * B - 10);
    assert.deepEqual(await readAll(fs, f), Buffer.concat([data, Buffer.alloc(90)]));

    for (const mode of [Falloc.PUNCH_HOLE, Falloc.COLLAPSE_RANGE, Falloc.INSERT_RANGE, Falloc.PUNCH_HOLE | Falloc.ZERO_RANGE | Falloc.KEEP_SIZE]) {
      assert.equal(await errno(() => fs.fallocate(f.ino, f.fh, mode, 0, B)), E.EOPNOTSUPP, `mode ${mode}`);
    }
    assert.equal(await errno(() => fs.fallocate(f.ino, f.fh, 0, 0, 0)), E.EINVAL);
    fs.release(f.ino, f.fh, 0);
    await settle(t);
    assert.deepEqual(await fsckFindings(t), []);
  });
});

describe('lseek SEEK_DATA / SEEK_HOLE', () => {
  it('follows the block map, uncommitted blocks included; ENXIO at or past the end', async () => {
    const t = newFs();
    const { fs } = t;
    const f = await create(fs, 'f');
    await write(fs, f, randomBytes(B), 2 * B); // data in block 2
    await write(fs, f, b('x'), 5 * B + 3); // pending data in block 5; size 5B+4
    const seek = (off: number, whence: number) => {
      try {
        return fs.lseek(f.ino, f.fh, off, whence);
      } catch (err) {
        return (err as { errno: number }).errno === E.ENXIO ? 'ENXIO' : err;
      }
    };
    assert.equal(seek(0, Whence.DATA), 2 * B);
    assert.equal(seek(2 * B + 7, Whence.DATA), 2 * B + 7);
    assert.equal(seek(3 * B, Whence.DATA), 5 * B);
    assert.equal(seek(0, Whence.HOLE), 0);
    assert.equal(seek(2 * B + 1, Whence.HOLE), 3 * B);
    assert.equal(seek(5 * B, Whence.HOLE), 5 * B + 4, 'the end is a hole');
    assert.equal(seek(5 * B + 4, Whence.DATA), 'ENXIO');
    assert.equal(seek(5 * B + 4, Whence.HOLE), 'ENXIO');
    fs.release(f.ino, f.fh, 0);
    await t.close();
  });
});
