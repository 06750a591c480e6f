import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { isMounted } from './support/mount';
import { tempDir } from './support/tmp';

const ROOT = resolve(__dirname, '..', '..');

describe('the npm package', () => {
  it('npm pack ships what a user needs, installs into a scratch prefix, builds the binding, and mounts from there', () => {
    const dir = tempDir('pogfs-pack-', () => {
      if (isMounted(mnt)) spawnSync(join(prefix, 'bin', 'pogfs'), ['umount', mnt]);
      if (isMounted(mnt)) spawnSync('fusermount3', ['-u', '-z', mnt]);
    });
    const prefix = join(dir, 'prefix');
    const mnt = join(dir, 'mnt');
    const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, encoding: 'utf8' })) as {
      filename: string;
      files: { path: string }[];
    }[];
    const files = packed[0].files.map((f) => f.path);
    for (const needed of ['dist/src/cli/main.js', 'src/fuse/native/pogfs_fuse.c', 'binding.gyp', 'scripts/check-build-deps.js']) {
      assert.ok(files.includes(needed), `${needed} is not in the tarball`);
    }
    assert.equal(files.filter((f) => f.startsWith('dist/test/') || f.startsWith('dist/bench/') || f.startsWith('test/') || f.endsWith('.ts')).length, 0, 'tests, benches or sources shipped');

    // A global install into the scratch prefix, as a user would (npm asks which packages may run install scripts).
    const install = spawnSync(
      'npm',
      ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--allow-scripts=pogfs,better-sqlite3,lmdb,msgpackr-extract', join(dir, packed[0].filename)],
      { encoding: 'utf8', timeout: 600_000 },
    );
    assert.equal(install.status, 0, install.stderr);
    const bin = join(prefix, 'bin', 'pogfs');
    const version = spawnSync(bin, ['--version'], { encoding: 'utf8' });
    assert.equal(version.status, 0, version.stderr);
    assert.match(version.stdout, /^pogfs \d+\.\d+\.\d+/);
    assert.doesNotMatch(version.stdout, /NOT LOADED/);

    const vol = join(dir, 'vol');
    mkdirSync(mnt);
    execFileSync(bin, ['init', vol]);
    execFileSync(bin, ['mount', vol, mnt]);
    try {
      writeFileSync(join(mnt, 'hello'), 'from the packed install');
      assert.equal(readFileSync(join(mnt, 'hello'), 'utf8'), 'from the packed install');
    } finally {
      execFileSync(bin, ['umount', mnt]);
    }
    assert.equal(isMounted(mnt), false);
  });

  it('a machine without the build tools hears which packages to install', () => {
    const empty = tempDir('pogfs-nopath-');
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'check-build-deps.js')], { encoding: 'utf8', env: { PATH: empty } });
    assert.equal(r.status, 1);
    const lines = r.stderr.trim().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /missing pkg-config.*g\+\+.*apt-get install/);
  });
});
