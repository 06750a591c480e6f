import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { runFsck } from '../src/cli/fsck-command';
import { SCHEMA_VERSION } from '../src/meta/schema';
import { BlockStore } from '../src/store/block-store';
import { BLOCK_HEADER_SIZE, Codec, CorruptBlockError, LOCATOR_KIND, decodeBlock, encodeBlock } from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
import { StoreRepair } from '../src/store/repair';
import { ROOT_INO } from '../src/vfs/filesystem';
import { Volume } from '../src/vfs/volume';
import { b, newFs, openFs, readThrough, root, type TestFs } from './support/fs';
import { isMounted, mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { tempDir } from './support/tmp';
import { textCorpus } from './support/corpus';

const BS = 128 * 1024;
const O_RDWR = 2;
const EIO = 5;

const text = textCorpus(8 << 20);

describe('LZ4 codec', () => {
  it('lz4-napi loads its native binary and round-trips bytes', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const lz4 = require('lz4-napi') as typeof import('lz4-napi');
    const data = text.subarray(0, 50_000);
    const c = lz4.compressSync(data);
    assert.ok(c.length < data.length / 2, `compressed ${c.length} of ${data.length}`);
    assert.ok(lz4.uncompressSync(c).equals(data));
  });

  it('round-trips text, random, all-but-one-byte-zero, tiny and full blocks', () => {
    const almostZero = Buffer.alloc(BS);
    almostZero[77_777] = 0xa5;
    const cases: [string, Buffer, Codec][] = [
      ['text', text.subarray(0, BS), Codec.Lz4],
      ['random', randomBytes(BS), Codec.Raw],
      ['all but one byte zero', almostZero, Codec.Lz4],
      ['full 4M block of zeros', Buffer.alloc(4 << 20), Codec.Lz4],
      ['full 4M text block', text.subarray(0, 4 << 20), Codec.Lz4],
      ['tiny', Buffer.from('hi\n'), Codec.Raw],
      ['one byte', Buffer.from([7]), Codec.Raw],
      ['empty', Buffer.alloc(0), Codec.Raw],
      ['small text (no probe)', text.subarray(0, 3000), Codec.Lz4],
    ];
    for (const [name, data, expected] of cases) {
      const value = encodeBlock(data, Codec.Lz4);
      assert.equal(value[1], expected, `${name}: codec byte`);
      assert.equal(value.readUInt32LE(4), data.length, `${name}: raw length in the header`);
      if (expected === Codec.Lz4) assert.ok(value.length - BLOCK_HEADER_SIZE <= data.length - data.length / 8, `${name}: saves 1/8`);
      assert.ok(decodeBlock(value).equals(data), `${name}: round trip`);
      // Codec.Raw writes raw whatever the data.
      const rawValue = encodeBlock(data);
      assert.equal(rawValue[1], Codec.Raw);
      assert.ok(decodeBlock(rawValue).equals(data));
    }
  });

  it('keeps LZ4 only when it saves 1/8; the probe skips incompressible data cheaply', () => {
    // 15/16 random then zeros: LZ4 saves about 1/16, not enough.
    const marginal = Buffer.concat([randomBytes(BS - BS / 16), Buffer.alloc(BS / 16)]);
    assert.equal(encodeBlock(marginal, Codec.Lz4, { probeBytes: 0 })[1], Codec.Raw, 'saving 1/16 is not enough');
    // Random first 16 KiB, text after: the probe (first 8 KiB) gives up by design; the full compression would not.
    const randomHead = Buffer.concat([randomBytes(16 * 1024), text.subarray(0, BS - 16 * 1024)]);
    assert.equal(encodeBlock(randomHead, Codec.Lz4, { probeBytes: 0 })[1], Codec.Lz4);
    assert.equal(encodeBlock(randomHead, Codec.Lz4)[1], Codec.Raw);
    // Text head, random tail: the probe lets it through and the whole block saves more than 1/8.
    const randomTail = Buffer.concat([text.subarray(0, BS / 2), randomBytes(BS / 2)]);
    assert.equal(encodeBlock(randomTail, Codec.Lz4)[1], Codec.Lz4);
  });

  it('a bad LZ4 payload or length is a CorruptBlockError, never wrong bytes', () => {
    const data = text.subarray(0, BS);
    const value = encodeBlock(data, Codec.Lz4);
    assert.equal(value[1], Codec.Lz4);
    const truncated = value.subarray(0, value.length - 10);
    assert.throws(() => decodeBlock(truncated), CorruptBlockError);
    const longer = Buffer.from(value);
    longer.writeUInt32LE(data.length + 1, 4);
    assert.throws(() => decodeBlock(longer), CorruptBlockError);
    const shorter = Buffer.from(value);
    shorter.writeUInt32LE(data.length - 1, 4);
    assert.throws(() => decodeBlock(shorter), CorruptBlockError);
    const absurd = Buffer.from(value);
    absurd.writeUInt32LE(0xffffffff, 4);
    assert.throws(() => decodeBlock(absurd), /cannot hold/);
    const empty = value.subarray(0, BLOCK_HEADER_SIZE);
    assert.throws(() => decodeBlock(empty), CorruptBlockError);
  });
});

describe('block store with LZ4', () => {
  it('stores incompressible data raw (codec 0) and text as LZ4 (codec 1); stats count both', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'), { codec: Codec.Lz4 });
    try {
      const rnd = randomBytes(BS);
      const txt = Buffer.from(text.subarray(BS, 2 * BS));
      const hr = hashBlock(rnd);
      const ht = hashBlock(txt);
      await store.acquire([
        { hash: hr, data: rnd },
        { hash: ht, data: txt },
      ]);
      assert.equal(store.rawValue(hr)![1], Codec.Raw);
      assert.equal(store.rawValue(ht)![1], Codec.Lz4);
      const s = store.stats();
      assert.equal(s.uniqueBytes, 2 * BS);
      assert.equal(s.storedBytes, store.rawValue(hr)!.length + store.rawValue(ht)!.length);
      assert.ok(s.storedBytes < 2 * BS);
      const out = Buffer.alloc(BS);
      assert.equal(store.read(ht, 0, BS, out, 0), 'ok');
      assert.ok(out.equals(txt));
      assert.ok(store.get(ht)!.equals(txt));
      await store.release([ht]);
      assert.deepEqual(store.stats(), { blocks: 1, uniqueBytes: BS, storedBytes: BS + BLOCK_HEADER_SIZE, references: 1 });
    } finally {
      await store.close();
    }
  });
});

async function writeFile(t: TestFs, name: string, data: Buffer): Promise<number> {
  const f = await t.fs.create(ROOT_INO, b(name), 0o644, O_RDWR, root);
  await t.fs.write(f.attr.ino, f.fh, data, 0, root);
  await t.fs.fsync(f.attr.ino, f.fh); // release alone commits in the background
  t.fs.release(f.attr.ino, f.fh, 0);
  // Blocks fsync left parked in the metadata: into the store, which these tests inspect.
  await t.fs.durability.move();
  return f.attr.ino;
}

/** Reads a file of the root directory by name; the bytes, or the errno. */
async function readFile(t: TestFs, name: string, offset = 0, length = 64 << 20): Promise<Buffer | number> {
  return readThrough(t, (await t.fs.lookup(ROOT_INO, b(name), root)).attr.ino, offset, length);
}

describe('volumes with compression', () => {
  it('lz4 volume, tuned to none, written again: everything reads back after reopen', async () => {
    const files: Record<string, Buffer> = {
      'text1.h': text.subarray(0, 3 * BS + 500),
      'random1.bin': randomBytes(2 * BS + 7),
    };
    let t = newFs(BS, 'lz4');
    assert.equal(t.volume.compression, 'lz4');
    for (const [name, data] of Object.entries(files)) await writeFile(t, name, data);
    await t.close();

    // What `pogfs tune --compression none` does.
    const v = Volume.open(t.path);
    v.changeSettings({ compression: 'none' });
    await v.close();

    t = openFs(t.path);
    assert.equal(t.volume.compression, 'none');
    files['text2.h'] = text.subarray(4 * BS, 7 * BS);
    files['random2.bin'] = randomBytes(BS);
    await writeFile(t, 'text2.h', files['text2.h']);
    await writeFile(t, 'random2.bin', files['random2.bin']);
    await t.close();

    t = openFs(t.path);
    try {
      for (const [name, data] of Object.entries(files)) {
        const got = await readFile(t, name);
        assert.ok(Buffer.isBuffer(got) && got.equals(data), `${name} reads back identical`);
      }
      // A read inside an LZ4 block at an odd offset.
      const part = await readFile(t, 'text1.h', BS + 123, 4000);
      assert.ok(Buffer.isBuffer(part) && part.equals(files['text1.h'].subarray(BS + 123, BS + 4123)));
      // Mixed codecs: text1 blocks are LZ4, text2 blocks raw.
      const codecs = async (name: string) => {
        const ino = (await t.fs.lookup(ROOT_INO, b(name), root)).attr.ino;
        return t.volume.meta.listBlocks(ino).map((r) => t.volume.store.rawValue(r.hash)![1]);
      };
      assert.deepEqual((await codecs('text1.h')).slice(0, 3), [Codec.Lz4, Codec.Lz4, Codec.Lz4]);
      assert.deepEqual(await codecs('text2.h'), [Codec.Raw, Codec.Raw, Codec.Raw], 'written after tune: raw');
      // Full random blocks stay raw; the 7-byte tail is a short block, packed with text1's tail.
      assert.deepEqual((await codecs('random1.bin')).slice(0, 2), [Codec.Raw, Codec.Raw]);
      assert.equal((await codecs('text1.h'))[3], LOCATOR_KIND, 'the short tail of an lz4 volume went into a super-chunk');
    } finally {
      await t.close();
    }
    // fsck hashes the decoded bytes: a sound mixed volume is clean.
    const report = await runFsck(t.path, {});
    assert.deepEqual(report.findings.filter((f) => f.severity !== 'notice').map((f) => f.kind), []);
    assert.equal(report.exitCode, 0);
  });

  it('a text corpus stores well below its unique bytes', async () => {
    const t = newFs(BS, 'lz4');
    try {
      await writeFile(t, 'corpus', text);
      const s = t.volume.store.stats();
      assert.equal(s.uniqueBytes, text.length);
      assert.ok(s.storedBytes < 0.5 * s.uniqueBytes, `stored ${s.storedBytes} of ${s.uniqueBytes}`);
      const got = await readFile(t, 'corpus');
      assert.ok(Buffer.isBuffer(got) && got.equals(text));
    } finally {
      await t.close();
    }
    const none = newFs(BS, 'none');
    try {
      await writeFile(none, 'corpus', text);
      const s = none.volume.store.stats();
      assert.equal(s.storedBytes, s.uniqueBytes + s.blocks * BLOCK_HEADER_SIZE);
    } finally {
      await none.close();
    }
  });

  it('a volume from before the setting keeps writing raw blocks', async () => {
    const t = newFs(BS);
    assert.equal(t.volume.compression, 'lz4', 'new volumes default to lz4');
    await t.close();
    // Turn it back into a schema-1 volume: no compression column.
    const db = new Database(join(t.path, 'meta.db'));
    // Schema 1: none of the later tables, no compression column.
    db.exec('DROP TABLE settings; DROP TABLE packs; DROP TABLE pack_blocks; DROP TABLE pins; DROP TABLE volume_state; DROP TABLE parked_blocks; DROP TABLE tree_ops; DROP TABLE snapshots');
    db.pragma('user_version = 1');
    db.close();
    const ro = Volume.open(t.path, { readOnly: true });
    assert.equal(ro.compression, 'none', 'read-only open of an unmigrated volume');
    await ro.close();
    const u = openFs(t.path);
    try {
      assert.equal(u.volume.meta.schemaVersion(), SCHEMA_VERSION);
      assert.equal(u.volume.compression, 'none');
      await writeFile(u, 'text', text.subarray(0, BS));
      await u.fs.quiesceForGc(); // a block parked by the close is in the store after this
      const ino = (await u.fs.lookup(ROOT_INO, b('text'), root)).attr.ino;
      assert.equal(u.volume.store.rawValue(u.volume.meta.listBlocks(ino)[0].hash)![1], Codec.Raw);
    } finally {
      await u.close();
    }
  });

  it('a damaged LZ4 payload: fsck reports corrupt-block, reads are EIO', async () => {
    let t = newFs(BS, 'lz4');
    await writeFile(t, 'good', text.subarray(0, BS));
    await writeFile(t, 'bad', text.subarray(BS, 3 * BS));
    const ino = (await t.fs.lookup(ROOT_INO, b('bad'), root)).attr.ino;
    const target = t.volume.meta.listBlocks(ino)[1].hash;
    await t.close();

    const v = Volume.open(t.path);
    const value = v.store.rawValue(target)!;
    assert.equal(value[1], Codec.Lz4);
    // Clobber the middle of the payload: either the stream breaks or the bytes change.
    value.fill(0xff, BLOCK_HEADER_SIZE + 100, BLOCK_HEADER_SIZE + 200);
    const repair = new StoreRepair(v.store);
    await repair.run((txn) => repair.putRawValue(txn, target, value));
    await v.close();

    const report = await runFsck(t.path, {});
    const f = report.findings.find((x) => x.kind === 'corrupt-block');
    assert.ok(f, `findings: ${report.findings.map((x) => x.kind).join(', ')}`);
    assert.equal(f.count, 1);
    assert.match(f.examples[0], /^\/bad: bytes 131072-262143 \(block 1, /);
    assert.equal(report.exitCode, 4);

    t = openFs(t.path);
    try {
      assert.equal(await readFile(t, 'bad', BS, 4096), EIO);
      const first = await readFile(t, 'bad', 0, BS);
      assert.ok(Buffer.isBuffer(first) && first.equals(text.subarray(BS, 2 * BS)));
      const good = await readFile(t, 'good');
      assert.ok(Buffer.isBuffer(good) && good.equals(text.subarray(0, BS)));
    } finally {
      await t.close();
    }
  });

  it('a truncated LZ4 stream (valid header) is corrupt-block too', async () => {
    const t = newFs(BS, 'lz4');
    await writeFile(t, 'f', text.subarray(0, BS));
    const hash = t.volume.meta.listBlocks((await t.fs.lookup(ROOT_INO, b('f'), root)).attr.ino)[0].hash;
    await t.close();
    const v = Volume.open(t.path);
    const value = v.store.rawValue(hash)!;
    const repair = new StoreRepair(v.store);
    await repair.run((txn) => repair.putRawValue(txn, hash, value.subarray(0, value.length - 50)));
    await v.close();
    const report = await runFsck(t.path, {});
    const f = report.findings.find((x) => x.kind === 'corrupt-block');
    assert.ok(f);
    assert.match(f.examples[0], /LZ4 block/);
  });
});

describe('compression through a real mount', () => {
  it('cp -a /usr/include: identical, stored < 0.6 x unique; tune refuses the mounted volume', (t) => {
    const m = mountFresh(['--compression', 'lz4']);
    sh(`cp -a /usr/include ${m.p('include')}`);
    sh(`diff -r /usr/include ${m.p('include')}`);
    const busy = pogfs(['tune', m.volume, '--compression', 'none']);
    assert.equal(busy.status, 2, busy.stderr);
    assert.match(busy.stderr, /is mounted at .*unmount it first/);
    const s = JSON.parse(pogfsOk(['stats', m.mnt, '--json'])) as { uniqueBytes: number; storedBytes: number; compression: string; compressionRatio: number };
    t.diagnostic(`stored ${s.storedBytes} of unique ${s.uniqueBytes} bytes (${s.compressionRatio.toFixed(3)})`);
    assert.equal(s.compression, 'lz4');
    assert.ok(s.uniqueBytes > 50 << 20, `unique ${s.uniqueBytes}`);
    assert.ok(s.storedBytes < 0.6 * s.uniqueBytes, `stored ${s.storedBytes} of unique ${s.uniqueBytes}`);
    assert.ok(Math.abs(s.compressionRatio - s.storedBytes / s.uniqueBytes) < 1e-9);

    m.umount();
    assert.ok(!isMounted(m.mnt));
    assert.match(pogfsOk(['tune', m.volume, '--compression', 'none']), /compression lz4 -> none/);
    assert.match(pogfsOk(['stats', m.volume]), /compression\s+none for new blocks; stored\/unique 0\.\d+/);
    const bad = pogfs(['tune', m.volume, '--compression', 'zstd:99']);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^pogfs: --compression: zstd level "99" is not a whole number from 1 to 19\n$/);
    m.mount();
    sh(`diff -r /usr/include ${m.p('include')}`);
    m.umount();
  });
});
