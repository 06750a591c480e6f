import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DriveEmulator } from './support/drive-emulator';
import { callsBetween, driveFlags, logTail, plantDrive, pogfsAsync, pogfsAsyncOk, releaseView, shAsync, total, type PlantedDrive, writeToken } from './support/drive-view';
import { tempDir } from './support/tmp';

/**
 * The synthetic Drive: 100,000 files in 5,000 folders (POGFS_DRIVE_SCALE_FILES and
 * _FOLDERS scale it), with duplicate names, same-named folders, `/` in names, Google
 * documents, shortcuts, trashed items and content duplicates, put straight into the
 * emulator's store. What a media scanner does to it must cost what the issue says.
 */
const FILES = Number(process.env.POGFS_DRIVE_SCALE_FILES ?? 100_000);
const FOLDERS = Number(process.env.POGFS_DRIVE_SCALE_FOLDERS ?? 5_000);

const dir = tempDir('pogfs-driveview-scale-');

describe(`drive view of a Drive of ${FILES} files in ${FOLDERS} folders`, () => {
  const mnt = join(dir, 'mnt');
  const state = join(dir, 'state');
  let emu: DriveEmulator;
  let planted: PlantedDrive;
  let flags: string[];
  let listing: string[] = [];

  before(async () => {
    mkdirSync(mnt);
    emu = await DriveEmulator.start();
    planted = plantDrive(emu, FILES, FOLDERS);
    flags = driveFlags(emu, writeToken(emu, join(dir, 'token.json')));
  });

  after(async () => {
    await releaseView(mnt, state);
    await emu.close();
  });

  it('the first mount costs at most ceil(items / 1000) + 5 calls', { timeout: 300_000 }, async () => {
    const before = emu.calls();
    const r = await pogfsAsync(['drive', 'mount', mnt, '--state-dir', state, '--poll-interval', '0', ...flags], 280_000);
    assert.equal(r.code, 0, `${r.stderr}\n${logTail(state)}`);
    const calls = callsBetween(before, emu.calls());
    assert.ok(total(calls) <= Math.ceil(planted.listed / 1000) + 5, `${total(calls)} calls for ${planted.listed} items: ${JSON.stringify(calls)}`);
    assert.equal(calls['files.list'], Math.ceil(planted.listed / 1000));
  });

  it('find -printf "%s %T@" over the whole tree costs no call and sees every item', { timeout: 300_000 }, async () => {
    const before = emu.calls();
    const r = await shAsync(`find ${mnt} -mindepth 1 -printf '%s %T@ %y %p\\n'`, 280_000);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(callsBetween(before, emu.calls()), {});
    listing = r.stdout.split('\n').filter(Boolean);
    assert.equal(listing.length, planted.shown);
    assert.ok(listing.some((l) => l.includes('AC∕DC')), 'a name with a slash');
  });

  it('reading the first 64 KiB of 1,000 files costs at most one ranged download each', { timeout: 300_000 }, async () => {
    const probes = listing.filter((l) => l.startsWith(`${planted.probeSize} `) && l.split(' ')[2] === 'f').map((l) => l.split(' ').slice(3).join(' '));
    assert.equal(probes.length, planted.probes.length);
    const list = join(dir, 'probes.txt');
    writeFileSync(list, probes.join('\n') + '\n');
    const before = emu.calls();
    const r = await shAsync(`while IFS= read -r f; do head -c 65536 "$f" | wc -c; done < ${list} | sort | uniq -c`, 280_000);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), `${probes.length} 65536`);
    const calls = callsBetween(before, emu.calls());
    assert.ok((calls['files.get'] ?? 0) <= probes.length, JSON.stringify(calls));
    assert.deepEqual(Object.keys(calls), ['files.get']);
  });

  it('dupes finds exactly the planted groups, with no call', { timeout: 120_000 }, async () => {
    const before = emu.calls();
    const plan = JSON.parse(await pogfsAsyncOk(['drive', 'dupes', mnt, '--json'])) as {
      files: Array<{ keep: { id: string }; extras: Array<{ id: string }> }>;
      folders: Array<{ keep: { id: string }; merge: Array<{ id: string }> }>;
    };
    assert.deepEqual(callsBetween(before, emu.calls()), {});
    const found = plan.files.map((g) => [g.keep.id, ...g.extras.map((e) => e.id)].sort().join(',')).sort();
    assert.deepEqual(found, planted.contentGroups.map((g) => [...g].sort().join(',')).sort());
    const folders = plan.folders.map((g) => [g.keep.id, ...g.merge.map((m) => m.id)].sort().join(',')).sort();
    assert.deepEqual(folders, planted.folderPairs.map((g) => [...g].sort().join(',')).sort());
  });

  it('an idle poll costs one call', async () => {
    const before = emu.calls();
    await pogfsAsyncOk(['drive', 'refresh', mnt]);
    assert.deepEqual(callsBetween(before, emu.calls()), { 'changes.list': 1 });
  });
});
