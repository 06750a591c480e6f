import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { runFsck } from '../src/cli/fsck-command';
import { collectGarbage } from '../src/gc/block-gc';
import { BlockStore } from '../src/store/block-store';
import { BLOCK_HEADER_SIZE, Codec, LOCATOR_KIND, LOCATOR_SIZE, decodeLocator, type Compression } from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
import { StoreRepair } from '../src/store/repair';
import { SuperChunkPacker } from '../src/store/super-chunk-packer';
import { ROOT_INO } from '../src/vfs/filesystem';
import { Volume } from '../src/vfs/volume';
import { realFiles, textCorpus } from './support/corpus';
import { b, newFs, openFs, readThrough, root, type TestFs } from './support/fs';
import { mountFresh, pogfsOk, sh } from './support/mount';
import { tempDir } from './support/tmp';

const BS = 128 * 1024;
const O_RDWR = 2;
const EIO = 5;

/** Small real files (headers), the case super-chunks are for. */
const small = realFiles('/usr/include', 3 << 20, 32 * 1024);
const text = textCorpus(2 << 20);

async function writeFile(t: TestFs, name: string, data: Buffer, parent = ROOT_INO): Promise<number> {
  const f = await t.fs.create(parent, b(name), 0o644, O_RDWR, root);
  if (data.length > 0) await t.fs.write(f.attr.ino, f.fh, data, 0, root);
  await t.fs.fsync(f.attr.ino, f.fh);
  t.fs.release(f.attr.ino, f.fh, 0);
  // Blocks fsync left parked in the metadata: into the store, which these tests inspect.
  await t.fs.durability.move();
  return f.attr.ino;
}

/** Writes the small files flat under the root (names made unique); returns name → (ino, data). */
async function writeSmall(t: TestFs, files = small, prefix = ''): Promise<Map<string, { ino: number; data: Buffer }>> {
  const out = new Map<string, { ino: number; data: Buffer }>();
  for (const f of files) {
    const name = prefix + f.name.replace(/\//g, '_');
    out.set(name, { ino: await writeFile(t, name, f.data), data: f.data });
  }
  return out;
}

/** Every file reads back byte-identical. */
async function assertFiles(t: TestFs, files: Iterable<[string, { ino: number; data: Buffer }]>): Promise<void> {
  for (const [name, { ino, data }] of files) {
    const got = await readThrough(t, ino);
    assert.ok(Buffer.isBuffer(got) && got.equals(data), `${name} reads back identical`);
  }
}

/** A full fsck of the closed volume finds nothing at all. */
async function assertClean(path: string): Promise<void> {
  const report = await runFsck(path, {});
  assert.deepEqual(report.findings.map((f) => `${f.kind}: ${f.examples[0] ?? ''}`), []);
}

function kindOf(t: TestFs, hash: Buffer): number | undefined {
  return t.volume.store.rawValue(hash)?.[1];
}

/** Sum of the stored sizes of every block value and super-chunk: what storedBytes must say. */
function storedRecount(store: BlockStore): number {
  let n = 0;
  for (const { value } of store.scanValues()) n += value.length;
  for (const { value } of store.superChunks.scan()) n += value.length;
  return n;
}

describe('super-chunks in the block store', () => {
  it('queues short blocks raw, packs them into one compressed chunk, serves them verified, frees the chunk with its last block', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'), { codec: Codec.Lz4, packBelow: BS });
    const packer = new SuperChunkPacker(store, { targetBytes: 1 << 20, idleMs: 60_000, onError: (err) => assert.fail(String(err)) });
    try {
      const files = small.slice(0, 40);
      const items = files.map((f) => ({ hash: hashBlock(f.data), data: f.data }));
      await store.acquire(items);
      // Before packing: loose and raw, queued in write order.
      for (const it of items) assert.equal(store.rawValue(it.hash)![1], Codec.Raw);
      assert.equal(store.superChunks.queuedBlocks(1000).length, new Set(items.map((i) => i.hash.toString('hex'))).size);
      await packer.flush();
      assert.equal(store.superChunks.queuedBlocks(10).length, 0);
      const chunks = [...store.superChunks.scan()];
      assert.equal(chunks.length, 1, 'one chunk for 40 small files');
      assert.equal(chunks[0].value[1], Codec.Lz4);
      const raw = files.reduce((n, f) => n + f.data.length, 0);
      for (const it of items) {
        const v = store.rawValue(it.hash)!;
        assert.equal(v[1], LOCATOR_KIND);
        assert.equal(v.length, LOCATOR_SIZE);
        assert.equal(decodeLocator(v).chunk, chunks[0].chunk);
      }
      // Stored: the chunk plus 20-byte locators, far below the raw bytes (and below per-block LZ4).
      const s = store.stats();
      assert.equal(s.storedBytes, storedRecount(store));
      assert.ok(s.storedBytes < 0.5 * raw, `stored ${s.storedBytes} of ${raw}`);
      // Reads through a cold cache decompress once (off this thread) and verify each block.
      store.chunkCache.resize(0);
      store.chunkCache.resize(8 << 20);
      const before = store.chunkCache.stats();
      for (const [i, f] of files.entries()) {
        const out = Buffer.alloc(f.data.length + 10, 0xee);
        const r = await store.read(items[i].hash, 0, f.data.length + 10, out, 0);
        assert.equal(r, 'ok');
        assert.ok(out.subarray(0, f.data.length).equals(f.data), f.name);
        assert.ok(out.subarray(f.data.length).equals(Buffer.alloc(10)), 'zeros past the block');
      }
      const after = store.chunkCache.stats();
      assert.equal(after.misses - before.misses, 1, 'one decompression for the whole chunk');
      assert.equal(after.hits - before.hits, files.length - 1);
      // Releasing all but one keeps the chunk; the last one frees it and its bytes.
      await store.release(items.slice(1).map((i) => i.hash));
      assert.equal([...store.superChunks.scan()].length, 1);
      assert.equal(store.superChunks.info(chunks[0].chunk)!.liveBlocks, 1);
      await store.release([items[0].hash]);
      assert.equal([...store.superChunks.scan()].length, 0);
      assert.equal(store.superChunks.info(chunks[0].chunk), undefined);
      assert.deepEqual(store.stats(), { blocks: 0, uniqueBytes: 0, storedBytes: 0, references: 0 });
    } finally {
      await packer.close();
      await store.close();
    }
  });

  it('packs in write order, chunk by chunk, and keeps blocks that do not compress loose', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'), { codec: Codec.Lz4, packBelow: BS });
    const packer = new SuperChunkPacker(store, { targetBytes: 256 * 1024, idleMs: 60_000, onError: (err) => assert.fail(String(err)) });
    try {
      const files = small.slice(0, 200);
      const items = files.map((f) => ({ hash: hashBlock(f.data), data: f.data }));
      await store.acquire(items);
      await packer.flush();
      const chunks = [...store.superChunks.scan()];
      const bytes = files.reduce((n, f) => n + f.data.length, 0);
      assert.ok(chunks.length >= Math.floor(bytes / (256 * 1024)), `${chunks.length} chunks for ${bytes} bytes`);
      for (const c of chunks) assert.ok(store.superChunks.info(c.chunk)!.totalBytes <= 256 * 1024);
      // Write order: a file's neighbours in time share its chunk.
      const chunkOf = (i: number) => decodeLocator(store.rawValue(items[i].hash)!).chunk;
      assert.equal(chunkOf(0), chunkOf(1));
      assert.ok(chunkOf(0) <= chunkOf(items.length - 1));

      const noise = [randomBytes(3000), randomBytes(9000), randomBytes(500)];
      await store.acquire(noise.map((data) => ({ hash: hashBlock(data), data })));
      await packer.flush();
      for (const data of noise) assert.equal(store.rawValue(hashBlock(data))![1], Codec.Raw, 'random bytes stay raw and loose');
      assert.equal([...store.superChunks.scan()].length, chunks.length, 'no chunk for incompressible blocks');
      assert.equal(store.stats().storedBytes, storedRecount(store));
    } finally {
      await packer.close();
      await store.close();
    }
  });

  it('a block released while its chunk is being packed is left out; the chunk counts only the rest', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'), { codec: Codec.Lz4, packBelow: BS });
    const packer = new SuperChunkPacker(store, { targetBytes: 1 << 20, idleMs: 60_000, onError: (err) => assert.fail(String(err)) });
    try {
      const items = small.slice(0, 30).map((f) => ({ hash: hashBlock(f.data), data: f.data }));
      await store.acquire(items);
      const packing = packer.flush();
      // The packer reads, then compresses off this thread: the release lands in between.
      await store.release([items[3].hash]);
      await packing;
      assert.equal(store.has(items[3].hash), false);
      const chunk = [...store.superChunks.scan()][0].chunk;
      assert.equal(store.superChunks.info(chunk)!.liveBlocks, items.length - 1);
      assert.equal(store.stats().storedBytes, storedRecount(store));
    } finally {
      await packer.close();
      await store.close();
    }
  });
});

describe('volumes with every codec and layout', () => {
  const layouts: [Compression, boolean, number][] = [
    ['none', false, BS],
    ['lz4', false, BS],
    ['lz4', true, BS],
    ['lz4', true, 4096],
    ['none', true, 4096],
    ['zstd:3', false, BS],
    ['zstd:9', true, BS],
    ['zstd:1', true, 4096],
  ];
  for (const [compression, superchunks, blockSize] of layouts) {
    it(`${compression}, super-chunks ${superchunks ? 'on' : 'off'}, ${blockSize / 1024} KiB blocks: files of every shape read back after reopen; fsck clean`, async () => {
      let t = newFs(blockSize, compression, superchunks);
      const files: Record<string, Buffer> = {
        empty: Buffer.alloc(0),
        tiny: Buffer.from('x'),
        header: small[5].data,
        textTail: text.subarray(0, 3 * blockSize + 777),
        random: randomBytes(2 * blockSize + 33),
        holey: Buffer.concat([Buffer.alloc(blockSize * 2), text.subarray(0, 1000)]),
      };
      const inos: Record<string, number> = {};
      for (const [name, data] of Object.entries(files)) inos[name] = await writeFile(t, name, data);
      t = await t.reopen();
      try {
        await assertFiles(t, Object.entries(files).map(([name, data]) => [name, { ino: inos[name], data }]));
        const part = await readThrough(t, inos.textTail, blockSize * 3 + 100, 600);
        assert.ok(Buffer.isBuffer(part) && part.equals(files.textTail.subarray(blockSize * 3 + 100, blockSize * 3 + 700)));
        const tailHash = t.volume.meta.listBlocks(inos.textTail).at(-1)!.hash;
        const packed = compression !== 'none' && superchunks;
        assert.equal(kindOf(t, tailHash) === LOCATOR_KIND, packed, 'the short tail is in a super-chunk exactly when both are on');
        assert.equal(t.volume.store.stats().storedBytes, storedRecount(t.volume.store));
      } finally {
        await t.close();
      }
      await assertClean(t.path);
    });
  }

  it('settings changed between writes (none -> lz4 + super-chunks -> super-chunks off): every file reads back', async () => {
    let t = newFs(BS, 'none', false);
    const first = await writeSmall(t, small.slice(0, 60), 'a-');
    await t.close();
    let v = Volume.open(t.path);
    v.changeSettings({ compression: 'lz4', superchunks: true });
    await v.close();
    t = openFs(t.path);
    const second = await writeSmall(t, small.slice(60, 120), 'b-');
    await t.close();
    v = Volume.open(t.path);
    assert.equal(v.settings.superchunks, true);
    v.changeSettings({ superchunks: false });
    await v.close();
    t = openFs(t.path);
    const third = await writeSmall(t, small.slice(120, 160), 'c-');
    await t.close();

    t = openFs(t.path);
    try {
      const kinds = (m: Map<string, { ino: number }>) => new Set([...m.values()].map(({ ino }) => kindOf(t, t.volume.meta.listBlocks(ino)[0].hash)));
      assert.deepEqual(kinds(first), new Set([Codec.Raw]), 'written with none: raw');
      assert.ok(kinds(second).has(LOCATOR_KIND), 'written with super-chunks: packed');
      assert.ok(!kinds(third).has(LOCATOR_KIND), 'written after turning them off: loose');
      for (const m of [first, second, third]) await assertFiles(t, m);
    } finally {
      await t.close();
    }
    await assertClean(t.path);
  });

  it('a partial write and a truncate inside a packed block wait for the chunk, then apply in order', async () => {
    let t = newFs(BS, 'lz4', true);
    const ino = await writeFile(t, 'f', text.subarray(0, 50_000));
    await writeFile(t, 'g', text.subarray(60_000, 90_000)); // a lone short block is not worth a chunk
    const expect = Buffer.from(text.subarray(0, 50_000));
    await t.close();
    // No chunk cache: every access to the chunk decompresses it off the JS thread.
    const v = Volume.open(t.path);
    v.changeSettings({ chunkCacheBytes: 0 });
    await v.close();
    t = openFs(t.path);
    try {
      assert.equal(kindOf(t, t.volume.meta.listBlocks(ino)[0].hash), LOCATOR_KIND);
      const o = await t.fs.open(ino, O_RDWR, root);
      // Two writes into the block, issued together: the second queues behind the first.
      const w1 = t.fs.write(ino, o.fh, Buffer.from('FIRST'), 1000, root);
      const w2 = t.fs.write(ino, o.fh, Buffer.from('SECOND'), 1002, root);
      assert.ok(w1 instanceof Promise, 'the first write waits for the super-chunk');
      assert.equal(await w1, 5);
      assert.equal(await w2, 6);
      expect.write('FIRST', 1000, 'latin1');
      expect.write('SECOND', 1002, 'latin1');
      await t.fs.setattr(ino, { size: 30_000 }, o.fh, root);
      await t.fs.fsync(ino, o.fh);
      t.fs.release(ino, o.fh, 0);
      const got = await readThrough(t, ino);
      assert.ok(Buffer.isBuffer(got) && got.equals(expect.subarray(0, 30_000)));
    } finally {
      await t.close();
    }
    t = openFs(t.path);
    try {
      const got = await readThrough(t, ino, 0, 100_000);
      assert.ok(Buffer.isBuffer(got) && got.equals(expect.subarray(0, 30_000)), 'the same after reopen');
    } finally {
      await t.close();
    }
  });
});

describe('fsck and gc with super-chunks', () => {
  it('a corrupted super-chunk: fsck names every file with a block in it; repair leaves EIO there and a clean volume', async () => {
    let t = newFs(BS, 'lz4', true);
    const files = await writeSmall(t, small.slice(0, 50));
    const big = await writeFile(t, 'big', text.subarray(0, 2 * BS));
    await t.close();

    const v = Volume.open(t.path);
    const chunk = [...v.store.superChunks.scan()][0];
    const inside = new Set<string>();
    for (const [name, { ino }] of files) {
      const loc = v.store.superChunks.locatorOf(v.meta.listBlocks(ino)[0].hash);
      if (loc?.chunk === chunk.chunk) inside.add(name);
    }
    assert.ok(inside.size >= 10, `${inside.size} files in the first chunk`);
    const value = chunk.value;
    value.fill(0x5a, BLOCK_HEADER_SIZE + 40, BLOCK_HEADER_SIZE + 400);
    const repair = new StoreRepair(v.store);
    await repair.run((txn) => repair.putChunk(txn, chunk.chunk, value));
    await v.close();

    const report = await runFsck(t.path, {});
    assert.equal(report.exitCode, 4);
    const f = report.findings.find((x) => x.kind === 'corrupt-superchunk');
    assert.ok(f, `findings: ${report.findings.map((x) => `${x.kind}: ${x.examples.join('; ')}`).join(' | ')}`);
    assert.equal(f.count, 1);
    for (const name of inside) assert.ok(f.examples[0].includes(`/${name} bytes 0-`), `${name} is named: ${f.examples[0].slice(0, 300)}`);
    assert.match(f.examples[0], new RegExp(`super-chunk ${chunk.chunk} `));
    assert.ok(!f.examples[0].includes('/big '), 'a file outside the chunk is not named');

    const repaired = await runFsck(t.path, { repair: true });
    assert.equal(repaired.exitCode, 1);
    const again = await runFsck(t.path, {});
    assert.deepEqual(again.findings.filter((x) => x.severity !== 'notice').map((x) => x.kind), []);
    assert.equal(again.exitCode, 0);

    t = openFs(t.path);
    try {
      for (const [name, { ino, data }] of files) {
        const got = await readThrough(t, ino);
        if (inside.has(name)) assert.equal(got, EIO, `${name} reads as EIO`);
        else assert.ok(Buffer.isBuffer(got) && got.equals(data), `${name} is untouched`);
      }
      const got = await readThrough(t, big);
      assert.ok(Buffer.isBuffer(got) && got.equals(text.subarray(0, 2 * BS)));
    } finally {
      await t.close();
    }
  });

  it('a missing super-chunk and wrong live counts are found and repaired', async () => {
    const t = newFs(BS, 'lz4', true);
    const files = await writeSmall(t, small.slice(0, 200));
    await t.close();
    const v = Volume.open(t.path);
    const chunks = [...v.store.superChunks.scanInfo()];
    assert.ok(chunks.length >= 2, `${chunks.length} chunks`);
    const repair = new StoreRepair(v.store);
    await repair.run((txn) => {
      repair.setChunkInfo(txn, chunks[0].chunk, { ...chunks[0].info!, liveBlocks: 1 });
      repair.deleteChunk(txn, chunks[1].chunk);
    });
    await v.close();
    const report = await runFsck(t.path, {});
    const kinds = report.findings.map((x) => x.kind);
    assert.ok(kinds.includes('chunk-bookkeeping'), kinds.join(','));
    const missing = report.findings.find((x) => x.kind === 'corrupt-superchunk');
    assert.ok(missing && /is missing/.test(missing.examples[0]), missing?.examples[0]);
    assert.equal((await runFsck(t.path, { repair: true })).exitCode, 1);
    const clean = await runFsck(t.path, {});
    assert.equal(clean.exitCode, 0, clean.findings.map((x) => x.kind).join(','));
    assert.ok(files.size > 0);
  });

  it('gc repacks chunks that deletions left mostly dead: stored bytes drop, survivors byte-identical, fsck clean', async () => {
    let t = newFs(BS, 'lz4', true);
    const files = await writeSmall(t);
    await t.fs.packer.flush();
    const before = t.volume.store.stats();
    const chunksBefore = [...t.volume.store.superChunks.scan()].length;
    assert.ok(chunksBefore >= 3, `${chunksBefore} chunks`);
    // Delete 3 of every 4 files: every chunk keeps about a quarter live.
    const names = [...files.keys()];
    const kept = new Map<string, { ino: number; data: Buffer }>();
    for (const [i, name] of names.entries()) {
      if (i % 4 === 0) kept.set(name, files.get(name)!);
      else await t.fs.unlink(ROOT_INO, b(name));
    }
    await t.close();
    // The test holds the kernel's lookups: the unlinked inodes are freed as after a remount.
    t = openFs(t.path);
    assert.ok((await t.fs.recoverUnlinked()) >= names.length / 2);
    await t.close();
    const sparse = Volume.open(t.path);
    const afterDelete = sparse.store.stats();
    await sparse.close();
    assert.ok(afterDelete.storedBytes > 0.6 * before.storedBytes, 'deleting leaves the chunks in place');

    const dry = await collectGarbage(t.path, { dryRun: true });
    assert.ok(dry.repack.sparseChunks >= chunksBefore - 1, `dry run sees ${dry.repack.sparseChunks} sparse chunks`);
    const result = await collectGarbage(t.path, {});
    assert.ok(result.repack.sparseChunks >= chunksBefore - 1);
    assert.ok(result.repack.chunksWritten < result.repack.sparseChunks, `${result.repack.chunksWritten} chunks written for ${result.repack.sparseChunks}`);
    assert.ok(result.repack.bytesAfter < 0.5 * result.repack.bytesBefore, `${result.repack.bytesAfter} of ${result.repack.bytesBefore}`);

    const v = Volume.open(t.path);
    const after = v.store.stats();
    assert.equal(after.storedBytes, storedRecount(v.store));
    assert.ok(after.storedBytes < 0.45 * afterDelete.storedBytes, `stored ${after.storedBytes} after repack, ${afterDelete.storedBytes} before`);
    for (const { info } of v.store.superChunks.scanInfo()) assert.ok(info!.liveBytes / info!.totalBytes >= 0.5);
    await v.close();

    t = openFs(t.path);
    try {
      await assertFiles(t, kept);
    } finally {
      await t.close();
    }
    await assertClean(t.path);
  });
});

describe('super-chunks through a real mount', () => {
  it('cp -a of small files packs them; stats shows the chunks and the cache; gc --repack-below through the daemon keeps files identical', () => {
    const m = mountFresh(['--superchunks', 'on']);
    const src = '/usr/include/linux';
    sh(`cp -a ${src} ${m.p('linux')}`);
    sh(`diff -r ${src} ${m.p('linux')}`);
    // The daemon packs after a second of quiet; umount packs whatever is left.
    m.umount();
    const s = JSON.parse(pogfsOk(['stats', m.volume, '--json'])) as {
      superChunks: { enabled: boolean; chunks: number; queuedBlocks: number };
      chunkCache: { capacityBytes: number };
      uniqueBytes: number;
      storedBytes: number;
    };
    assert.equal(s.superChunks.enabled, true);
    assert.ok(s.superChunks.chunks > 0);
    assert.equal(s.superChunks.queuedBlocks, 0, 'nothing left unpacked after umount');
    assert.equal(s.chunkCache.capacityBytes, 64 << 20);
    assert.ok(s.storedBytes < 0.5 * s.uniqueBytes, `stored ${s.storedBytes} of ${s.uniqueBytes}`);
    m.mount();
    sh(`diff -r ${src} ${m.p('linux')}`);
    const text = pogfsOk(['stats', m.mnt]);
    assert.match(text, /chunk cache\s+64\.0 MiB; [\d.]+ \w+ in use \(\d+ chunks\), \d+ hits, \d+ misses/);
    // Delete most of it, then gc through the daemon with a high threshold.
    const list = join(m.volume, '..', 'headers.txt');
    sh(`cd ${src} && find . -type f -name '*.h' | sort > ${list}`);
    sh(`cd ${m.p('linux')} && awk 'NR % 3 != 0' ${list} | xargs rm -f`);
    const gc = JSON.parse(pogfsOk(['gc', m.volume, '--repack-below', '0.9', '--json'])) as { repack: { sparseChunks: number; chunksWritten: number } };
    assert.ok(gc.repack.sparseChunks > 0, JSON.stringify(gc.repack));
    sh(`cd ${src} && awk 'NR % 3 == 0' ${list} | while read f; do cmp "$f" ${m.p('linux')}/"$f" || exit 1; done`);
    assert.equal(sh(`cd ${m.p('linux')} && find . -type f -name '*.h' | wc -l`).trim(), sh(`awk 'NR % 3 == 0' ${list} | wc -l`).trim());
    m.umount();
    const fsck = pogfsOk(['fsck', m.volume]);
    assert.match(fsck, /clean: no problems found/);
  });
});
