import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { textCorpus } from './support/corpus';
import { isMounted, pogfs, pogfsOk } from './support/mount';
import { mountStatus, sha256, treeDigests, unmountQuietly, waitUploaded } from './support/remote-mount';
import { tempDir } from './support/tmp';

/**
 * A volume whose durable copy is a `local:DIR` remote, end to end through the CLI and the
 * kernel: packs go up behind the writes, the local store stays within its cache size, and
 * a machine with nothing but the remote mounts it and reads every byte back.
 */

const MiB = 1024 * 1024;

/** Every pack file the local remote holds (DIR/packs/xx/NAME). */
function packFiles(remoteDir: string): string[] {
  const root = join(remoteDir, 'packs');
  if (!existsSync(root)) return [];
  return readdirSync(root).flatMap((sub) => readdirSync(join(root, sub)).map((n) => join(root, sub, n)));
}

describe('a volume on a local: remote', () => {
  const mounts: string[] = [];
  const dir = tempDir('pogfs-remote-', () => mounts.forEach(unmountQuietly));
  const remoteDir = join(dir, 'remote');
  const remote = `local:${remoteDir}`;
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  const mnt2 = join(dir, 'mnt2');
  mkdirSync(mnt);
  mkdirSync(mnt2);
  mounts.push(mnt, mnt2);
  let digests = new Map<string, string>();

  it('writes go up in packs behind the mount, and the local store stays within --cache-size', async () => {
    pogfsOk(['init', volume, '--remote', remote, '--cache-size', '24M', '--pack-size', '4M']);
    // The remote now holds the first metadata generation: a second volume cannot claim it.
    const again = pogfs(['init', join(dir, 'other'), '--remote', remote]);
    assert.notEqual(again.status, 0);
    assert.match(again.stderr, /already holds a pogfs volume.*pogfs mount/);

    pogfsOk(['mount', volume, mnt]);
    mkdirSync(join(mnt, 'media'));
    mkdirSync(join(mnt, 'docs'));
    for (let i = 0; i < 6; i++) writeFileSync(join(mnt, 'media', `clip${i}.bin`), randomBytes(8 * MiB + i * 4099));
    const text = textCorpus(6 * MiB);
    for (let i = 0; i < 40; i++) writeFileSync(join(mnt, 'docs', `note${i}.txt`), text.subarray(i * 100_000, i * 100_000 + 3000 + i * 997));
    writeFileSync(join(mnt, 'docs', 'big.txt'), text);
    digests = treeDigests(mnt);

    const s = await waitUploaded(mnt);
    const r = s.remote!;
    assert.equal(r.upload.dirtyBytes, 0);
    assert.ok(r.upload.packsUploaded >= 12, `about 55 MiB in 4 MiB packs: ${r.upload.packsUploaded} packs`);
    assert.equal(packFiles(remoteDir).length, r.upload.packsUploaded);
    // Clean blocks beyond the cache size were evicted (the eviction pass runs on a timer).
    for (let i = 0; i < 100 && mountStatus(mnt).remote!.localBytes > r.cacheBytes; i++) await new Promise((res) => setTimeout(res, 100));
    const after = mountStatus(mnt).remote!;
    assert.ok(after.localBytes <= after.cacheBytes, `local ${after.localBytes} within cache ${after.cacheBytes}`);
    assert.ok(after.evictedBytes > 0);

    // Reading evicted data fetches it back (past the kernel's page cache): still identical.
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    assert.deepEqual(treeDigests(mnt), digests);
    assert.ok(mountStatus(mnt).remote!.fetch.blocks > 0, 'something had to be fetched back');

    const human = pogfsOk(['status', mnt]);
    assert.match(human, /remote\s+local:/);
    assert.match(human, /dirty\s+0 B in 0 blocks/);
    pogfsOk(['umount', mnt]);
    assert.ok(readdirSync(join(remoteDir, 'meta')).some((n) => /^meta-\d+\.db\.gz$/.test(n)), 'a metadata generation at unmount');
  });

  it('fsck --remote of the volume finds every pack and nothing else', () => {
    const out = pogfsOk(['fsck', volume, '--remote']);
    assert.match(out, /clean|no problems/i);
  });

  let copy = '';
  it('mounts on a machine with no local copy: every file byte-identical, fetched with read-ahead in few reads', async () => {
    rmSync(volume, { recursive: true, force: true });
    copy = join(dir, 'copy1');
    const out = pogfs(['mount', remote, mnt2, '--cache-dir', copy]);
    assert.equal(out.status, 0, out.stderr);
    assert.match(out.stderr, /restored 47 files/);
    assert.ok(isMounted(mnt2));
    const before = mountStatus(mnt2).remote!;
    assert.equal(before.fetch.blocks, 0, 'empty cache at mount');

    // A streamed file: read in 64 KiB requests, as a player would.
    const fd = openSync(join(mnt2, 'media', 'clip5.bin'), 'r');
    const buf = Buffer.alloc(64 * 1024);
    const parts: Buffer[] = [];
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) parts.push(Buffer.from(buf.subarray(0, n)));
    closeSync(fd);
    assert.equal(sha256(Buffer.concat(parts)), digests.get('media/clip5.bin'));
    const streamed = mountStatus(mnt2).remote!.fetch;
    assert.ok(streamed.blocks >= 64, `8 MiB is 64 blocks: fetched ${streamed.blocks}`);
    assert.ok(streamed.reads * 4 <= streamed.blocks, `read-ahead merges fetches: ${streamed.reads} reads for ${streamed.blocks} blocks`);

    assert.deepEqual(treeDigests(mnt2), digests);
    pogfsOk(['umount', mnt2]);
    const fsck = pogfs(['fsck', copy, '--remote']);
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  });

  it('writer lock: a second writer is refused, --read-only is allowed, --break-lock takes a dead writer\'s lock with a warning', async () => {
    pogfsOk(['mount', remote, mnt2, '--cache-dir', copy]);
    const copy2 = join(dir, 'copy2');
    const refused = pogfs(['mount', remote, mnt, '--cache-dir', copy2]);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /in use by .* \(pid \d+\) since .*--read-only.*--break-lock/);
    assert.ok(!isMounted(mnt));

    const ro = pogfs(['mount', remote, mnt, '--cache-dir', copy2, '--read-only']);
    assert.equal(ro.status, 0, ro.stderr);
    assert.equal(sha256(readFileSync(join(mnt, 'docs', 'big.txt'))), digests.get('docs/big.txt'));
    assert.throws(() => writeFileSync(join(mnt, 'nope'), 'x'), { code: 'EROFS' });
    pogfsOk(['umount', mnt]);

    // The writer dies without unmounting: its lock stays on the remote.
    const pid = (JSON.parse(readFileSync(join(copy, 'daemon.json'), 'utf8')) as { pid: number }).pid;
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
        await new Promise((res) => setTimeout(res, 20));
      } catch {
        break;
      }
    }
    spawnSync('fusermount3', ['-u', '-z', mnt2]);
    const still = pogfs(['mount', remote, mnt, '--cache-dir', copy2]);
    assert.notEqual(still.status, 0, 'a stale lock is not taken silently');
    const broken = pogfs(['mount', remote, mnt, '--cache-dir', copy2, '--break-lock']);
    assert.equal(broken.status, 0, broken.stderr);
    assert.match(broken.stderr, /warning: taking over the writer lock/);
    writeFileSync(join(mnt, 'after-takeover.txt'), 'written by the new writer\n');
    pogfsOk(['umount', mnt]);
    // The first copy is now older than the remote: mounting it again sets it aside and restores.
    const back = pogfs(['mount', remote, mnt2, '--cache-dir', copy]);
    assert.equal(back.status, 0, back.stderr);
    assert.match(back.stderr, /written elsewhere since this copy; the old copy is kept at/);
    assert.equal(readFileSync(join(mnt2, 'after-takeover.txt'), 'utf8'), 'written by the new writer\n');
    pogfsOk(['umount', mnt2]);
  });

  it('pin keeps a tree local through eviction; unpin lets it go', async () => {
    const copy3 = join(dir, 'copy3');
    pogfsOk(['mount', remote, mnt2, '--cache-dir', copy3, '--cache-size', '16M']);
    const pinned = JSON.parse(pogfsOk(['pin', join(mnt2, 'docs'), '--json'])) as { blocks: number; bytes: number; fetched: number; failed: number };
    assert.ok(pinned.blocks > 40, `docs has ${pinned.blocks} blocks`);
    assert.equal(pinned.fetched, pinned.blocks, 'nothing was local yet');
    assert.equal(pinned.failed, 0);
    assert.ok(mountStatus(mnt2).remote!.pinnedBytes >= pinned.bytes);
    // 48 MiB of media through a 16 MiB cache evicts, but never the pinned blocks.
    for (let i = 0; i < 6; i++) assert.equal(sha256(readFileSync(join(mnt2, 'media', `clip${i}.bin`))), digests.get(`media/clip${i}.bin`));
    const fetchedBefore = mountStatus(mnt2).remote!.fetch.blocks;
    for (const [rel, d] of digests) if (rel.startsWith('docs/')) assert.equal(sha256(readFileSync(join(mnt2, rel))), d);
    assert.equal(mountStatus(mnt2).remote!.fetch.blocks, fetchedBefore, 'pinned files read without fetching');

    const un = pogfsOk(['unpin', join(mnt2, 'docs')]);
    assert.match(un, /unpinned/);
    assert.equal(mountStatus(mnt2).remote!.pinnedBytes, 0);
    const again = pogfs(['unpin', join(mnt2, 'docs')]);
    assert.notEqual(again.status, 0);
    assert.match(again.stderr, /was not pinned/);
    pogfsOk(['umount', mnt2]);
  });

  it('gc deletes the remote packs that hold no live block', async () => {
    pogfsOk(['mount', remote, mnt2, '--cache-dir', copy]);
    writeFileSync(join(mnt2, 'scratch.bin'), randomBytes(12 * MiB));
    await waitUploaded(mnt2);
    const withScratch = packFiles(remoteDir).length;
    rmSync(join(mnt2, 'scratch.bin'));
    const gc = pogfs(['gc', copy]);
    assert.equal(gc.status, 0, gc.stderr);
    const left = packFiles(remoteDir).length;
    assert.ok(left <= withScratch - 2, `12 MiB of dead 4 MiB packs go: ${withScratch} → ${left}`);
    assert.deepEqual(
      new Map([...treeDigests(mnt2)].filter(([rel]) => rel !== 'after-takeover.txt')),
      digests,
    );
    pogfsOk(['umount', mnt2]);
    const fsck = pogfs(['fsck', copy, '--remote']);
    assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
  });

  it('bytes corrupted on the remote are caught: EIO for the file, the log names it, the cache keeps nothing bad', () => {
    const packs = packFiles(remoteDir);
    // Damage every pack a little, past its first value: whatever clip0 uses is hit.
    for (const p of packs) {
      const fd = openSync(p, 'r+');
      writeSync(fd, Buffer.from('CORRUPTED BY TEST'), 0, 17, 1000);
      closeSync(fd);
    }
    const copy4 = join(dir, 'copy4');
    pogfsOk(['mount', remote, mnt2, '--cache-dir', copy4, '--read-only']);
    assert.throws(() => readFileSync(join(mnt2, 'media', 'clip0.bin')), { code: 'EIO' });
    const s = mountStatus(mnt2).remote!;
    assert.ok(s.fetch.corrupt > 0, 'the download was seen to be corrupt');
    pogfsOk(['umount', mnt2]);
    const log = readFileSync(join(copy4, 'pogfs.log'), 'utf8');
    assert.match(log, /do not match their BLAKE3 key/);
    assert.match(log, /\/media\/clip0\.bin \(inode \d+\): block 0 .* corrupt/);
  });
});

describe('fsck --rebuild-from-remote', () => {
  const dir = tempDir('pogfs-rebuild-', () => unmountQuietly(mnt));
  const remoteDir = join(dir, 'remote');
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);

  it('recreates a lost metadata database from the newest backup and the packs written after it', async () => {
    pogfsOk(['init', volume, '--remote', `local:${remoteDir}`, '--pack-size', '4M']);
    pogfsOk(['mount', volume, mnt]);
    writeFileSync(join(mnt, 'a.bin'), randomBytes(6 * MiB));
    writeFileSync(join(mnt, 'b.txt'), textCorpus(2 * MiB));
    const digests = treeDigests(mnt);
    pogfsOk(['umount', mnt]);

    rmSync(join(volume, 'meta.db'));
    for (const f of readdirSync(volume)) if (f.startsWith('meta.db-')) rmSync(join(volume, f));
    const plain = pogfs(['mount', volume, mnt]);
    assert.notEqual(plain.status, 0, 'a volume without its database does not mount');

    const r = pogfs(['fsck', volume, '--rebuild-from-remote']);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, /generation \d+/);
    pogfsOk(['mount', volume, mnt]);
    assert.deepEqual(treeDigests(mnt), digests);
    pogfsOk(['umount', mnt]);
    const check = pogfs(['fsck', volume, '--remote']);
    assert.equal(check.status, 0, check.stdout + check.stderr);
  });
});

describe('a file bigger than the cache', () => {
  const dir = tempDir('pogfs-stream-', () => [mnt, mnt2].forEach(unmountQuietly));
  const remote = `local:${join(dir, 'remote')}`;
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  const mnt2 = join(dir, 'mnt2');
  mkdirSync(mnt);
  mkdirSync(mnt2);

  it('streams from the remote with each block fetched once: read-ahead is not evicted before it is read', async () => {
    // The read-ahead setting (32 MiB) is twice the cache: a window that size would evict its own front.
    pogfsOk(['init', volume, '--remote', remote, '--cache-size', '16M', '--pack-size', '4M']);
    pogfsOk(['mount', volume, mnt]);
    const data = randomBytes(48 * MiB);
    writeFileSync(join(mnt, 'movie.bin'), data);
    await waitUploaded(mnt);
    pogfsOk(['umount', mnt]);

    pogfsOk(['mount', remote, mnt2, '--cache-dir', join(dir, 'fresh')]);
    const fd = openSync(join(mnt2, 'movie.bin'), 'r');
    const buf = Buffer.alloc(128 * 1024);
    const digest = createHash('sha256');
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) digest.update(buf.subarray(0, n));
    closeSync(fd);
    assert.equal(digest.digest('hex'), sha256(data));
    const s = mountStatus(mnt2).remote!;
    assert.equal(s.fetch.blocks, (48 * MiB) / (128 * 1024), `${s.fetch.blocks} blocks fetched for 384 in the file`);
    assert.ok(s.evictedBytes > 0, 'the cache did have to evict');
    pogfsOk(['umount', mnt2]);
  });
});

describe('uploads without a flush', () => {
  const dir = tempDir('pogfs-tail-', () => unmountQuietly(mnt));
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);

  it('what is left past the last full pack goes up once writing pauses, not only at unmount', async () => {
    pogfsOk(['init', volume, '--remote', `local:${join(dir, 'remote')}`, '--pack-size', '4M']);
    pogfsOk(['mount', volume, mnt]);
    // Written in one go: the last commit finds more than a pack's worth dirty.
    const fd = openSync(join(mnt, 'f.bin'), 'w');
    writeSync(fd, randomBytes(6 * MiB));
    fsyncSync(fd);
    closeSync(fd);
    const s = await waitUploaded(mnt, 20_000);
    assert.equal(s.remote!.upload.dirtyBytes, 0);
    assert.ok(s.remote!.upload.packsUploaded >= 2, `a full pack and the rest: ${s.remote!.upload.packsUploaded}`);
    pogfsOk(['umount', mnt]);
  });
});
