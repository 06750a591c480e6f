import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DriveEmulator } from './support/drive-emulator';
import { callsBetween, driveFlags, logTail, pogfsAsync, releaseView, shAsync, viewStatus, writeToken } from './support/drive-view';
import { tempDir } from './support/tmp';

/**
 * Streaming from the Drive view over an emulated link: 50 ms latency and a 50 MB/s cap
 * (the 1 GiB file is POGFS_DRIVE_STREAM_MIB; 256 MiB by default to keep the suite
 * short). Read-ahead must fill the link without fetching more than the file, a seek must
 * start a new range, a scanner's first-and-last-bytes probe must stay two small reads, and
 * a file whose bytes do not match Drive's md5 must fail with EIO.
 */
const MiB = 1024 * 1024;
const STREAM_MIB = Number(process.env.POGFS_DRIVE_STREAM_MIB ?? 256);
const CAP = 50_000_000;

const dir = tempDir('pogfs-driveview-stream-');

describe('drive view: streaming over a slow link', () => {
  const mnt = join(dir, 'mnt');
  const state = join(dir, 'state');
  let emu: DriveEmulator;
  const ids: Record<string, string> = {};

  before(async () => {
    mkdirSync(mnt);
    emu = await DriveEmulator.start();
    const [movie, probe, seek, bad, shared] = emu.seedItems([
      { name: 'movie.mkv', size: STREAM_MIB * MiB, contentSeed: 101 },
      { name: 'probe.mkv', size: 256 * MiB, contentSeed: 102 },
      { name: 'seek.mkv', size: 256 * MiB, contentSeed: 103 },
      { name: 'bad.mkv', size: 3 * MiB + 5, contentSeed: 104 },
      { name: 'shared.mkv', size: 64 * MiB, contentSeed: 105 },
    ]);
    Object.assign(ids, { movie, probe, seek, bad, shared });
    emu.setStoredMd5(bad, '0123456789abcdef0123456789abcdef');
    const flags = driveFlags(emu, writeToken(emu, join(dir, 'token.json')));
    const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', '--cache-size', '2G', ...flags]);
    assert.equal(r.code, 0, `${r.stderr}\n${logTail(state)}`);
    emu.setFaults({ latencyMs: 50, bandwidthBytesPerSec: CAP });
  });

  after(async () => {
    await releaseView(mnt, state);
    await emu.close();
  });

  it(`streams ${STREAM_MIB} MiB with dd at >= 0.85 of the link, downloading <= 1.05x its size`, { timeout: 180_000 }, async () => {
    emu.resetStats();
    const started = performance.now();
    const r = await shAsync(`dd if=${join(mnt, 'movie.mkv')} of=/dev/null bs=1M status=none`, 170_000);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(r.code, 0, r.stderr);
    const size = STREAM_MIB * MiB;
    const rate = size / seconds;
    const sent = emu.stats().bytesSent;
    assert.ok(rate >= 0.85 * CAP, `${(rate / 1e6).toFixed(1)} MB/s is below 0.85 of the ${CAP / 1e6} MB/s link`);
    assert.ok(sent <= 1.05 * size, `downloaded ${sent} bytes for a ${size}-byte file`);
    // The reads carry the caller: the bytes are dd's.
    const s = await viewStatus(mnt);
    assert.ok((s.downloads.byProgram.dd ?? 0) >= size, JSON.stringify(s.downloads.byProgram));
  });

  it('a scanner reading the first and last bytes costs two small ranged reads', { timeout: 60_000 }, async () => {
    const before = emu.calls();
    const ranges = emu.mediaRanges().length;
    const file = join(mnt, 'probe.mkv');
    const r = await shAsync(`head -c 65536 ${file} | wc -c; tail -c 65536 ${file} | wc -c`);
    assert.equal(r.stdout.split('\n').filter(Boolean).join(' ').replace(/\s+/g, ' '), '65536 65536');
    assert.deepEqual(callsBetween(before, emu.calls()), { 'files.get': 2 });
    for (const g of emu.mediaRanges().slice(ranges)) assert.ok(g.end - g.start <= 1 * MiB, JSON.stringify(g));
  });

  it('a seek to the middle starts a new range without fetching what lies between', { timeout: 60_000 }, async () => {
    const ranges = emu.mediaRanges().length;
    // One process, one open file: 8 MiB from the start in 128 KiB reads, then a seek to 128 MiB.
    const script = `const fs=require('fs');const fd=fs.openSync(${JSON.stringify(join(mnt, 'seek.mkv'))},'r');const b=Buffer.alloc(131072);` +
      `for(let o=0;o<8*1048576;o+=131072)fs.readSync(fd,b,0,b.length,o);` +
      `for(let o=128*1048576;o<130*1048576;o+=131072)fs.readSync(fd,b,0,b.length,o);fs.closeSync(fd);`;
    await new Promise<void>((res, rej) => execFile(process.execPath, ['-e', script], (e) => (e ? rej(e) : res())));
    const got = emu.mediaRanges().slice(ranges).filter((g) => g.id === ids.seek);
    assert.ok(got.some((g) => g.start === 128 * MiB), `no range starts at the seek: ${JSON.stringify(got)}`);
    // Nothing between the read-ahead of the first stretch and the seek was asked for.
    for (const g of got) assert.ok(g.start < 48 * MiB || g.start >= 128 * MiB, `fetched ${JSON.stringify(g)} between`);
  });

  it('two readers of one file at once share its downloads', { timeout: 60_000 }, async () => {
    emu.resetStats();
    // O_DIRECT: each reader's requests reach the view (the kernel's page cache would share them otherwise).
    const file = join(mnt, 'shared.mkv');
    const r = await shAsync(`dd if=${file} of=/dev/null bs=1M iflag=direct status=none & dd if=${file} of=/dev/null bs=1M iflag=direct status=none & wait`);
    assert.equal(r.code, 0, r.stderr);
    const s = await viewStatus(mnt);
    assert.ok((s.downloads.byProgram.dd ?? 0) > 0);
    assert.ok(emu.stats().bytesSent <= 1.02 * 64 * MiB, `${emu.stats().bytesSent} bytes downloaded for two readers of a 64 MiB file`);
    assert.ok(s.cache.hits > 0, JSON.stringify(s.cache));
  });

  it('a file whose bytes do not match its md5 fails with EIO, is logged, and keeps nothing cached', { timeout: 60_000 }, async () => {
    await assert.rejects(readFile(join(mnt, 'bad.mkv')), { code: 'EIO' });
    const s = await viewStatus(mnt);
    assert.equal(s.downloads.md5Mismatches, 1);
    assert.match(readFileSync(join(state, 'pogfs.log'), 'utf8'), /md5 mismatch for \/bad\.mkv/);
    // Its chunks are gone from the cache, and it stays EIO without another download.
    const chunks = readdirSync(join(state, 'chunks'), { recursive: true }).map(String);
    assert.ok(chunks.length > 0);
    assert.deepEqual(chunks.filter((c) => c.includes('0123456789abcdef0123456789abcdef')), []);
    const before = emu.calls();
    await assert.rejects(readFile(join(mnt, 'bad.mkv')), { code: 'EIO' });
    assert.deepEqual(callsBetween(before, emu.calls()), {});
  });
});
