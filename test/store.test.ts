import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { BlockStore } from '../src/store/block-store';
import { BLOCK_HEADER_SIZE, CorruptBlockError, decodeBlock, encodeBlock } from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
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
