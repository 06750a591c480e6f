/**
 * A volume whose metadata is in PostgreSQL (`pogfs init --meta postgres://…`), through the
 * real kernel mount on one machine: files written, renamed and linked, read back after a
 * remount; the namespace is in the database, not in meta.db. gc and stats refuse such a
 * volume in one line for now (fsck checks it: test/e2e-postgres-fsck.test.ts).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { makeArchiverTree } from './support/corpus';
import { isMounted, mountFresh, pogfs, sh } from './support/mount';
import { queryPostgres, startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

const server = startPostgres();

describe('a volume with its metadata in PostgreSQL', () => {
  const url = server.createDatabase();
  const m = mountFresh(['--meta', url]);
  const big = randomBytes(300 * 1024 + 17);

  it('records the URL and mounts: files, directories, renames, links and symlinks work', async () => {
    try {
      assert.equal(fs.readFileSync(join(m.volume, 'meta.url'), 'utf8').trim(), url);
      fs.mkdirSync(m.p('dir'));
      fs.writeFileSync(m.p('dir', 'big.bin'), big);
      fs.writeFileSync(m.p('small.txt'), 'hello postgres\n');
      fs.renameSync(m.p('small.txt'), m.p('dir', 'renamed.txt'));
      fs.linkSync(m.p('dir', 'big.bin'), m.p('hardlink.bin'));
      fs.symlinkSync('dir/renamed.txt', m.p('link'));
      fs.writeFileSync(m.p('gone'), 'x');
      fs.unlinkSync(m.p('gone'));
      assert.deepEqual(fs.readdirSync(m.mnt).sort(), ['dir', 'hardlink.bin', 'link']);
      assert.deepEqual(fs.readdirSync(m.p('dir')).sort(), ['big.bin', 'renamed.txt']);
      assert.ok(fs.readFileSync(m.p('dir', 'big.bin')).equals(big));
      assert.equal(fs.readFileSync(m.p('link'), 'utf8'), 'hello postgres\n');
      assert.equal(fs.statSync(m.p('hardlink.bin')).nlink, 2);
    } finally {
      m.umount();
    }
    // The namespace is in PostgreSQL: names as bytea rows, the file's block rows.
    const names = (await queryPostgres(url, "SELECT convert_from(name, 'UTF8') AS name FROM dentries ORDER BY name")).map((r) => r.name);
    assert.deepEqual(names, ['big.bin', 'dir', 'hardlink.bin', 'link', 'renamed.txt']);
    const blocks = await queryPostgres(url, 'SELECT count(*)::int AS n FROM blocks');
    assert.equal(blocks[0].n, 4, 'a 300 KiB file is three 128 KiB block rows, the small file one');
  });

  it('keeps everything across a remount', () => {
    m.mount();
    try {
      assert.ok(fs.readFileSync(m.p('hardlink.bin')).equals(big));
      assert.equal(fs.readFileSync(m.p('dir', 'renamed.txt'), 'utf8'), 'hello postgres\n');
      assert.equal(fs.readlinkSync(m.p('link')), 'dir/renamed.txt');
      fs.renameSync(m.p('dir'), m.p('moved'));
      assert.equal(fs.existsSync(m.p('link')), false, 'the symlink dangles once its directory moved');
    } finally {
      m.umount();
    }
    m.mount();
    try {
      assert.deepEqual(fs.readdirSync(m.mnt).sort(), ['hardlink.bin', 'link', 'moved']);
      assert.ok(fs.readFileSync(m.p('moved', 'big.bin')).equals(big));
      // gc through the daemon would read meta.db's (empty) block rows: it refuses, and removes nothing.
      const gc = pogfs(['gc', m.volume]);
      assert.notEqual(gc.status, 0);
      assert.match(gc.stderr, /keeps its metadata in postgres: .*do not support such a volume yet/);
    } finally {
      m.umount();
    }
    m.mount(); // a fresh page cache: the bytes come from the block store
    try {
      assert.ok(fs.readFileSync(m.p('moved', 'big.bin')).equals(big));
    } finally {
      m.umount();
    }
  });

  it('cp -a, tar and rsync -aH round trips are identical, also after a remount', () => {
    const src = join(tempDir(), 'src');
    fs.mkdirSync(src);
    makeArchiverTree(src);
    m.mount();
    try {
      sh(`cp -a '${src}' '${m.p('cp')}'`);
      sh(`mkdir '${m.p('tar')}' && tar --format=posix -C '${src}' -cf - . | tar -C '${m.p('tar')}' -xpf -`);
      sh(`rsync -aH '${src}/' '${m.p('rsync')}/'`);
      for (const copy of ['cp', 'tar', 'rsync']) sh(`diff -r --no-dereference '${src}' '${m.p(copy)}'`);
      assert.equal(sh(`rsync -aHi --dry-run '${src}/' '${m.p('rsync')}/'`).trim(), '');
    } finally {
      m.umount();
    }
    m.mount();
    try {
      for (const copy of ['cp', 'tar', 'rsync']) sh(`diff -r --no-dereference '${src}' '${m.p(copy)}'`);
      assert.equal(sh(`stat -c '%y %a %h' '${m.p('tar', 'a', 'f4')}'`).trim(), sh(`stat -c '%y %a %h' '${src}/a/f4'`).trim());
      assert.equal(sh(`stat -c '%h' '${m.p('rsync', 'a', 'f3')}'`).trim(), '2');
      sh(`rm -r '${m.p('cp')}'`);
    } finally {
      m.umount();
    }
  });

  it('gc and stats refuse it in one line, for now', () => {
    assert.ok(!isMounted(m.mnt));
    for (const cmd of [['gc', m.volume], ['stats', m.volume]]) {
      const r = pogfs(cmd);
      assert.notEqual(r.status, 0, `pogfs ${cmd[0]} should refuse`);
      assert.match(r.stderr, /keeps its metadata in postgres: .*(does|do) not support such a volume yet/);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
  });

  it('init refuses a password in the URL without printing it, and leaves nothing behind', () => {
    const dir = join(tempDir(), 'vol');
    const withPassword = url.replace('postgres://postgres@', 'postgres://postgres:s3cretpw@');
    const r = pogfs(['init', dir, '--meta', withPassword]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /PGPASSWORD/);
    assert.doesNotMatch(r.stderr + r.stdout, /s3cretpw/);
    assert.ok(!fs.existsSync(dir));
    const again = pogfs(['init', dir, '--meta', url]);
    assert.equal(again.status, 2, 'a database that holds a volume is not given to a second one');
    assert.match(again.stderr, /already holds a pogfs volume/);
  });
});
