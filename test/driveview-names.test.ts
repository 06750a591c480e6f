import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { planDupes } from '../src/driveview/dupes';
import { FOLDER_MIME, MirrorDb, type Invalidation, type MirrorItem } from '../src/driveview/mirror-db';
import { duplicateName, safeBase } from '../src/driveview/names';
import { tempDir } from './support/tmp';

/** The name mapping of the Drive view (the pure rule, and the mirror keeping names stable) and the dupes plan. */

describe('drive view names: the rule', () => {
  it('maps what Linux refuses and keeps everything else byte for byte', () => {
    assert.equal(safeBase('AC/DC'), 'AC∕DC');
    assert.equal(safeBase('a\0b'), 'a␀b');
    assert.equal(safeBase('.'), '．');
    assert.equal(safeBase('..'), '．．');
    assert.equal(safeBase(''), '_');
    assert.equal(safeBase('...'), '...');
    assert.equal(safeBase('Café'.normalize('NFD')), 'Café'.normalize('NFD'));
    assert.notEqual(safeBase('Café'.normalize('NFD')), safeBase('Café'.normalize('NFC')));
  });

  it('shortens names over 255 bytes between characters, keeping the extension', () => {
    const long = `${'日本'.repeat(100)}.mkv`;
    const s = safeBase(long);
    assert.ok(Buffer.byteLength(s) <= 255, String(Buffer.byteLength(s)));
    assert.ok(s.endsWith('.mkv'));
    assert.ok(!s.includes('\uFFFD'));
    const d = duplicateName(s, '1abcdefghijk', false);
    assert.ok(Buffer.byteLength(d) <= 255 && d.endsWith(' [1abcdefg].mkv'), d);
    const folder = duplicateName('x'.repeat(255), '1abcdefghijk', true);
    assert.ok(Buffer.byteLength(folder) <= 255 && folder.endsWith(' [1abcdefg]'), folder);
  });
});

describe('drive view names: stable in the mirror', () => {
  const dir = tempDir('pogfs-dv-names-');
  let t = 1_000;
  const item = (id: string, name: string, parent: string, folder = false): MirrorItem => ({
    id, parent, name, mime: folder ? FOLDER_MIME : 'video/x-matroska', size: 1, md5: folder ? undefined : `md5${id}`, headRev: undefined, createdMs: (t += 1000), modifiedMs: t, target: undefined,
  });
  const names = (m: MirrorDb, dirIno: number) => m.list(dirIno, 0, 1000).map((e) => e.name.toString()).sort();

  it('renaming one duplicate renames no other; merged folders split and join again', () => {
    const m = new MirrorDb(join(dir, 'mirror.db'));
    try {
      const inval: Invalidation = { entries: [], inodes: [] };
      const apply = (items: MirrorItem[], removed: string[] = []) =>
        m.transaction(() => {
          const dirty = new Set<number>();
          for (const i of items) m.upsertItem(i, 1, dirty, inval);
          for (const id of removed) m.removeItem(id, dirty);
          m.rename(dirty, inval);
        });
      m.transaction(() => m.setRoot('ROOT'));
      apply([item('a1', 'x.mkv', 'ROOT'), item('a2', 'x.mkv', 'ROOT'), item('a3', 'x.mkv', 'ROOT'), item('f1', 'x.mkv', 'ROOT', true)]);
      m.transaction(() => m.rename(new Set([1]), inval));
      // The folder came first; the files are told apart by their ids.
      assert.deepEqual(names(m, 1), ['x [a1].mkv', 'x [a2].mkv', 'x [a3].mkv', 'x.mkv']);
      // The folder leaves: nobody else takes its name; a2 is renamed on Drive: only a2 changes.
      apply([item('a2', 'y.mkv', 'ROOT')], ['f1']);
      assert.deepEqual(names(m, 1), ['x [a1].mkv', 'x [a3].mkv', 'y.mkv']);
      // Two folders of one name are one directory with the children of both.
      apply([item('s1', 'Show', 'ROOT', true), item('s2', 'Show', 'ROOT', true)]);
      apply([item('e1', 'ep1.mkv', 's1'), item('e2', 'ep2.mkv', 's2'), item('e3', 'ep1.mkv', 's2')]);
      const show = m.lookup(1, Buffer.from('Show'))!;
      assert.equal(show.kind, 'dir');
      assert.deepEqual(names(m, show.ino), ['ep1 [e3].mkv', 'ep1.mkv', 'ep2.mkv']);
      // One of them renamed: two directories, each with its own children, the first keeping its inode.
      apply([{ ...item('s2', 'Show 2', 'ROOT', true), createdMs: 0 }]);
      assert.equal(m.lookup(1, Buffer.from('Show'))!.ino, show.ino);
      assert.deepEqual(names(m, show.ino), ['ep1.mkv']);
      assert.deepEqual(names(m, m.lookup(1, Buffer.from('Show 2'))!.ino), ['ep1.mkv', 'ep2.mkv']);
      // Reopened: the same names and inodes.
      const ino = m.lookup(1, Buffer.from('x [a3].mkv'))!.ino;
      m.close();
      const again = new MirrorDb(join(dir, 'mirror.db'));
      assert.equal(again.lookup(1, Buffer.from('x [a3].mkv'))!.ino, ino);
      again.close();
    } catch (e) {
      try {
        m.close();
      } catch {
        // already closed
      }
      throw e;
    }
  });
});

describe('drive view dupes: the plan', () => {
  const dir = tempDir('pogfs-dv-dupes-');

  it('keeps the oldest or the newest, limits to a subtree, and leaves Google documents out', () => {
    const m = new MirrorDb(join(dir, 'mirror.db'));
    try {
      const inval: Invalidation = { entries: [], inodes: [] };
      const file = (id: string, name: string, parent: string, created: number, md5 = 'same', mime = 'video/mp4'): MirrorItem => ({
        id, parent, name, mime, size: 100, md5, headRev: undefined, createdMs: created, modifiedMs: created, target: undefined,
      });
      const folder = (id: string, name: string, parent: string, created: number): MirrorItem => ({ ...file(id, name, parent, created, ''), mime: FOLDER_MIME, md5: undefined, size: 0 });
      m.transaction(() => {
        m.setRoot('ROOT');
        const dirty = new Set<number>([1]);
        for (const i of [folder('A', 'A', 'ROOT', 1), folder('B', 'B', 'ROOT', 2), file('f1', 'one.mp4', 'A', 30), file('f2', 'two.mp4', 'A', 10), file('f3', 'three.mp4', 'B', 20), file('g1', 'doc', 'A', 5, 'same', 'application/vnd.google-apps.document')]) m.upsertItem(i, 1, dirty, inval);
        m.rename(dirty, inval);
      });
      const oldest = planDupes(m, 'oldest', undefined);
      assert.deepEqual(oldest.files, [{ md5: 'same', size: 100, keep: { id: 'f2', path: '/A/two.mp4' }, extras: [{ id: 'f3', path: '/B/three.mp4' }, { id: 'f1', path: '/A/one.mp4' }] }]);
      assert.equal(oldest.bytes_reclaimable, 200);
      assert.equal(planDupes(m, 'newest', undefined).files[0].keep.id, 'f1');
      const inA = planDupes(m, 'oldest', '/A');
      assert.deepEqual(inA.files[0].extras, [{ id: 'f1', path: '/A/one.mp4' }]);
      assert.deepEqual(planDupes(m, 'oldest', '/B').files, []);
      assert.deepEqual(oldest.folders, []);
    } finally {
      m.close();
    }
  });
});
