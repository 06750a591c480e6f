import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { runFsck } from '../src/cli/fsck-command';
import { collectGarbage } from '../src/gc/block-gc';
import { BlockStore } from '../src/store/block-store';
import {
  BLOCK_HEADER_SIZE,
  Codec,
  CorruptBlockError,
  LOCATOR_KIND,
  decodeBlock,
  decodeBlockAsync,
  decodeLocator,
  encodeBlock,
  encodeBlockAsync,
  encodingOf,
  parseCompression,
} from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
import { StoreRepair } from '../src/store/repair';
import { SuperChunkPacker } from '../src/store/super-chunk-packer';
import { zstdCompressSync, zstdVersion } from '../src/store/zstd';
import { ROOT_INO } from '../src/vfs/filesystem';
import { Volume } from '../src/vfs/volume';
import { realFiles, textCorpus } from './support/corpus';
import { b, newFs, openFs, readThrough, root, type TestFs } from './support/fs';
import { isMounted, mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { treeDigests, unmountQuietly, waitUploaded } from './support/remote-mount';
import { tempDir } from './support/tmp';

const BS = 128 * 1024;
const O_RDWR = 2;
const EIO = 5;
const text = textCorpus(4 << 20);
const small = realFiles('/usr/include', 2 << 20, 32 * 1024);

async function writeFile(t: TestFs, name: string, data: Buffer): Promise<number> {
  const f = await t.fs.create(ROOT_INO, b(name), 0o644, O_RDWR, root);
  if (data.length > 0) await t.fs.write(f.attr.ino, f.fh, data, 0, root);
  await t.fs.fsync(f.attr.ino, f.fh);
  t.fs.release(f.attr.ino, f.fh, 0);
  return f.attr.ino;
}

/** The kind byte of each stored value a file's blocks have (LOCATOR_KIND for packed ones). */
function kinds(t: TestFs, ino: number): number[] {
  return t.volume.meta.listBlocks(ino).map((r) => t.volume.store.rawValue(r.hash)![1]);
}

describe('zstd codec', () => {
  it('the addon loads (system libzstd) and levels change the output', () => {
    assert.match(zstdVersion(), /^1\.\d+\.\d+$/);
    const data = text.subarray(0, BS);
    const l1 = zstdCompressSync(data, 1).length;
    const l19 = zstdCompressSync(data, 19).length;
    assert.ok(l19 < l1, `level 19 (${l19}) smaller than level 1 (${l1})`);
  });

  it('round-trips every shape, sync and on the thread pool; what does not save 1/8 stays raw', async () => {
    const almostZero = Buffer.alloc(BS);
    almostZero[77_777] = 0xa5;
    const cases: [string, Buffer, Codec][] = [
      ['text', text.subarray(0, BS), Codec.Zstd],
      ['random', randomBytes(BS), Codec.Raw],
      ['all but one byte zero', almostZero, Codec.Zstd],
      ['full 4M text block', text.subarray(0, 4 << 20), Codec.Zstd],
      ['tiny', Buffer.from('hi\n'), Codec.Raw],
      ['empty', Buffer.alloc(0), Codec.Raw],
      ['small text (no probe)', text.subarray(0, 3000), Codec.Zstd],
    ];
    for (const [name, data, expected] of cases) {
      for (const level of [1, 9]) {
        const value = encodeBlock(data, Codec.Zstd, { level });
        assert.equal(value[1], expected, `${name} at ${level}: codec`);
        assert.equal(value.readUInt32LE(4), data.length, `${name}: header length`);
        if (expected === Codec.Zstd) assert.ok(value.length - BLOCK_HEADER_SIZE <= data.length - data.length / 8, `${name}: saves 1/8`);
        assert.ok(decodeBlock(value).equals(data), `${name}: sync round trip`);
        const viaPool = await encodeBlockAsync(data, Codec.Zstd, { level });
        assert.ok(viaPool.equals(value), `${name}: the pool encodes the same bytes`);
        assert.ok((await decodeBlockAsync(viaPool)).equals(data), `${name}: async round trip`);
      }
    }
    // Level 9 stores text smaller than level 1, and both smaller than LZ4.
    const at = (level: number) => encodeBlock(text.subarray(0, BS), Codec.Zstd, { level }).length;
    assert.ok(at(9) < at(1) && at(1) < encodeBlock(text.subarray(0, BS), Codec.Lz4).length);
  });

  it('probes with zstd itself: hex digits (no LZ4 matches, half the entropy) compress', () => {
    const hex = Buffer.from(randomBytes(BS / 2).toString('hex'));
    assert.equal(encodeBlock(hex, Codec.Lz4)[1], Codec.Raw, 'LZ4 finds nothing to save');
    const value = encodeBlock(hex, Codec.Zstd);
    assert.equal(value[1], Codec.Zstd);
    assert.ok(value.length < 0.6 * hex.length, `zstd keeps ${value.length} of ${hex.length}`);
    // Random bytes fail the probe (and would fail the 1/8 rule).
    const noise = randomBytes(BS);
    assert.equal(encodeBlock(noise, Codec.Zstd)[1], Codec.Raw);
  });

  it('a value that does not decode to exactly its header length is corrupt, sync and async', async () => {
    const data = text.subarray(BS, 2 * BS);
    const value = encodeBlock(data, Codec.Zstd);
    assert.equal(value[1], Codec.Zstd);
    const bad: [string, Buffer, RegExp][] = [];
    const longer = Buffer.from(value);
    longer.writeUInt32LE(data.length + 1, 4);
    bad.push(['header claims one byte more', longer, /zstd block does not decompress: zstd frame holds 131072 bytes, expected 131073/]);
    const absurd = Buffer.from(value);
    absurd.writeUInt32LE(0xffffffff, 4);
    bad.push(['header claims 4 GiB (refused before allocating)', absurd, /zstd block does not decompress/]);
    bad.push(['truncated frame', value.subarray(0, value.length - 40), /zstd block does not decompress/]);
    const flipped = Buffer.from(value);
    flipped[BLOCK_HEADER_SIZE + 200] ^= 0xff;
    flipped[BLOCK_HEADER_SIZE + 201] ^= 0x5a;
    bad.push(['flipped payload bytes', flipped, /zstd block|decompresses to/]);
    bad.push(['no frame at all', Buffer.concat([value.subarray(0, BLOCK_HEADER_SIZE), Buffer.alloc(4)]), /zstd value of 4 bytes/]);
    for (const [name, v, message] of bad) {
      // A flipped literal may still decode to the right length: then the BLAKE3 key catches it.
      let sync: unknown;
      try {
        const out = decodeBlock(v);
        assert.ok(!hashBlock(out).equals(hashBlock(data)), `${name}: decoded bytes differ at least`);
        continue;
      } catch (err) {
        sync = err;
      }
      assert.ok(sync instanceof CorruptBlockError, `${name}: CorruptBlockError, got ${String(sync)}`);
      assert.match((sync as Error).message, message, name);
      await assert.rejects(decodeBlockAsync(v), (err: unknown) => err instanceof CorruptBlockError && message.test((err as Error).message), name);
    }
  });

  it('--compression values: zstd alone is zstd:3; levels 1 to 19; anything else a one-line error', () => {
    assert.equal(parseCompression('zstd'), 'zstd:3');
    assert.equal(parseCompression('ZSTD:9'), 'zstd:9');
    assert.equal(parseCompression('lz4'), 'lz4');
    assert.equal(parseCompression('none'), 'none');
    assert.deepEqual(encodingOf('zstd:19'), { codec: Codec.Zstd, level: 19 });
    assert.deepEqual(encodingOf('lz4'), { codec: Codec.Lz4, level: 0 });
    for (const bad of ['zstd:0', 'zstd:20', 'zstd:99', 'zstd:', 'zstd:3.5', 'zstd:-1', 'zstd9', 'brotli', '']) {
      assert.throws(() => parseCompression(bad), (err: Error) => !err.message.includes('\n'), bad);
    }
  });
});

describe('zstd in the block store', () => {
  it('super-chunks compress with zstd, are read back verified, and count in the codec mix', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'), { codec: Codec.Zstd, zstdLevel: 9, packBelow: BS });
    const packer = new SuperChunkPacker(store, { targetBytes: 1 << 20, idleMs: 60_000, onError: (err) => assert.fail(String(err)) });
    try {
      const files = small.slice(0, 60);
      const items = files.map((f) => ({ hash: hashBlock(f.data), data: f.data }));
      await store.acquire(items);
      await store.acquire([{ hash: hashBlock(text.subarray(0, BS)), data: text.subarray(0, BS), value: encodeBlock(text.subarray(0, BS), Codec.Zstd, store.encodeOptions()) }]);
      await packer.flush();
      const chunks = [...store.superChunks.scan()];
      assert.ok(chunks.length >= 1);
      for (const c of chunks) assert.equal(c.value[1], Codec.Zstd, 'chunks written with the store codec');
      store.chunkCache.resize(0);
      store.chunkCache.resize(8 << 20);
      for (const [i, f] of files.entries()) {
        const out = Buffer.alloc(f.data.length);
        assert.equal(await store.read(items[i].hash, 0, f.data.length, out, 0), 'ok');
        assert.ok(out.equals(f.data), f.name);
      }
      const mix = store.codecMix();
      assert.equal(mix.superChunks.zstd?.values, chunks.length);
      assert.equal(mix.loose.zstd?.values, 1, 'the full text block, loose');
      assert.equal(mix.locators, new Set(items.map((i) => i.hash.toString('hex'))).size);
      assert.equal(mix.loose.lz4, undefined);
      // Level 9 packs these headers tighter than LZ4 does (same blocks, same chunking).
      const raw = Buffer.concat(files.map((f) => f.data));
      assert.ok(chunks.reduce((n, c) => n + c.value.length, 0) < encodeBlock(raw, Codec.Lz4, { probeBytes: 0 }).length);
    } finally {
      await packer.close();
      await store.close();
    }
  });
});

describe('volumes mixing LZ4, zstd and raw', () => {
  it('lz4 volume tuned to zstd:9: both read back; fsck clean; gc --recompress converts the lz4 chunks; damage to zstd values is corrupt-block and EIO', async () => {
    let t = newFs(BS, 'lz4', true);
    const early = new Map<string, { ino: number; data: Buffer }>();
    for (const f of small.slice(0, 40)) early.set(`a-${f.name.replace(/\//g, '_')}`, { ino: 0, data: f.data });
    early.set('a-text', { ino: 0, data: text.subarray(0, 2 * BS + 999) });
    early.set('a-random', { ino: 0, data: randomBytes(BS) });
    for (const [name, e] of early) e.ino = await writeFile(t, name, e.data);
    await t.close();
    const v = Volume.open(t.path);
    v.changeSettings({ compression: 'zstd:9' });
    await v.close();
    t = openFs(t.path);
    assert.equal(t.volume.compression, 'zstd:9');
    const late = new Map<string, { ino: number; data: Buffer }>();
    for (const f of small.slice(40, 80)) late.set(`b-${f.name.replace(/\//g, '_')}`, { ino: 0, data: f.data });
    late.set('b-text', { ino: 0, data: text.subarray(3 * BS, 5 * BS + 17) });
    for (const [name, e] of late) e.ino = await writeFile(t, name, e.data);
    await t.close();

    t = openFs(t.path);
    const all = [...early, ...late];
    let textHash: Buffer;
    try {
      for (const [name, { ino, data }] of all) {
        const got = await readThrough(t, ino);
        assert.ok(Buffer.isBuffer(got) && got.equals(data), `${name} reads back`);
      }
      assert.deepEqual(kinds(t, early.get('a-text')!.ino), [Codec.Lz4, Codec.Lz4, LOCATOR_KIND]);
      assert.deepEqual(kinds(t, early.get('a-random')!.ino), [Codec.Raw]);
      assert.deepEqual(kinds(t, late.get('b-text')!.ino), [Codec.Zstd, Codec.Zstd, LOCATOR_KIND]);
      textHash = t.volume.meta.listBlocks(late.get('b-text')!.ino)[0].hash;
      const chunkKinds = new Set([...t.volume.store.superChunks.scan()].map((c) => c.value[1]));
      assert.deepEqual(chunkKinds, new Set([Codec.Lz4, Codec.Zstd]), 'chunks of both codecs');
    } finally {
      await t.close();
    }
    let report = await runFsck(t.path, {});
    assert.deepEqual(report.findings.filter((f) => f.severity !== 'notice').map((f) => f.kind), []);

    // gc --recompress: every lz4 chunk is rewritten with zstd (all of them fully live).
    const gc = await collectGarbage(t.path, { recompress: true });
    assert.ok(gc.repack.otherCodecChunks >= 1, `chunks converted: ${gc.repack.otherCodecChunks}`);
    assert.ok(gc.repack.bytesAfter < gc.repack.bytesBefore, `zstd:9 chunks ${gc.repack.bytesAfter} < lz4 ones ${gc.repack.bytesBefore}`);
    t = openFs(t.path);
    try {
      assert.deepEqual(new Set([...t.volume.store.superChunks.scan()].map((c) => c.value[1])), new Set([Codec.Zstd]));
      for (const [name, { ino, data }] of all) {
        const got = await readThrough(t, ino);
        assert.ok(Buffer.isBuffer(got) && got.equals(data), `${name} reads back after recompression`);
      }
    } finally {
      await t.close();
    }
    report = await runFsck(t.path, {});
    assert.deepEqual(report.findings.filter((f) => f.severity !== 'notice').map((f) => f.kind), []);
    const again = await collectGarbage(t.path, { recompress: true });
    assert.equal(again.repack.otherCodecChunks, 0, 'nothing left to convert: a second run rewrites nothing');
    assert.equal(again.repack.chunksWritten, 0);

    // Damage: a loose zstd block whose header claims one byte more, and a zstd super-chunk cut short.
    const vol = Volume.open(t.path);
    const value = vol.store.rawValue(textHash)!;
    const longer = Buffer.from(value);
    longer.writeUInt32LE(value.readUInt32LE(4) + 1, 4);
    const smallHash = hashBlock(small[0].data);
    const chunk = decodeLocator(vol.store.rawValue(smallHash)!).chunk;
    const chunkValue = vol.store.superChunks.value(chunk)!;
    assert.equal(chunkValue[1], Codec.Zstd);
    const repair = new StoreRepair(vol.store);
    await repair.run((txn) => {
      repair.putRawValue(txn, textHash, longer);
      repair.putChunk(txn, chunk, chunkValue.subarray(0, chunkValue.length - 100));
    });
    await vol.close();
    report = await runFsck(t.path, {});
    const corrupt = report.findings.find((f) => f.kind === 'corrupt-block');
    assert.ok(corrupt, 'corrupt-block reported');
    assert.ok(corrupt.examples.some((e) => /zstd block does not decompress: zstd frame holds \d+ bytes, expected \d+/.test(e)), corrupt.examples.join('\n'));
    const chunkDamage = report.findings.find((f) => f.kind === 'corrupt-superchunk');
    assert.ok(chunkDamage, 'corrupt-superchunk reported');
    assert.match(chunkDamage.examples[0], new RegExp(`^super-chunk ${chunk} does not decompress \\(zstd block does not decompress: `));
    t = openFs(t.path);
    try {
      assert.equal(await readThrough(t, late.get('b-text')!.ino, 0, 100), EIO);
      assert.equal(await readThrough(t, early.get(`a-${small[0].name.replace(/\//g, '_')}`)!.ino), EIO);
      const second = await readThrough(t, late.get('b-text')!.ino, BS, 100);
      assert.ok(Buffer.isBuffer(second) && second.equals(late.get('b-text')!.data.subarray(BS, BS + 100)), 'an intact block beside it reads');
    } finally {
      await t.close();
    }
  });
});

describe('zstd through a real mount', () => {
  it('init --compression zstd:9: cp -a reads back identical; stats shows zstd:9 and the codec mix; zstd:99 is a usage error', () => {
    const bad = pogfs(['init', join(tempDir(), 'v'), '--compression', 'zstd:99']);
    assert.equal(bad.status, 2);
    assert.equal(bad.stderr, 'pogfs: --compression: zstd level "99" is not a whole number from 1 to 19\n');
    const m = mountFresh(['--compression', 'zstd:9']);
    try {
      sh(`cp -a /usr/include/linux ${m.p('linux')}`);
      sh(`diff -r /usr/include/linux ${m.p('linux')}`);
      m.umount();
      const s = JSON.parse(pogfsOk(['stats', m.volume, '--json'])) as {
        compression: string;
        uniqueBytes: number;
        storedBytes: number;
        codecs: { loose: Record<string, { values: number }>; superChunks: Record<string, { values: number }>; locators: number };
      };
      assert.equal(s.compression, 'zstd:9');
      assert.ok(s.codecs.superChunks.zstd.values > 0, JSON.stringify(s.codecs));
      assert.ok(s.codecs.locators > 500, JSON.stringify(s.codecs));
      assert.equal(s.codecs.superChunks.lz4, undefined);
      assert.ok(s.storedBytes < 0.3 * s.uniqueBytes, `stored ${s.storedBytes} of ${s.uniqueBytes}`);
      assert.match(pogfsOk(['stats', m.volume]), /codecs\s+loose blocks: .*; super-chunks: zstd \d+ \(/);
      m.mount();
      sh(`diff -r /usr/include/linux ${m.p('linux')}`);
    } finally {
      if (isMounted(m.mnt)) m.umount();
    }
    assert.ok(!isMounted(m.mnt));
  });
});

describe('zstd through a local: remote', () => {
  it('zstd values and zstd super-chunks go up in packs and come back on a machine with no local copy', async () => {
    const mounts: string[] = [];
    const dir = tempDir('pogfs-zstd-remote-', () => mounts.forEach(unmountQuietly));
    const remote = `local:${join(dir, 'remote')}`;
    const volume = join(dir, 'vol');
    const mnt = join(dir, 'mnt');
    const mnt2 = join(dir, 'mnt2');
    mkdirSync(mnt);
    mkdirSync(mnt2);
    mounts.push(mnt, mnt2);
    pogfsOk(['init', volume, '--remote', remote, '--compression', 'zstd:3', '--pack-size', '4M']);
    pogfsOk(['mount', volume, mnt]);
    for (const [i, f] of small.slice(0, 100).entries()) writeFileSync(join(mnt, `h${i}.h`), f.data);
    writeFileSync(join(mnt, 'big.txt'), text.subarray(0, 3 * BS + 4321));
    const digests = treeDigests(mnt);
    await waitUploaded(mnt);
    pogfsOk(['umount', mnt]);
    const s = JSON.parse(pogfsOk(['stats', volume, '--json'])) as { codecs: { loose: Record<string, { values: number }>; superChunks: Record<string, { values: number }> } };
    assert.ok(s.codecs.superChunks.zstd.values >= 1 && s.codecs.loose.zstd.values >= 3, JSON.stringify(s.codecs));

    rmSync(volume, { recursive: true, force: true });
    const copy = join(dir, 'copy');
    const out = pogfs(['mount', remote, mnt2, '--cache-dir', copy]);
    assert.equal(out.status, 0, out.stderr);
    assert.deepEqual(treeDigests(mnt2), digests, 'every file fetched, decoded and verified');
    pogfsOk(['umount', mnt2]);
    const fsck = pogfs(['fsck', copy, '--remote']);
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  });
});
