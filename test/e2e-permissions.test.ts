import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { describe, it } from 'node:test';
import { mountFresh } from './support/mount';

const NOBODY = 65534;

/** Runs a shell command as another user and returns what failed, one errno word per line. */
function asUser(uid: number, command: string): string {
  try {
    return execFileSync('/bin/sh', ['-c', command], { encoding: 'utf8', uid, gid: uid, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout: string; stderr: string };
    return `${e.stdout}FAILED: ${e.stderr}`;
  }
}

describe('permissions for other users on a root mount', { skip: process.getuid?.() !== 0 ? 'needs root' : false }, () => {
  const m = mountFresh();
  // The temporary directories above the mount are private: open them up for the other user.
  chmodSync(dirname(m.mnt), 0o755);
  chmodSync(dirname(dirname(m.mnt)), 0o755);

  it('the volume is visible to other users (allow_other)', () => {
    writeFileSync(m.p('public'), 'hello');
    chmodSync(m.p('public'), 0o644);
    assert.equal(asUser(NOBODY, `cat '${m.p('public')}'`), 'hello');
  });

  it('POSIX permission bits are enforced', () => {
    mkdirSync(m.p('private'), { mode: 0o700 });
    writeFileSync(m.p('private', 'secret'), 's');
    writeFileSync(m.p('readonly'), 'r');
    chmodSync(m.p('readonly'), 0o644);
    assert.match(asUser(NOBODY, `ls '${m.p('private')}'`), /FAILED: .*Permission denied/);
    assert.match(asUser(NOBODY, `cat '${m.p('private', 'secret')}'`), /FAILED: .*Permission denied/);
    assert.match(asUser(NOBODY, `echo x >> '${m.p('readonly')}'`), /FAILED: .*Permission denied/);
    assert.match(asUser(NOBODY, `touch '${m.p('newfile')}'`), /FAILED: .*Permission denied/);
    assert.match(asUser(NOBODY, `chmod 777 '${m.p('readonly')}'`), /FAILED: .*Operation not permitted/);
    assert.match(asUser(NOBODY, `chown ${NOBODY} '${m.p('readonly')}'`), /FAILED: .*Operation not permitted/);
  });

  it('other users create files they own in a shared directory; the sticky bit protects others', () => {
    mkdirSync(m.p('shared'));
    chmodSync(m.p('shared'), 0o1777);
    writeFileSync(m.p('shared', 'roots'), 'r');
    assert.equal(asUser(NOBODY, `echo mine > '${m.p('shared', 'theirs')}' && stat -c '%u %g' '${m.p('shared', 'theirs')}'`).trim(), `${NOBODY} ${NOBODY}`);
    assert.match(asUser(NOBODY, `rm -f '${m.p('shared', 'roots')}'`), /FAILED: .*Operation not permitted/);
    assert.equal(asUser(NOBODY, `rm '${m.p('shared', 'theirs')}' && echo gone`).trim(), 'gone');
  });
});
