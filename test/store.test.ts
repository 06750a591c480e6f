import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CacheLedger } from '../src/cache/cache-ledger';
import { BlockStore } from '../src/store/block-store';
import { decodeMembersAsync, decodeVerified, verifiedMember } from '../src/store/block-verify';
import { BLOCK_HEADER_SIZE, Codec, CorruptBlockError, decodeBlock, encodeBlock } from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
import { StoreRepair } from '../src/store/repair';
import { WriteTxn } from '../src/store/store-env';
import { tempDir } from './support/tmp';

describe('BlockStore', () => {
  it('loads the native BLAKE3 binding and hashes to the reference digest', () => {
    // BLAKE3("abc") from the reference implementation's test vectors
    assert.equal(hashBlock(Buffer.from('abc')).toString('hex'), '6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85');
  });

  it('stores a block once and counts references', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'));
    const data = randomBytes(131072);
    const hash = hashBlock(data);
    await store.acquire([{ hash, data }]);
    await store.acquire([{ hash, data }, { hash, data }]);
    assert.equal(store.refCount(hash), 3);
    assert.deepEqual(store.stats(), { blocks: 1, uniqueBytes: 131072, storedBytes: 131072 + BLOCK_HEADER_SIZE, references: 3 });
    assert.ok(store.get(hash)?.equals(data));
    await store.release([hash, hash]);
    assert.equal(store.refCount(hash), 1);
    assert.ok(store.has(hash));
    await store.release([hash]);
    assert.equal(store.refCount(hash), 0);
    assert.equal(store.has(hash), false);
    assert.equal(store.get(hash), undefined);
    assert.deepEqual(store.stats(), { blocks: 0, uniqueBytes: 0, storedBytes: 0, references: 0 });
    await store.close();
  });

  it('keeps blocks and counts across reopen', async () => {
    const dir = join(tempDir(), 'blocks');
    const a = randomBytes(5000);
    const b = randomBytes(70000);
    let store = BlockStore.open(dir);
    await store.acquire([
      { hash: hashBlock(a), data: a },
      { hash: hashBlock(b), data: b },
      { hash: hashBlock(b), data: b },
    ]);
    await store.close();
    store = BlockStore.open(dir);
    assert.equal(store.refCount(hashBlock(a)), 1);
    assert.equal(store.refCount(hashBlock(b)), 2);
    assert.ok(store.get(hashBlock(b))?.equals(b));
    assert.equal(store.stats().blocks, 2);
    await store.close();
  });

  it('copies ranges out and reads zeros past a short block', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'));
    const data = Buffer.from('hello block store');
    const hash = hashBlock(data);
    await store.acquire([{ hash, data }]);
    const out = Buffer.alloc(10, 0xee);
    assert.equal(store.read(hash, 6, 10, out, 0), 'ok');
    assert.equal(out.subarray(0, 10).toString('latin1'), 'block stor');
    const tail = Buffer.alloc(8, 0xee);
    assert.equal(store.read(hash, 12, 8, tail, 0), 'ok');
    assert.deepEqual([...tail], [...Buffer.from('store'), 0, 0, 0]);
    assert.equal(store.read(hashBlock(Buffer.from('absent')), 0, 4, out, 0), 'missing');
    await store.close();
  });

  it('refuses to hand out bytes that do not match their hash', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'));
    const data = randomBytes(4096);
    const wrongKey = hashBlock(Buffer.from('something else'));
    await store.acquire([{ hash: wrongKey, data }]);
    const out = Buffer.alloc(16, 0xee);
    assert.equal(store.read(wrongKey, 0, 16, out, 0), 'corrupt');
    assert.ok(out.equals(Buffer.alloc(16, 0xee)), 'corrupt bytes were copied out');
    await store.close();
  });

  it('release of an unknown block is a no-op, not a negative count', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'));
    await store.release([hashBlock(Buffer.from('never stored'))]);
    assert.equal(store.stats().references, 0);
    await store.close();
  });
});

describe('block codec', () => {
  it('round-trips and rejects damaged headers', () => {
    const data = randomBytes(1000);
    const value = encodeBlock(data);
    assert.equal(value.length, data.length + BLOCK_HEADER_SIZE);
    assert.ok(decodeBlock(value).equals(data));
    const badVersion = Buffer.from(value);
    badVersion[0] = 99;
    assert.throws(() => decodeBlock(badVersion), CorruptBlockError);
    const badCodec = Buffer.from(value);
    badCodec[1] = 42;
    assert.throws(() => decodeBlock(badCodec), /unknown codec 42/);
    assert.throws(() => decodeBlock(value.subarray(0, value.length - 1)), /disagrees/);
  });
});

describe('verification of bytes against their key', () => {
  const text = Buffer.from('a block of text that compresses well. '.repeat(400));

  it('decodes a loose value and rejects one whose bytes are not the block its key names', () => {
    const hash = hashBlock(text);
    for (const codec of [Codec.Raw, Codec.Lz4, Codec.Zstd]) {
      const value = encodeBlock(text, codec);
      assert.equal(value[1], codec);
      assert.ok(decodeVerified(value, hash).equals(text));
      assert.throws(() => decodeVerified(value, hashBlock(Buffer.from('other'))), /do not match their BLAKE3 key/);
      const damaged = Buffer.from(value);
      damaged[damaged.length - 3] ^= 0xff;
      assert.throws(() => decodeVerified(damaged, hash), CorruptBlockError);
    }
  });

  it('checks each member of a value holding several blocks, and none when it does not decode', async () => {
    const a = randomBytes(3000);
    const b = Buffer.from('short text, short text, short text. '.repeat(50));
    const value = encodeBlock(Buffer.concat([a, b]), Codec.Lz4, { probeBytes: 0 });
    const members = [
      { hash: hashBlock(a), offset: 0, length: a.length },
      { hash: hashBlock(b), offset: a.length, length: b.length },
      { hash: hashBlock(b), offset: a.length - 1, length: b.length }, // off by one: wrong bytes
      { hash: hashBlock(b), offset: a.length + 1, length: b.length }, // runs past the end
    ];
    const got = await decodeMembersAsync(value, members);
    assert.ok(got[0]?.equals(a));
    assert.ok(got[1]?.equals(b));
    assert.equal(got[2], undefined);
    assert.equal(got[3], undefined);
    const cut = value.subarray(0, value.length - 10);
    assert.deepEqual(await decodeMembersAsync(cut, members), [undefined, undefined, undefined, undefined]);
    const whole = Buffer.concat([a, b]);
    assert.equal(verifiedMember(whole, hashBlock(b), a.length, b.length + 1), undefined);
  });
});

describe('store parts', () => {
  it('encodes ahead only what the store would compress alone', async () => {
    const text = Buffer.from('compressible text for the store. '.repeat(4000)).subarray(0, 128 * 1024);
    const raw = BlockStore.open(join(tempDir(), 'blocks'));
    assert.equal(raw.encodeAhead(hashBlock(text), text), undefined, 'no codec, nothing to encode');
    await raw.close();

    const store = BlockStore.open(join(tempDir(), 'blocks'), { codec: Codec.Lz4, packBelow: 128 * 1024 });
    try {
      const short = text.subarray(0, 1000);
      assert.equal(store.encodeAhead(hashBlock(short), short), undefined, 'a short block waits for a super-chunk');
      const hash = hashBlock(text);
      const value = await store.encodeAhead(hash, text);
      assert.ok(value);
      assert.equal(value[1], Codec.Lz4);
      await store.acquire([{ hash, data: text, value }]);
      assert.ok(store.rawValue(hash)!.equals(value), 'the value encoded ahead is the one stored');
      assert.equal(store.encodeAhead(hash, text), undefined, 'a block held already is not encoded again');
    } finally {
      await store.close();
    }
  });

  it('runs repair primitives only inside the transaction that issued them', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'));
    try {
      const data = randomBytes(1000);
      const hash = hashBlock(data);
      await store.acquire([{ hash, data }]);
      const repair = new StoreRepair(store);
      let kept: WriteTxn | undefined;
      await repair.run((txn) => {
        kept = txn;
        repair.setRefCount(txn, hash, 5);
      });
      assert.equal(store.refCount(hash), 5);
      assert.throws(() => repair.setRefCount(kept!, hash, 1), /after its transaction ended/);
      assert.throws(() => repair.deleteValue(kept!, hash), /after its transaction ended/);
      assert.equal(store.refCount(hash), 5);
      assert.ok(store.has(hash));
      assert.throws(() => new WriteTxn(Symbol('forged') as never), /only issued by the store/);
      // @ts-expect-error a primitive cannot be called without the transaction's token
      assert.throws(() => repair.setRefCount(hash, 1));
    } finally {
      await store.close();
    }
  });

  it('keeps the cache ledger in the store\'s transactions: dirty with the block, or neither', async () => {
    const store = BlockStore.open(join(tempDir(), 'blocks'));
    try {
      const ledger = new CacheLedger(store, true);
      const a = randomBytes(5000);
      const b = randomBytes(7000);
      await store.acquire([{ hash: hashBlock(a), data: a }, { hash: hashBlock(b), data: b }]);
      assert.deepEqual(ledger.dirtyStats(), { blocks: 2, bytes: 12000 });
      assert.deepEqual(ledger.dirtyBlocks(10).map((d) => d.hash.toString('hex')), [hashBlock(a), hashBlock(b)].map((h) => h.toString('hex')));
      await store.release([hashBlock(a)]);
      assert.deepEqual(ledger.dirtyStats(), { blocks: 1, bytes: 7000 }, 'a block deleted for good loses its mark');
      await ledger.markClean([hashBlock(b)]);
      assert.equal(ledger.isDirty(hashBlock(b)), false);
      assert.equal(await ledger.evict([{ hash: hashBlock(b) }]), 7000 + BLOCK_HEADER_SIZE);
      assert.equal(store.has(hashBlock(b)), false);
      assert.equal(store.refCount(hashBlock(b)), 1, 'an evicted block stays referenced');
    } finally {
      await store.close();
    }
    // The ledger is told inside the block's own transaction: a ledger that fails takes the
    // block's write down with it (nothing stored, nothing counted). Shown with acquireSync:
    // lmdb-js's asynchronous transactions do not roll back what ran before a throw.
    const other = BlockStore.open(join(tempDir(), 'blocks'));
    try {
      other.attachLedger({
        stored: () => {
          throw new Error('ledger write failed');
        },
        removed: () => undefined,
      });
      const c = randomBytes(3000);
      assert.throws(() => other.acquireSync([{ hash: hashBlock(c), data: c }]), /ledger write failed/);
      assert.equal(other.has(hashBlock(c)), false);
      assert.equal(other.refCount(hashBlock(c)), 0);
      assert.deepEqual(other.stats(), { blocks: 0, uniqueBytes: 0, storedBytes: 0, references: 0 });
    } finally {
      await other.close();
    }
  });
});
