import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { isMounted, pogfs, pogfsOk } from './support/mount';
import { tempDir } from './support/tmp';

const CLI = resolve(__dirname, '..', 'src', 'cli', 'main.js');

/**
 * mount(8) runs its helpers with no PATH, so mount.fuse3's shell finds `pogfs` only in
 * the default directories (scripts/setup.sh links it into /usr/bin). For the test, this
 * checkout goes first in that search, in /usr/local/sbin, and leaves with the test file.
 */
function pogfsOnSystemPath(): void {
  const shim = '/usr/local/sbin/pogfs';
  if (existsSync(shim)) return;
  mkdirSync('/usr/local/sbin', { recursive: true });
  writeFileSync(shim, `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`, { mode: 0o755 });
  after(() => rmSync(shim, { force: true }));
}

/** A volume, an empty mount point, and a PATH on which `pogfs` is this checkout. */
function setup(): { volume: string; mnt: string; env: NodeJS.ProcessEnv; bin: string } {
  const dir = tempDir('pogfs-fstab-', () => {
    if (isMounted(mnt) && pogfs(['umount', mnt]).status !== 0) spawnSync('fusermount3', ['-u', '-z', mnt]);
  });
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  const bin = join(dir, 'bin');
  mkdirSync(mnt);
  mkdirSync(bin);
  writeFileSync(join(bin, 'pogfs'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
  chmodSync(join(bin, 'pogfs'), 0o755);
  pogfsOk(['init', volume]);
  return { volume, mnt, bin, env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}` } };
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('mount(8) and /etc/fstab', () => {
  it('mount -t fuse.pogfs VOLUME DIR -o OPTIONS mounts through mount.fuse3, ignoring what mount(8) and systemd add', () => {
    pogfsOnSystemPath();
    const { volume, mnt, env } = setup();
    const r = run('mount', ['-t', 'fuse.pogfs', volume, mnt, '-o', 'no_sync_on_close,_netdev,noauto,x-systemd.automount,nofail'], env);
    assert.equal(r.status, 0, r.out);
    try {
      assert.ok(isMounted(mnt));
      writeFileSync(join(mnt, 'f'), 'via mount(8)');
      assert.equal(readFileSync(join(mnt, 'f'), 'utf8'), 'via mount(8)');
    } finally {
      pogfsOk(['umount', mnt]);
    }
  });

  it('an fstab line mounts with `mount DIR`; -o ro mounts read-only', () => {
    pogfsOnSystemPath();
    const { volume, mnt, env, bin } = setup();
    const fstab = join(bin, 'fstab');
    writeFileSync(fstab, `# pogfs\n${volume} ${mnt} fuse.pogfs ro,allow_other,_netdev,noauto,x-systemd.requires=network-online.target 0 0\n`);
    const r = run('mount', ['-T', fstab, mnt], env);
    assert.equal(r.status, 0, r.out);
    try {
      assert.ok(isMounted(mnt));
      assert.throws(() => writeFileSync(join(mnt, 'g'), 'x'), /EROFS/);
    } finally {
      pogfsOk(['umount', mnt]);
    }
  });

  it('a mount.pogfs helper (mount -t pogfs) takes mount(8)\'s arguments; pid_file= writes the daemon\'s pid', () => {
    const { volume, mnt, env, bin } = setup();
    const helper = join(bin, 'mount.pogfs');
    symlinkSync(CLI, helper);
    chmodSync(CLI, 0o755);
    const pidFile = join(bin, 'pogfs.pid');
    // mount(8) runs /sbin/mount.TYPE SPEC DIR [-sfnv] [-o OPTIONS]: called here the same way.
    assert.equal(run(helper, [volume, mnt, '-f', '-o', 'defaults'], env).status, 0);
    assert.equal(isMounted(mnt), false, '-f (fake) must not mount');
    const r = run(helper, [volume, mnt, '-n', '-o', `defaults,pid_file=${pidFile}`], env);
    assert.equal(r.status, 0, r.out);
    try {
      const pid = Number(readFileSync(pidFile, 'utf8').trim());
      const record = JSON.parse(readFileSync(join(volume, 'daemon.json'), 'utf8')) as { pid: number };
      assert.equal(pid, record.pid);
    } finally {
      pogfsOk(['umount', mnt]);
    }
    assert.equal(existsSync(pidFile), false, 'the pid file goes with the daemon');
  });

  it('an unknown option is one line naming it, exit code 2, nothing mounted', () => {
    const { volume, mnt, env } = setup();
    const r = run(process.execPath, [CLI, volume, mnt, '-o', 'no_sync_on_close,frobnicate'], env);
    assert.equal(r.status, 2, r.out);
    assert.equal(r.out.trim().split('\n').length, 1, r.out);
    assert.match(r.out, /unknown mount option "frobnicate"/);
    assert.equal(isMounted(mnt), false);
  });
});
