import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { readdir, readFile, readlink, lstat, open } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DriveEmulator, FOLDER_MIME, SHORTCUT_MIME, syntheticBytes } from './support/drive-emulator';
import { callsBetween, driveFlags, logTail, pogfsAsync, pogfsAsyncOk, releaseView, total, viewStatus, writeToken } from './support/drive-view';
import { tempDir } from './support/tmp';

/**
 * The Drive view end to end: the CLI and its daemon, the kernel's FUSE mount, the real
 * googleapis client against the Drive emulator (in this process: every access here is
 * asynchronous). One small Drive holding each naming hazard, mounted once.
 */

const KiB = 1024;
const md5 = (b: Buffer) => createHash('md5').update(b).digest('hex');

// At file level: removed after the suite's own clean-up has unmounted.
const dir = tempDir('pogfs-driveview-');

describe('drive view: names, shortcuts, reads, refresh, dupes', () => {
  const mnt = join(dir, 'mnt');
  const state = join(dir, 'state');
  let emu: DriveEmulator;
  let flags: string[];
  const ids: Record<string, string> = {};

  before(async () => {
    mkdirSync(mnt);
    emu = await DriveEmulator.start({ faults: { shortPageRate: 0.3 }, maxPageSize: 7 });
    flags = driveFlags(emu, writeToken(emu, join(dir, 'token.json')));
    const [movies, movies2, tv] = emu.seedItems([
      { name: 'Movies', mimeType: FOLDER_MIME },
      { name: 'Movies', mimeType: FOLDER_MIME },
      { name: 'TV', mimeType: FOLDER_MIME },
    ]);
    Object.assign(ids, { movies, movies2, tv });
    const [alien, alienCopy, dupA, dupB, slash, dot, dotdot, long, same, sameDir, doc, trashed, big, extra] = emu.seedItems([
      { name: 'Alien.mkv', parent: movies, size: 300 * KiB, contentSeed: 1 },
      { name: 'Alien (copy).mkv', parent: movies2, size: 300 * KiB, contentSeed: 1 },
      { name: 'x.mkv', parent: tv, size: 10 * KiB, contentSeed: 2 },
      { name: 'x.mkv', parent: tv, size: 20 * KiB, contentSeed: 3 },
      { name: 'AC/DC live.mp3', parent: tv, size: 5 * KiB, contentSeed: 4 },
      { name: '.', parent: tv, size: 1, contentSeed: 5 },
      { name: '..', parent: tv, size: 2, contentSeed: 6 },
      { name: `${'é'.repeat(150)}.mkv`, parent: tv, size: 3, contentSeed: 7 },
      { name: 'same', parent: tv, size: 4, contentSeed: 8 },
      { name: 'same', parent: tv, mimeType: FOLDER_MIME },
      { name: 'Notes', parent: tv, mimeType: 'application/vnd.google-apps.document' },
      { name: 'old.mkv', parent: tv, size: 10, contentSeed: 9, trashed: true },
      { name: 'big.bin', parent: movies2, size: 5 * 1024 * KiB + 123, contentSeed: 10 },
      { name: 'extra.mkv', parent: movies, size: 100, contentSeed: 11 },
    ]);
    Object.assign(ids, { alien, alienCopy, dupA, dupB, slash, dot, dotdot, long, same, sameDir, doc, trashed, big, extra });
    const [link, dangling] = emu.seedItems([
      { name: 'alien-link', parent: tv, mimeType: SHORTCUT_MIME, shortcutTargetId: alien },
      { name: 'nowhere', parent: tv, mimeType: SHORTCUT_MIME, shortcutTargetId: 'missing123' },
    ]);
    Object.assign(ids, { link, dangling });
  });

  after(async () => {
    await releaseView(mnt, state);
    await emu.close();
  });

  it('mounts with one scan and shows every item under a safe, unique name', { timeout: 120_000 }, async () => {
    // Drive forgets the listing once midway: it starts over.
    emu.injectFault({ method: 'files.list', fault: 'invalidPageToken' });
    const before = emu.calls();
    const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', ...flags]);
    assert.equal(r.code, 0, `${r.stderr}\n${logTail(state)}`);
    const calls = callsBetween(before, emu.calls());
    // 17 visible-or-not items in pages of at most 7, some cut short: only the listing grows.
    assert.equal(calls['changes.getStartPageToken'], 1);
    assert.equal(calls['changes.list'], 1);
    assert.ok(calls['files.list'] >= 4, JSON.stringify(calls));
    assert.equal(emu.stats().faults.invalidPageToken, 1);
    assert.equal(total(calls), calls['files.list'] + 3, JSON.stringify(calls)); // + files.get of 'root'

    assert.deepEqual((await readdir(mnt)).sort(), ['Movies', 'TV']);
    // The two Movies folders are one directory.
    assert.deepEqual((await readdir(join(mnt, 'Movies'))).sort(), ['Alien (copy).mkv', 'Alien.mkv', 'big.bin', 'extra.mkv']);
    const tvNames = (await readdir(join(mnt, 'TV'))).sort();
    const longName = tvNames.find((n) => n.startsWith('é'))!;
    assert.ok(Buffer.byteLength(longName) <= 255 && longName.endsWith('.mkv'), longName);
    assert.deepEqual(tvNames, [
      'AC∕DC live.mp3',
      'alien-link',
      longName,
      'nowhere',
      'same',
      `same [${ids.same.slice(0, 8)}]`,
      'x.mkv',
      `x [${ids.dupB.slice(0, 8)}].mkv`,
      '．',
      '．．',
    ].sort());
    // The folder kept the plain name (folders first), the file got the suffix.
    assert.ok((await lstat(join(mnt, 'TV', 'same'))).isDirectory());
    // Shortcuts are symlinks into the view; one to nowhere dangles.
    assert.equal(await readlink(join(mnt, 'TV', 'alien-link')), '../Movies/Alien.mkv');
    assert.equal((await readFile(join(mnt, 'TV', 'alien-link'))).length, 300 * KiB);
    await assert.rejects(readFile(join(mnt, 'TV', 'nowhere')), { code: 'ENOENT' });
  });

  it('answers metadata from the mirror: a full stat walk costs no call', async () => {
    const before = emu.calls();
    const r = await pogfsAsyncOk(['status', mnt, '--json']);
    assert.ok(r.includes('drive-view'));
    const { execFile } = await import('node:child_process');
    const out = await new Promise<string>((res, rej) => execFile('find', [mnt, '-printf', '%s %T@ %p\n'], (e, so) => (e ? rej(e) : res(so))));
    assert.ok(out.split('\n').length > 15);
    assert.deepEqual(callsBetween(before, emu.calls()), {});
  });

  it('reads content right, in ranged chunks, and is read-only', async () => {
    const expected = syntheticBytes(10, 0, 5 * 1024 * KiB + 123);
    const before = emu.calls();
    const data = await readFile(join(mnt, 'Movies', 'big.bin'));
    assert.equal(md5(data), md5(expected));
    const calls = callsBetween(before, emu.calls());
    assert.ok(calls['files.get'] >= 1 && calls['files.get'] <= 6, JSON.stringify(calls));
    // Again: the kernel's page cache or the chunk cache, no download.
    const again = emu.calls();
    assert.equal(md5(await readFile(join(mnt, 'Movies', 'big.bin'))), md5(expected));
    assert.deepEqual(callsBetween(again, emu.calls()), {});
    await assert.rejects(open(join(mnt, 'Movies', 'big.bin'), 'r+'), { code: 'EROFS' });
    await assert.rejects(open(join(mnt, 'TV', 'new'), 'w'), { code: 'EROFS' });
  });

  it('identical files share cached chunks: the copy costs no download', async () => {
    await readFile(join(mnt, 'Movies', 'Alien.mkv'));
    const before = emu.calls();
    const copy = await readFile(join(mnt, 'Movies', 'Alien (copy).mkv'));
    assert.equal(md5(copy), md5(syntheticBytes(1, 0, 300 * KiB)));
    assert.deepEqual(callsBetween(before, emu.calls()), {});
  });

  it('a refused download is EIO for that file only, logged once, not retried in a loop', async () => {
    emu.blockDownload(ids.dupA, 'downloadQuotaExceeded');
    const before = emu.calls();
    await assert.rejects(readFile(join(mnt, 'TV', 'x.mkv')), { code: 'EIO' });
    await assert.rejects(readFile(join(mnt, 'TV', 'x.mkv')), { code: 'EIO' });
    assert.equal(callsBetween(before, emu.calls())['files.get'], 1);
    assert.equal((await readFile(join(mnt, 'TV', `x [${ids.dupB.slice(0, 8)}].mkv`))).length, 20 * KiB);
    const s = await viewStatus(mnt);
    assert.equal(s.downloads.refused, 1);
    const logged = readFileSync(join(state, 'pogfs.log'), 'utf8').split('\n').filter((l) => l.includes('Drive refuses to serve /TV/x.mkv'));
    assert.equal(logged.length, 1);
    assert.match(logged[0], /downloadQuotaExceeded/);
  });

  it('a rate-limited download (403 userRateLimitExceeded) is retried, not failed', async () => {
    emu.injectFault({ method: 'files.get', fault: 'userRateLimitExceeded' });
    assert.deepEqual(await readFile(join(mnt, 'TV', '．')), syntheticBytes(5, 0, 1));
    assert.equal((await viewStatus(mnt)).calls['retry.403'], 1);
  });

  it('shows a rename, a move, a trash, a content change and a new file right after drive refresh', { timeout: 60_000 }, async () => {
    // Read first, so the kernel has names, attributes and pages cached that must go.
    assert.equal((await readFile(join(mnt, 'TV', 'AC∕DC live.mp3'))).length, 5 * KiB);
    await readdir(join(mnt, 'TV'));
    await lstat(join(mnt, 'TV', 'renamed.mp3')).catch(() => undefined);
    emu.changeItem(ids.slash, { name: 'renamed.mp3' });
    emu.changeItem(ids.alien, { parent: ids.tv });
    emu.changeItem(ids.long, { trashed: true });
    emu.changeItem(ids.dupB, { contentSeed: 33, size: 7 * KiB });
    const [fresh] = emu.seedItems([{ name: 'fresh.mkv', parent: ids.movies2, size: 1234, contentSeed: 44 }]);
    const before = emu.calls();
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    assert.deepEqual(callsBetween(before, emu.calls()), { 'changes.list': 1 });
    assert.equal((await readFile(join(mnt, 'TV', 'renamed.mp3'))).length, 5 * KiB);
    await assert.rejects(lstat(join(mnt, 'TV', 'AC∕DC live.mp3')), { code: 'ENOENT' });
    assert.ok((await lstat(join(mnt, 'TV', 'Alien.mkv'))).isFile());
    await assert.rejects(lstat(join(mnt, 'Movies', 'Alien.mkv')), { code: 'ENOENT' });
    assert.equal((await readdir(join(mnt, 'TV'))).filter((n) => n.startsWith('é')).length, 0);
    const changed = await readFile(join(mnt, 'TV', `x [${ids.dupB.slice(0, 8)}].mkv`));
    assert.equal(md5(changed), md5(syntheticBytes(33, 0, 7 * KiB)));
    assert.equal((await readFile(join(mnt, 'Movies', 'fresh.mkv'))).length, 1234);
    void fresh;
    // The shortcut follows its target's move.
    assert.equal(await readlink(join(mnt, 'TV', 'alien-link')), '../TV/Alien.mkv');
    // An idle poll is one call.
    const idle = emu.calls();
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    assert.deepEqual(callsBetween(idle, emu.calls()), { 'changes.list': 1 });
  });

  it('drive dupes --json lists the planted groups with no call', async () => {
    const before = emu.calls();
    const plan = JSON.parse(await pogfsAsyncOk(['drive', 'dupes', mnt, '--json'])) as {
      files: Array<{ md5: string; size: number; keep: { id: string; path: string }; extras: Array<{ id: string; path: string }> }>;
      folders: Array<{ path: string; keep: { id: string }; merge: Array<{ id: string }> }>;
      bytes_reclaimable: number;
    };
    assert.deepEqual(callsBetween(before, emu.calls()), {});
    assert.equal(plan.files.length, 1);
    assert.equal(plan.files[0].size, 300 * KiB);
    assert.equal(plan.files[0].keep.id, ids.alien);
    assert.deepEqual(plan.files[0].extras, [{ id: ids.alienCopy, path: '/Movies/Alien (copy).mkv' }]);
    assert.equal(plan.bytes_reclaimable, 300 * KiB);
    assert.equal(plan.folders.length, 1);
    assert.equal(plan.folders[0].path, '/Movies');
    // movies2 holds more entries (Alien (copy), big.bin, fresh.mkv): it stays.
    assert.deepEqual(plan.folders[0], { path: '/Movies', keep: { id: ids.movies2 }, merge: [{ id: ids.movies }] });
  });

  it('dupes --apply needs the full scope, merges folders and trashes exactly the extras; --undo puts them back', { timeout: 60_000 }, async () => {
    const trashedNow = () => new Set(emu.storedFiles().filter((f) => f.trashed).map((f) => f.id));
    const before = trashedNow();
    const refused = await pogfsAsync(['drive', 'dupes', mnt, '--apply', '--json', ...flags]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /pogfs auth --scope full/);
    assert.deepEqual(trashedNow(), before);

    const full = join(dir, 'token-full.json');
    writeFileSync(full, `${JSON.stringify({ access_token: emu.issueAccessToken(3600, 'https://www.googleapis.com/auth/drive') })}\n`, { mode: 0o600 });
    const out = JSON.parse(await pogfsAsyncOk(['drive', 'dupes', mnt, '--apply', '--json', ...driveFlags(emu, full)])) as { log: string; files: unknown[] };
    assert.equal(out.files.length, 1);
    assert.ok(existsSync(out.log));
    const after = trashedNow();
    assert.deepEqual([...after].filter((id) => !before.has(id)).sort(), [ids.alienCopy, ids.movies].sort());
    assert.deepEqual(emu.storedFile(ids.extra)?.parents, [ids.movies2]);
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    assert.deepEqual((await readdir(join(mnt, 'Movies'))).sort(), ['big.bin', 'extra.mkv', 'fresh.mkv']);

    await pogfsAsyncOk(['drive', 'dupes', '--undo', out.log, ...driveFlags(emu, full)]);
    assert.deepEqual(trashedNow(), before);
    assert.deepEqual(emu.storedFile(ids.extra)?.parents, [ids.movies]);
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    assert.deepEqual((await readdir(join(mnt, 'Movies'))).sort(), ['Alien (copy).mkv', 'big.bin', 'extra.mkv', 'fresh.mkv']);
  });

  it('an expired changes token makes the view scan again, serving the old tree meanwhile', { timeout: 60_000 }, async () => {
    emu.forgetChanges();
    emu.changeItem(ids.extra, { name: 'extra (renamed).mkv' });
    const before = emu.calls();
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    const calls = callsBetween(before, emu.calls());
    assert.ok(calls['files.list'] >= 1 && calls['changes.getStartPageToken'] === 1, JSON.stringify(calls));
    assert.deepEqual((await readdir(join(mnt, 'Movies'))).sort(), ['Alien (copy).mkv', 'big.bin', 'extra (renamed).mkv', 'fresh.mkv']);
    assert.ok((await readdir(join(mnt, 'TV'))).includes('renamed.mp3'));
  });

  it('unmounts with pogfs umount, and a restart costs one changes call before serving', { timeout: 60_000 }, async () => {
    await pogfsAsyncOk(['umount', mnt]);
    const before = emu.calls();
    await pogfsAsyncOk(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', ...flags]);
    assert.deepEqual(callsBetween(before, emu.calls()), { 'changes.list': 1 });
    assert.ok((await readdir(join(mnt, 'TV'))).includes('renamed.mp3'));
    // The chunk cache survived: the big file reads with no download.
    const again = emu.calls();
    assert.equal((await readFile(join(mnt, 'Movies', 'big.bin'))).length, 5 * 1024 * KiB + 123);
    assert.deepEqual(callsBetween(again, emu.calls()), {});
  });

  it('--root shows one folder: what lies outside is not in the view, and shortcuts to it dangle', { timeout: 60_000 }, async () => {
    emu.seedItems([{ name: 'big-link', parent: ids.tv, mimeType: SHORTCUT_MIME, shortcutTargetId: ids.big }]);
    const mnt2 = join(dir, 'mnt-tv');
    const state2 = join(dir, 'state-tv');
    mkdirSync(mnt2);
    try {
      const before = emu.calls();
      await pogfsAsyncOk(['drive', 'mount', mnt2, '--root', ids.tv, '--state-dir', state2, '--poll-interval', '0', ...flags]);
      const calls = callsBetween(before, emu.calls());
      assert.equal(calls['files.get'], undefined, JSON.stringify(calls));
      const names = await readdir(mnt2);
      assert.ok(names.includes('renamed.mp3') && names.includes('Alien.mkv'), names.join(' '));
      assert.ok(!names.includes('TV') && !names.includes('Movies'));
      assert.equal(await readlink(join(mnt2, 'alien-link')), 'Alien.mkv');
      assert.match(await readlink(join(mnt2, 'big-link')), /^\.pogfs-shortcut-target-not-in-view\//);
      await assert.rejects(readFile(join(mnt2, 'big-link')), { code: 'ENOENT' });
    } finally {
      await releaseView(mnt2, state2);
    }
  });
});

describe('drive view: a shared drive, polling, a failing Drive, a bounded cache', () => {
  const mnt = join(dir, 'shared-mnt');
  const state = join(dir, 'shared-state');
  let emu: DriveEmulator;
  let flags: string[];
  let driveId: string;
  const ids: Record<string, string> = {};

  before(async () => {
    mkdirSync(mnt);
    emu = await DriveEmulator.start();
    flags = driveFlags(emu, writeToken(emu, join(dir, 'shared-token.json')));
    driveId = emu.createSharedDrive('Team Media');
    const [music] = emu.seedItems([{ name: 'Music', parent: driveId, mimeType: FOLDER_MIME }]);
    const [song, big] = emu.seedItems([
      { name: 'song.flac', parent: music, size: 40 * KiB, contentSeed: 21 },
      { name: 'big.iso', parent: driveId, size: 10 * 1024 * KiB, contentSeed: 22 },
    ]);
    emu.seedItems([{ name: 'mine.txt', size: 10, contentSeed: 23 }]);
    Object.assign(ids, { music, song, big });
  });

  after(async () => {
    await releaseView(mnt, state);
    await emu.close();
  });

  it('mounts a shared drive (corpora=drive) and shows only its items', { timeout: 60_000 }, async () => {
    const r = await pogfsAsync(['drive', 'mount', mnt, '--shared-drive', driveId, '--state-dir', state, '--poll-interval', '1', '--cache-size', '4M', ...flags]);
    assert.equal(r.code, 0, `${r.stderr}\n${logTail(state)}`);
    assert.deepEqual((await readdir(mnt)).sort(), ['Music', 'big.iso']);
    assert.equal((await readFile(join(mnt, 'Music', 'song.flac'))).length, 40 * KiB);
  });

  it('polls the changes feed by itself every --poll-interval seconds', { timeout: 60_000 }, async () => {
    emu.changeItem(ids.song, { name: 'song (remaster).flac' });
    emu.touchSharedDrive(driveId);
    let names: string[] = [];
    for (const deadline = Date.now() + 15_000; Date.now() < deadline; await sleep(100)) {
      names = await readdir(join(mnt, 'Music'));
      if (names.includes('song (remaster).flac')) break;
    }
    assert.deepEqual(names, ['song (remaster).flac']);
  });

  it('keeps the chunk cache within --cache-size', { timeout: 60_000 }, async () => {
    const data = await readFile(join(mnt, 'big.iso'));
    assert.equal(md5(data), md5(syntheticBytes(22, 0, 10 * 1024 * KiB)));
    const s = await viewStatus(mnt);
    assert.ok(s.cache.bytes <= 4 * 1024 * KiB && s.cache.bytes > 0, JSON.stringify(s.cache));
    const onDisk = readdirSync(join(state, 'chunks'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
    assert.ok(onDisk.length <= 4, `${onDisk.length} chunk files`);
  });

  it('a Drive that refuses the token keeps the last tree served, and says what is wrong', { timeout: 60_000 }, async () => {
    emu.expireAccessTokens();
    const r = await pogfsAsync(['drive', 'refresh', mnt]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /changes poll failed: .*access token/);
    assert.deepEqual((await readdir(mnt)).sort(), ['Music', 'big.iso']);
    const s = await viewStatus(mnt);
    assert.equal(s.lastPoll?.ok, false);
    assert.match(s.lastPoll?.error ?? '', /pogfs auth/);
  });

  it('a later mount with Drive down serves the stored tree after --catch-up-wait', { timeout: 60_000 }, async () => {
    await pogfsAsyncOk(['umount', mnt]);
    writeToken(emu, join(dir, 'shared-token.json'));
    emu.setFaults({ errorRate: 1, errorKinds: [503], methods: ['changes.list'] });
    try {
      const started = performance.now();
      await pogfsAsyncOk(['drive', 'mount', mnt, '--shared-drive', driveId, '--state-dir', state, '--poll-interval', '0', '--catch-up-wait', '1', ...flags]);
      assert.ok(performance.now() - started < 20_000);
      assert.deepEqual((await readdir(mnt)).sort(), ['Music', 'big.iso']);
      assert.deepEqual(await readdir(join(mnt, 'Music')), ['song (remaster).flac']);
      assert.ok((emu.stats().faults['503'] ?? 0) >= 1);
    } finally {
      emu.setFaults({ errorRate: 0, methods: undefined });
    }
  });

  it('pogfs stats shows which programs pulled how many bytes', async () => {
    const before = emu.calls();
    assert.equal((await readFile(join(mnt, 'Music', 'song (remaster).flac'))).length, 40 * KiB);
    const out = await pogfsAsyncOk(['stats', mnt]);
    assert.match(out, /downloaded by node/);
    assert.match(out, /downloaded of \/Music\/song \(remaster\)\.flac +40\.0 KiB/);
    const s = await viewStatus(mnt);
    assert.ok((s.downloads.byProgram.node ?? 0) >= 40 * KiB, JSON.stringify(s.downloads.byProgram));
    assert.equal(s.calls['files.get'], callsBetween(before, emu.calls())['files.get']);
  });
});

describe('drive view: user errors', () => {
  it('says in one line what is wrong and what to do, exit code 2', async () => {
    const noMnt = await pogfsAsync(['drive', 'mount', join(dir, 'no-such-dir'), '--state-dir', join(dir, 'err-state'), '--credentials', join(dir, 'none.json')]);
    assert.equal(noMnt.code, 2);
    assert.match(noMnt.stderr.trim(), /^pogfs: mount point .*no-such-dir does not exist \(create it with: mkdir -p .*\)$/);
    mkdirSync(join(dir, 'err-mnt'));
    const noToken = await pogfsAsync(['drive', 'mount', join(dir, 'err-mnt'), '--state-dir', join(dir, 'err-state'), '--credentials', join(dir, 'none.json')]);
    assert.equal(noToken.code, 2);
    assert.match(noToken.stderr.trim(), /^pogfs: no Drive credentials at .*none\.json: run `pogfs auth --scope readonly` or pass --credentials FILE$/);
    const notView = await pogfsAsync(['drive', 'refresh', dir]);
    assert.equal(notView.code, 2);
    assert.match(notView.stderr.trim(), /^pogfs: .* is not a mounted Drive view \(mount one with: pogfs drive mount MOUNTPOINT\)$/);
    // The state of the first suite's view mirrors My Drive: another root there is refused.
    const otherRoot = await pogfsAsync(['drive', 'mount', join(dir, 'err-mnt'), '--root', 'SOMEFOLDER', '--state-dir', join(dir, 'state'), '--credentials', join(dir, 'none.json')]);
    assert.equal(otherRoot.code, 2);
    assert.match(otherRoot.stderr.trim(), /^pogfs: .*state holds the view of My Drive, not of folder SOMEFOLDER: give another --state-dir \(or leave it out\)$/);
    const noState = await pogfsAsync(['drive', 'dupes', '--state-dir', join(dir, 'nothing-here')]);
    assert.equal(noState.code, 2);
    assert.match(noState.stderr.trim(), /holds no Drive view state/);
  });
});
