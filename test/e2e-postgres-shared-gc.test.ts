/**
 * `pogfs gc` on a PostgreSQL volume two mounts write at once over a shared `local:`
 * remote (A: the volume directory, B: joined from the URL with a cache directory of its
 * own), through the real kernel mounts. gc decides in the shared pack index, with no
 * grace period here (POGFS_GC_GRACE_SECONDS=0, which only tests set): every pack is fair
 * game, also one whose blocks wait for their rows' commit, which is the race at its
 * widest. A block gc removed that a mount holds locally and writes again is uploaded
 * again before its row is committed; both mounts write, overwrite and delete files while
 * gc runs several times, and afterwards every file reads back identically on A, on B and
 * on a third mount with an empty cache (every block from the remote), and no pack that
 * the index forgot is left on the remote. A mostly dead pack is rewritten; gc of the
 * unmounted volume (or cache directory) works too.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { CLI, pogfs, pogfsOk } from './support/mount';
import { queryPostgres, startPostgres } from './support/postgres';
import { sharedVolumePlaces } from './support/shared-volume';

// Inherited by every daemon and gc this file starts.
process.env.POGFS_SESSION_EXPIRY_SECONDS = '2';
process.env.POGFS_GC_GRACE_SECONDS = '0';

const server = startPostgres();
const BLOCK = 128 * 1024;


interface SharedGcJson {
  remote: { sharedIndex: boolean; packs: number; deadLocations: number; deletedPacks: number; deletedBytes: number; repackedPacks: number; youngPacks: number; failedDeletes: number };
}

/** `pogfs gc TARGET --json` without blocking this process (writers run meanwhile). */
function gcAsync(target: string): Promise<SharedGcJson> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'gc', target, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as SharedGcJson) : reject(new Error(`pogfs gc ${target}: exit ${code}: ${err}${out}`))));
  });
}

function gcJson(target: string): SharedGcJson {
  return JSON.parse(pogfsOk(['gc', target, '--json'])) as SharedGcJson;
}

/** The packs on the remote directory (packs/PREFIX/NAME). */
function remotePacks(remote: string): string[] {
  const dir = join(remote, 'packs');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { recursive: true })
    .map((f) => String(f).split('/').pop()!)
    .filter((f) => /^p[0-9a-f]{40}$/.test(f))
    .sort();
}

async function indexedPacks(url: string): Promise<string[]> {
  return (await queryPostgres(url, 'SELECT name FROM packs ORDER BY name')).map((r) => r.name as string);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits (at most 10 s) until no inode is left without a name: a mount that closed a file
 * holds it for a second after (session_opens), so an unlink elsewhere frees it only then.
 */
async function namelessFreed(url: string): Promise<void> {
  const start = Date.now();
  for (;;) {
    const n = (await queryPostgres(url, 'SELECT count(*)::int AS n FROM inodes WHERE nlink = 0'))[0].n as number;
    if (n === 0) return;
    assert.ok(Date.now() - start < 10_000, `${n} nameless inodes still held after 10 s`);
    await sleep(100);
  }
}

describe('gc of a PostgreSQL volume two mounts write at once', () => {
  const url = server.createDatabase();
  const { volume, remote, cacheB, cacheC, ma, mb, mc } = sharedVolumePlaces('pogfs-shared-gc-');

  it('mounts A and B', () => {
    pogfsOk(['init', volume, '--meta', url, '--remote', `local:${remote}`]);
    pogfsOk(['mount', volume, ma]);
    pogfsOk(['mount', url, mb, '--cache-dir', cacheB]);
  });

  it('gc deletes a dead pack; B writes the same bytes again from its own store: they are uploaded again before the row, and read on a fresh mount', async () => {
    const x = randomBytes(3 * BLOCK + 77);
    fs.writeFileSync(join(ma, 'x.bin'), x);
    // B fetches x's blocks into its store (held, not counted).
    assert.deepEqual(fs.readFileSync(join(mb, 'x.bin')), x);
    const packsBefore = remotePacks(remote);
    assert.ok(packsBefore.length >= 1);
    fs.rmSync(join(ma, 'x.bin'));
    // B read it last: freed once B's hold of it lapses.
    await namelessFreed(url);

    const dry = JSON.parse(pogfsOk(['gc', volume, '--dry-run', '--json'])) as SharedGcJson;
    assert.equal(dry.remote.sharedIndex, true);
    assert.ok(dry.remote.deletedPacks >= 1, JSON.stringify(dry));
    assert.deepEqual(remotePacks(remote), packsBefore, 'a dry run deletes nothing');

    const done = gcJson(volume);
    assert.ok(done.remote.deletedPacks >= 1, JSON.stringify(done));
    assert.ok(done.remote.deadLocations >= 4, JSON.stringify(done));
    assert.equal(done.remote.failedDeletes, 0);
    assert.deepEqual(remotePacks(remote), await indexedPacks(url), 'the deleted packs are gone from the remote');
    assert.equal((await queryPostgres(url, 'SELECT count(*)::int AS n FROM pack_blocks'))[0].n, 0);

    // B's store still holds x's blocks, clean: its commit is refused, they go up again, it commits.
    fs.writeFileSync(join(mb, 'x-again.bin'), x);
    assert.match(fs.readFileSync(join(cacheB, 'pogfs.log'), 'utf8'), /lost their pack to a gc: uploading them again/);
    const dangling = await queryPostgres(url, 'SELECT count(*)::int AS n FROM blocks b WHERE NOT EXISTS (SELECT 1 FROM pack_blocks p WHERE p.hash = b.hash)');
    assert.equal(dangling[0].n, 0, 'every row names a block some pack holds');
    assert.deepEqual(fs.readFileSync(join(ma, 'x-again.bin')), x);
    pogfsOk(['mount', url, mc, '--cache-dir', cacheC]);
    try {
      assert.deepEqual(fs.readFileSync(join(mc, 'x-again.bin')), x);
    } finally {
      pogfsOk(['umount', mc]);
    }
  });

  it('a mostly dead pack is repacked: its live block moves to a new pack, the old one is deleted, a fresh mount reads the file', async () => {
    const r = randomBytes(8 * BLOCK);
    fs.writeFileSync(join(ma, 'r.bin'), r);
    const packOfFirst = async (): Promise<string> =>
      (
        await queryPostgres(
          url,
          "SELECT p.name FROM dentries d JOIN blocks b ON b.ino = d.ino AND b.idx = 0 JOIN pack_blocks pb ON pb.hash = b.hash JOIN packs p ON p.id = pb.pack WHERE d.name = 'r.bin'::bytea",
        )
      )[0].name as string;
    const before = await packOfFirst();
    fs.truncateSync(join(ma, 'r.bin'), BLOCK);
    const out = pogfsOk(['gc', volume, '--repack-below', '0.5']);
    assert.match(out, /in the pack index the machines share/);
    assert.match(out, /[1-9]\d* mostly dead packs repacked/);
    assert.match(out, /packs published within the grace period \(0 s\) left alone/);
    const after = await packOfFirst();
    assert.notEqual(after, before);
    assert.ok(!remotePacks(remote).includes(before), 'the old pack is gone from the remote');
    assert.deepEqual(remotePacks(remote), await indexedPacks(url));
    fs.rmSync(cacheC, { recursive: true, force: true });
    pogfsOk(['mount', url, mc, '--cache-dir', cacheC]);
    try {
      assert.deepEqual(fs.readFileSync(join(mc, 'r.bin')), r.subarray(0, BLOCK));
    } finally {
      pogfsOk(['umount', mc]);
    }
  });

  it('gc run several times while both write, overwrite and delete loses nothing; every file reads back on A, B and a mount with an empty cache', async () => {
    // Contents both mounts draw from, so blocks are shared across machines (deduplicated).
    const pool = [randomBytes(100), randomBytes(BLOCK), randomBytes(2 * BLOCK + 5), randomBytes(3 * BLOCK), randomBytes(5000), randomBytes(BLOCK + 1)];
    const expected = new Map<string, Buffer | undefined>();
    const writer = async (mnt: string, prefix: string, seed: number): Promise<void> => {
      let r = seed;
      const next = (n: number): number => {
        r = (r * 1103515245 + 12345) % 2147483648;
        return r % n;
      };
      for (let i = 0; i < 120; i++) {
        const name = `${prefix}-${next(8)}`;
        const path = join(mnt, 'work', name);
        if (next(3) === 0) {
          // Reads a file of the other mount: its blocks land in this store, held but not counted, and
          // writing those bytes here later commits rows naming blocks this mount did not upload.
          await fs.promises.readFile(join(mnt, 'work', `${prefix === 'a' ? 'b' : 'a'}-${next(8)}`)).catch(() => undefined);
        }
        if (next(5) === 0) {
          fs.rmSync(path, { force: true });
          expected.set(name, undefined);
        } else {
          // Fresh bytes now and then, else one of the pool's (maybe the other mount's).
          const data = next(4) === 0 ? randomBytes(next(3 * BLOCK) + 1) : pool[next(pool.length)];
          await fs.promises.writeFile(path, data);
          expected.set(name, data);
        }
        await sleep(next(30));
      }
    };
    fs.mkdirSync(join(ma, 'work'));
    const runs: SharedGcJson[] = [];
    let writing = true;
    const gcs = (async () => {
      for (let i = 0; writing || i < 3; i++) {
        runs.push(await gcAsync(i % 3 === 2 ? cacheB : volume));
        await sleep(100);
      }
    })();
    await Promise.all([writer(ma, 'a', 1), writer(mb, 'b', 2)]).finally(() => (writing = false));
    await gcs;
    assert.ok(runs.length >= 3);
    assert.ok(runs.reduce((n, r) => n + r.remote.deletedPacks, 0) > 0, 'gc deleted packs while both wrote');

    // Once more with nothing written: every pack left holds something live, and the remote holds just those.
    const last = gcJson(volume);
    assert.equal(last.remote.failedDeletes, 0);
    assert.deepEqual(remotePacks(remote), await indexedPacks(url));
    const deadPacks = await queryPostgres(
      url,
      'SELECT count(*)::int AS n FROM packs p WHERE NOT EXISTS (SELECT 1 FROM pack_blocks pb JOIN blocks b ON b.hash = pb.hash WHERE pb.pack = p.id)',
    );
    assert.equal(deadPacks[0].n, 0, 'no pack without a live block is left');
    const dangling = await queryPostgres(url, 'SELECT count(*)::int AS n FROM blocks b WHERE NOT EXISTS (SELECT 1 FROM pack_blocks p WHERE p.hash = b.hash)');
    assert.equal(dangling[0].n, 0, 'every row names a block some pack holds');

    fs.rmSync(cacheC, { recursive: true, force: true });
    pogfsOk(['mount', url, mc, '--cache-dir', cacheC]);
    try {
      for (const [name, data] of expected) {
        for (const m of [ma, mb, mc]) {
          const path = join(m, 'work', name);
          if (data === undefined) assert.ok(!fs.existsSync(path), `${path} was deleted`);
          else assert.ok(fs.readFileSync(path).equals(data), `${path} reads back what was last written`);
        }
      }
    } finally {
      pogfsOk(['umount', mc]);
    }
  });

  it('gc of the unmounted volume, and of a joined machine\'s unmounted cache directory, works as through a daemon', async () => {
    fs.rmSync(join(ma, 'x-again.bin'));
    pogfsOk(['umount', mb]);
    pogfsOk(['umount', ma]);
    const dry = JSON.parse(pogfsOk(['gc', cacheB, '--dry-run', '--json'])) as SharedGcJson;
    assert.ok(dry.remote.deletedPacks >= 1, JSON.stringify(dry));
    const out = pogfsOk(['gc', volume]);
    assert.match(out, /in the pack index the machines share/);
    assert.doesNotMatch(out, /mounted at/);
    assert.match(out, /[1-9]\d* empty packs deleted/);
    assert.deepEqual(remotePacks(remote), await indexedPacks(url));
    const r = pogfs(['gc', volume, '--compact']);
    assert.equal(r.status, 2, r.stderr);
    fs.rmSync(cacheC, { recursive: true, force: true });
    pogfsOk(['mount', url, mc, '--cache-dir', cacheC]);
    try {
      assert.deepEqual(fs.readFileSync(join(mc, 'r.bin')).length, BLOCK);
      assert.ok(!fs.existsSync(join(mc, 'x-again.bin')));
      const dangling = await queryPostgres(url, 'SELECT count(*)::int AS n FROM blocks b WHERE NOT EXISTS (SELECT 1 FROM pack_blocks p WHERE p.hash = b.hash)');
      assert.equal(dangling[0].n, 0);
    } finally {
      pogfsOk(['umount', mc]);
    }
  });
});
