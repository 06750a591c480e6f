/**
 * Mount sessions through the real kernel mount: a copy of a PostgreSQL volume's directory
 * (as on a second machine: its own block store, the same meta.url) is refused in one line
 * while the volume is mounted; once the first daemon is killed its session expires and
 * the copy mounts; a clean unmount lets the next mount in at once. The daemons run with a
 * 2 s session expiry (POGFS_SESSION_EXPIRY_SECONDS, which only tests set).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isMounted, mountFresh, pogfs, pogfsOk, sh, unmountAnyway } from './support/mount';
import { queryPostgres, startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

const EXPIRY_S = 2;
// Inherited by every daemon this file starts.
process.env.POGFS_SESSION_EXPIRY_SECONDS = String(EXPIRY_S);

const server = startPostgres();
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function sessionCount(url: string): Promise<number> {
  return (await queryPostgres(url, 'SELECT count(*)::int AS n FROM sessions'))[0].n as number;
}


describe('mount sessions of a PostgreSQL volume', () => {
  const url = server.createDatabase();
  const m = mountFresh(['--meta', url]);
  const dir = tempDir();
  const copy = join(dir, 'copy');
  const mnt2 = join(dir, 'mnt2');
  fs.mkdirSync(mnt2);

  it('refuses a copy of the volume while it is mounted, in one line; the copy mounts once the killed daemon expired', async () => {
    try {
      fs.writeFileSync(m.p('first.txt'), 'from the first mount\n');
      assert.equal(await sessionCount(url), 1);
      // A second machine with the same meta.url: its own directory, no daemon record of ours.
      sh(`cp -a '${m.volume}' '${copy}'`);
      fs.rmSync(join(copy, 'daemon.json'), { force: true });
      const pid = m.daemonPid();

      const refused = pogfs(['mount', copy, mnt2]);
      assert.equal(refused.status, 2, `exit code ${refused.status}: ${refused.stderr}`);
      const lines = refused.stderr.trim().split('\n');
      assert.equal(lines.length, 1, refused.stderr);
      const host = hostname().replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
      assert.match(
        lines[0],
        new RegExp(`in use by a mount on host ${host} \\(pid ${pid}, last seen \\d+\\.\\d s ago\\): unmount it there, or wait ${EXPIRY_S} s after it stopped`),
      );
      assert.doesNotMatch(refused.stderr, /postgres:\/\//, 'the URL is not printed');
      assert.ok(!isMounted(mnt2));
      assert.equal(await sessionCount(url), 1, 'the refused mount left no session');

      process.kill(pid, 'SIGKILL');
      await sleep(EXPIRY_S * 1000 + 1000);
      pogfsOk(['mount', copy, mnt2]);
      assert.ok(fs.readdirSync(mnt2).includes('first.txt'), 'the names are in the shared database');
      fs.writeFileSync(join(mnt2, 'second.txt'), 'from the copy\n');
      assert.equal(fs.readFileSync(join(mnt2, 'second.txt'), 'utf8'), 'from the copy\n');
      assert.equal(await sessionCount(url), 1, "the dead daemon's session was replaced");
    } finally {
      unmountAnyway(mnt2);
      unmountAnyway(m.mnt);
    }
  });

  it('a clean unmount ends the session: the next mount needs no wait', async () => {
    try {
      assert.equal(await sessionCount(url), 0);
      pogfsOk(['mount', copy, mnt2]);
      assert.equal(await sessionCount(url), 1);
      pogfsOk(['umount', mnt2]);
      assert.equal(await sessionCount(url), 0);
      // The original directory mounts straight away (its dead mount point is cleaned up).
      pogfsOk(['mount', m.volume, m.mnt]);
      // The names are shared; second.txt's block is only in the copy's store (why one mount at a time, for now).
      assert.deepEqual(fs.readdirSync(m.mnt).sort(), ['first.txt', 'second.txt']);
      fs.writeFileSync(m.p('third.txt'), 'back on the first\n');
      assert.equal(fs.readFileSync(m.p('third.txt'), 'utf8'), 'back on the first\n');
      assert.equal(await sessionCount(url), 1);
    } finally {
      unmountAnyway(mnt2);
      unmountAnyway(m.mnt);
    }
  });
});
