import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { open } from 'lmdb';
import { collectGarbage } from '../src/gc/block-gc';
import { runFsck } from '../src/cli/fsck-command';
import { encodeBlock } from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
import { ROOT_INO } from '../src/vfs/filesystem';
import { b, openFs, root } from './support/fs';
import { pogfs } from './support/mount';
import { tempDir } from './support/tmp';

const BS = 4096;
const O_RDWR = 2;

type Files = Map<string, Buffer>;

async function writeFiles(path: string, files: Files): Promise<Map<string, number>> {
  const t = openFs(path, BS);
  const inos = new Map<string, number>();
  try {
    for (const [name, data] of files) {
      const f = await t.fs.create(ROOT_INO, b(name), 0o644, O_RDWR, root);
      for (let at = 0; at < data.length; at += 1 << 20) await t.fs.write(f.attr.ino, f.fh, data.subarray(at, at + (1 << 20)), at, root);
      await t.fs.release(f.attr.ino, f.fh, 0);
      inos.set(name, f.attr.ino);
    }
  } finally {
    await t.close();
  }
  return inos;
}

async function unlinkFiles(path: string, names: string[]): Promise<void> {
  const t = openFs(path);
  try {
    for (const n of names) await t.fs.unlink(ROOT_INO, b(n));
  } finally {
    await t.close();
  }
}

/** Reads every listed file through PogFs and compares it byte for byte. */
async function assertReadBack(path: string, files: Files): Promise<void> {
  const t = openFs(path);
  try {
    for (const [name, data] of files) {
      const e = await t.fs.lookup(ROOT_INO, b(name), root);
      const o = await t.fs.open(e.attr.ino, 0, root);
      const got = await t.fs.read(e.attr.ino, o.fh, data.length + 1, 0);
      await t.fs.release(e.attr.ino, o.fh, 0);
      assert.ok(got.equals(data), `${name} reads back byte-identical`);
    }
  } finally {
    await t.close();
  }
}

function lmdb(path: string) {
  const env = open<Buffer, Buffer>({ path: join(path, 'blocks'), maxDbs: 8, encoding: 'binary', keyEncoding: 'binary', compression: false, cache: false });
  const o = { encoding: 'binary' as const, keyEncoding: 'binary' as const, compression: false, cache: false };
  return {
    env,
    blocks: env.openDB<Buffer, Buffer>({ name: 'blocks', ...o }),
    refs: env.openDB<Buffer, Buffer>({ name: 'refs', ...o }),
    info: env.openDB<Buffer, Buffer>({ name: 'info', ...o }),
  };
}

/** The store's keys and reference counts, read directly (hex). */
async function storeContents(path: string): Promise<{ keys: Set<string>; refs: Map<string, number> }> {
  const s = lmdb(path);
  const keys = new Set<string>();
  for (const k of s.blocks.getKeys({})) keys.add(Buffer.from(k).toString('hex'));
  const refs = new Map<string, number>();
  for (const { key, value } of s.refs.getRange({})) refs.set(Buffer.from(key).toString('hex'), Buffer.from(value).readUInt32LE(0));
  await s.env.close();
  return { keys, refs };
}

/** Independent recount from SQLite: block rows per hash (hex). */
function rowCounts(path: string): Map<string, number> {
  const db = new Database(join(path, 'meta.db'), { readonly: true });
  const out = new Map<string, number>();
  for (const r of db.prepare('SELECT hash, count(*) AS n FROM blocks GROUP BY hash').all() as { hash: Buffer; n: number }[]) {
    out.set(r.hash.toString('hex'), r.n);
  }
  db.close();
  return out;
}

/** Adds a stored block nothing references, with a reference and the totals a real leak would have. */
async function addOrphan(path: string, size: number): Promise<string> {
  const s = lmdb(path);
  const data = randomBytes(size);
  const hash = hashBlock(data);
  const value = encodeBlock(data);
  s.blocks.putSync(hash, value);
  s.refs.putSync(hash, Buffer.from([1, 0, 0, 0]));
  const t = Buffer.from(s.info.getBinary(Buffer.from('stats'))!);
  t.writeBigUInt64LE(t.readBigUInt64LE(0) + 1n, 0);
  t.writeBigUInt64LE(t.readBigUInt64LE(8) + BigInt(size), 8);
  t.writeBigUInt64LE(t.readBigUInt64LE(16) + BigInt(value.length), 16);
  t.writeBigUInt64LE(t.readBigUInt64LE(24) + 1n, 24);
  s.info.putSync(Buffer.from('stats'), t);
  await s.env.close();
  return hash.toString('hex');
}

describe('gc', () => {
  it('removes exactly the blocks no row references, keeps shared ones, and every file reads back', async () => {
    const path = join(tempDir(), 'vol');
    const common = randomBytes(BS * 4);
    const files: Files = new Map([
      ['one', Buffer.concat([common, randomBytes(BS * 3)])],
      ['two', Buffer.concat([randomBytes(BS * 2), common])],
      ['three', randomBytes(BS * 6 + 17)],
      ['four', Buffer.concat([common.subarray(0, BS * 2), randomBytes(BS)])],
      ['gone', Buffer.concat([common, randomBytes(BS * 5)])],
    ]);
    const inos = await writeFiles(path, files);
    await unlinkFiles(path, ['gone']); // released properly: nothing left behind
    files.delete('gone');

    // Leaks as a crash leaves them: a file whose rows were deleted without dropping its
    // references (shares blocks with "one" and "two"), raised counts, orphan blocks.
    const db = new Database(join(path, 'meta.db'));
    const leakedIno = inos.get('three')!;
    const threeBlocks = (db.prepare('SELECT hash FROM blocks WHERE ino = ?').all(leakedIno) as { hash: Buffer }[]).map((r) => r.hash);
    db.prepare('DELETE FROM blocks WHERE ino = ?').run(leakedIno);
    db.prepare('DELETE FROM dentries WHERE ino = ?').run(leakedIno);
    db.prepare('DELETE FROM inodes WHERE ino = ?').run(leakedIno);
    const oneRow = db.prepare('SELECT hash FROM blocks WHERE ino = ? AND idx = 0').get(inos.get('one')!) as { hash: Buffer };
    db.close();
    files.delete('three');
    const s = lmdb(path);
    s.refs.putSync(oneRow.hash, Buffer.from([9, 0, 0, 0])); // too high; the block stays
    await s.env.close();
    const orphans = [await addOrphan(path, 1000), await addOrphan(path, BS)];

    const before = await storeContents(path);
    const rows = rowCounts(path);
    const expectRemoved = [...before.keys].filter((k) => !rows.has(k)).sort();
    assert.equal(expectRemoved.length, threeBlocks.length + orphans.length, 'the test set up what it meant to');
    for (const k of orphans) assert.ok(expectRemoved.includes(k));

    // --dry-run: reports the same, removes nothing.
    const dataFile = join(path, 'blocks', 'data.mdb');
    const image = readFileSync(dataFile);
    const dry = await collectGarbage(path, { dryRun: true });
    assert.equal(dry.removedBlocks, expectRemoved.length);
    assert.ok(readFileSync(dataFile).equals(image), '--dry-run writes nothing');
    assert.deepEqual([...(await storeContents(path)).keys].sort(), [...before.keys].sort());

    const result = await collectGarbage(path);
    assert.equal(result.removedBlocks, expectRemoved.length);
    assert.equal(result.removedBytes, dry.removedBytes);
    assert.equal(result.removedRawBytes, threeBlocks.length * BS - (BS - 17) + 1000 + BS);
    assert.equal(result.refsCorrected, 1);
    const after = await storeContents(path);
    assert.deepEqual([...after.keys].sort(), [...before.keys].filter((k) => rows.has(k)).sort(), 'exactly the unreferenced blocks went');
    for (const [k, n] of rows) assert.equal(after.refs.get(k), n, 'kept blocks count their rows');
    assert.equal(after.refs.size, rows.size, 'no reference entries for removed blocks');

    await assertReadBack(path, files);
    const check = await runFsck(path, {});
    assert.deepEqual(check.findings, [], 'fsck finds the volume clean after gc');

    // A second gc has nothing to do.
    const again = await collectGarbage(path);
    assert.equal(again.removedBlocks, 0);
    assert.equal(again.refsCorrected, 0);
  });

  it('--compact gives the space of deleted data back, atomically, and the volume stays whole', async () => {
    const path = join(tempDir(), 'vol');
    const files: Files = new Map();
    for (let i = 0; i < 12; i++) files.set(`big${i}`, randomBytes(2 * 1024 * 1024 + i * 1000));
    files.set('small', randomBytes(BS * 3 + 5));
    await writeFiles(path, files);
    const dataFile = join(path, 'blocks', 'data.mdb');
    const full = statSync(dataFile).size;
    const doomed = [...files.keys()].filter((n) => n !== 'small' && n !== 'big0');
    await unlinkFiles(path, doomed);
    for (const n of doomed) files.delete(n);
    assert.ok(statSync(dataFile).size >= full, 'LMDB keeps freed pages in its file');

    const cli = pogfs(['gc', path, '--dry-run', '--compact']);
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /0 unreferenced: would remove 0 B/);
    assert.match(cli.stdout, /MiB free inside/);
    assert.match(cli.stdout, /compaction would shrink the file/);
    assert.ok(statSync(dataFile).size >= full, '--dry-run does not compact');

    const r = pogfs(['gc', path, '--compact', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { compacted: { beforeBytes: number; afterBytes: number }; space: { freeBytes: number } };
    assert.ok(out.space.freeBytes > 18 * 1024 * 1024, `free inside before compaction: ${out.space.freeBytes}`);
    const small = statSync(dataFile).size;
    assert.equal(out.compacted.afterBytes, small);
    assert.ok(small < full / 3, `data.mdb shrank from ${full} to ${small}`);
    assert.ok(!existsSync(join(path, 'blocks.compact')), 'the temporary copy is gone');

    await assertReadBack(path, files);
    const check = await runFsck(path, {});
    assert.deepEqual(check.findings, []);
    // The compacted store takes writes again.
    const more: Files = new Map([['after', randomBytes(BS * 10)]]);
    await writeFiles(path, more);
    await assertReadBack(path, new Map([...files, ...more]));
  });

  it('the CLI reports counts and bytes, and refuses what is not a volume', async () => {
    const path = join(tempDir(), 'vol');
    await writeFiles(path, new Map([['f', randomBytes(BS * 2)]]));
    const orphan = await addOrphan(path, 2000);
    const dry = pogfs(['gc', path, '--dry-run']);
    assert.equal(dry.status, 0, dry.stderr);
    assert.match(dry.stdout, /dry run: nothing changed/);
    assert.match(dry.stdout, /1 unreferenced: would remove .*2008 bytes stored, 2000 bytes of data/);
    assert.ok((await storeContents(path)).keys.has(orphan));
    const real = pogfs(['gc', path]);
    assert.equal(real.status, 0, real.stderr);
    assert.match(real.stdout, /1 unreferenced: removed/);
    assert.ok(!(await storeContents(path)).keys.has(orphan));
    const none = pogfs(['gc', join(tempDir(), 'nothing')]);
    assert.equal(none.status, 2);
    assert.match(none.stderr, /no volume/);
  });
});
