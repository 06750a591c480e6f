import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { makeArchiverTree } from './support/corpus';
import { mountFresh, sh } from './support/mount';
import { tempDir } from './support/tmp';

describe('ordinary programs on a mounted volume', () => {
  const m = mountFresh();
  const src = join(tempDir(), 'src');
  mkdirSync(src);
  makeArchiverTree(src);

  it('cp -a round trip is identical (diff -r) and keeps times, modes, links', () => {
    sh(`cp -a '${src}' '${m.p('cp')}'`);
    sh(`diff -r --no-dereference '${src}' '${m.p('cp')}'`);
    const back = join(tempDir(), 'back');
    sh(`cp -a '${m.p('cp')}' '${back}' && diff -r --no-dereference '${src}' '${back}'`);
    assert.equal(sh(`stat -c '%y %a' '${m.p('cp', 'a', 'f4')}'`).trim(), sh(`stat -c '%y %a' '${src}/a/f4'`).trim());
    assert.equal(sh(`stat -c '%a' '${m.p('cp', 'a', 'f1')}'`).trim(), '600');
    assert.equal(sh(`stat -c '%h' '${m.p('cp', 'a', 'f3')}'`).trim(), '2');
    assert.equal(sh(`readlink '${m.p('cp', 'dangling')}'`).trim(), '/nonexistent');
  });

  it('tar c | tar x round trip is identical, mtimes included', () => {
    // pax format: GNU tar's default format keeps whole seconds only
    sh(`mkdir '${m.p('tar')}' && tar --format=posix -C '${src}' -cf - . | tar -C '${m.p('tar')}' -xpf -`);
    sh(`diff -r --no-dereference '${src}' '${m.p('tar')}'`);
    // directory sizes differ between filesystems by design; everything else must match
    const listing = (dir: string) =>
      sh(`cd '${dir}' && find . \\( -type d -printf '%p %M dir' -o -printf '%p %M %s' \\) -printf ' %n %TY-%Tm-%Td %TT %l\\n' | sort`);
    assert.equal(listing(m.p('tar')), listing(src));
  });

  it('rsync -a copies in and out with nothing left to transfer', () => {
    sh(`rsync -aH '${src}/' '${m.p('rsync')}/'`);
    sh(`diff -r --no-dereference '${src}' '${m.p('rsync')}'`);
    const again = sh(`rsync -aHi --dry-run '${src}/' '${m.p('rsync')}/'`);
    assert.equal(again.trim(), '', `rsync still wants to transfer:\n${again}`);
  });

  it('git init, add, commit, log, fsck', () => {
    const repo = m.p('repo');
    sh(`mkdir '${repo}' && cp -a '${src}/a' '${repo}/a'`);
    const git = `git -c user.email=t@example.com -c user.name=t -c init.defaultBranch=main`;
    sh(`cd '${repo}' && ${git} init -q && ${git} add -A && ${git} commit -qm first`);
    writeFileSync(join(repo, 'a', 'f1'), 'changed\n');
    sh(`cd '${repo}' && ${git} commit -qam second && ${git} gc -q`);
    const log = sh(`cd '${repo}' && git log --format=%s`);
    assert.deepEqual(log.trim().split('\n'), ['second', 'first']);
    sh(`cd '${repo}' && git fsck --strict --no-dangling`);
    assert.equal(sh(`cd '${repo}' && git status --porcelain`), '');
  });

  it('a SQLite database in WAL mode (shared memory mapping) works and passes integrity_check', () => {
    const path = m.p('app.sqlite');
    const db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)');
    const ins = db.prepare('INSERT INTO t (v) VALUES (?)');
    db.transaction(() => {
      for (let i = 0; i < 20000; i++) ins.run(`row ${i} ${'x'.repeat(i % 300)}`);
    })();
    db.exec('DELETE FROM t WHERE id % 3 = 0; VACUUM;');
    assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
    db.close();
    const again = new Database(path, { readonly: true });
    assert.equal((again.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n, 13334);
    again.close();
    assert.equal(sh(`sqlite3 '${path}' 'PRAGMA integrity_check; SELECT count(*) FROM t;'`).trim(), 'ok\n13334');
  });
});
