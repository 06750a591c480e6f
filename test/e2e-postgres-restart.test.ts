/**
 * PostgreSQL restarted under a mounted volume's load: a process writes and closes files
 * while the server is restarted twice; the daemon lives on and serves, says the outage in
 * its log, and after a remount every file whose close succeeded reads back identical. A
 * crash of the server: what was synced stays; when the crash lost a commit, syncs answer
 * EIO until a remount (and the log says why), and the daemon lives on.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isMounted, mountFresh } from './support/mount';
import { startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

// The WAL writer slowed down, so that a crash of the server likely loses the last
// asynchronous commits (a restart loses none: a shutdown writes them all).
const server = startPostgres(['wal_writer_delay=10s']);

/**
 * File i's bytes: 1 byte to ~300 KiB (one to three blocks), a xorshift stream seeded by i.
 * Self-contained (no imports): the writer process runs its source text.
 */
function content(i: number): Buffer {
  const size = 1 + ((i * 7919) % 300_000);
  const out = Buffer.alloc(size);
  let x = (Math.imul(i + 1, 2654435761) >>> 0) || 1;
  for (let k = 0; k < size; k++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[k] = x & 255;
  }
  return out;
}

/** At most this many files: the loop is bounded even if the stop file is never seen. */
const MAX_FILES = 3000;

/** Writes f0, f1, … into `dir` until `stopFile` exists; prints "ok i" after each close that succeeded. */
const WRITER = `
const fs = require('fs');
const [dir, stopFile, max] = process.argv.slice(1);
const content = ${content.toString()};
for (let i = 0; i < Number(max) && !fs.existsSync(stopFile); i++) {
  try {
    const fd = fs.openSync(dir + '/f' + i, 'w');
    try { fs.writeSync(fd, content(i)); } finally { fs.closeSync(fd); }
    process.stdout.write('ok ' + i + '\\n');
  } catch (e) {
    process.stdout.write('err ' + i + ' ' + e.code + '\\n');
  }
}
`;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('a PostgreSQL volume while its server restarts', () => {
  it('keeps serving, and loses no file whose close succeeded', async () => {
    const m = mountFresh(['--meta', server.createDatabase()]);
    const stopFile = join(tempDir(), 'stop');
    let out = '';
    try {
      const pid = m.daemonPid();
      fs.mkdirSync(m.p('w'));
      const writer = spawn(process.execPath, ['-e', WRITER, m.p('w'), stopFile, String(MAX_FILES)], { stdio: ['ignore', 'pipe', 'inherit'] });
      writer.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((resolve) => writer.on('exit', resolve));
      try {
        for (let round = 0; round < 2; round++) {
          await sleep(800);
          server.restart();
        }
        await sleep(800);
      } finally {
        fs.writeFileSync(stopFile, '');
      }
      assert.equal(await exited, 0);

      const lines = out.trim().split('\n');
      const ok = lines.filter((l) => l.startsWith('ok ')).map((l) => Number(l.split(' ')[1]));
      const failed = lines.filter((l) => l.startsWith('err '));
      assert.ok(ok.length > 20, `files were written through the restarts (${ok.length})`);
      assert.deepEqual(failed, [], 'no call failed: each waited for the server');

      // The daemon lives on and serves.
      process.kill(pid, 0);
      assert.ok(isMounted(m.mnt));
      fs.writeFileSync(m.p('after'), 'still here\n');
      assert.equal(fs.readFileSync(m.p('after'), 'utf8'), 'still here\n');
      const log = fs.readFileSync(join(m.volume, 'pogfs.log'), 'utf8');
      assert.match(log, /lost the connection to PostgreSQL/);
    } finally {
      fs.writeFileSync(stopFile, '');
      m.umount();
    }
    m.mount();
    try {
      const ok = out.split('\n').filter((l) => l.startsWith('ok ')).map((l) => Number(l.split(' ')[1]));
      for (const i of ok) assert.ok(fs.readFileSync(m.p('w', `f${i}`)).equals(content(i)), `f${i} reads back as written`);
      assert.equal(fs.readFileSync(m.p('after'), 'utf8'), 'still here\n');
    } finally {
      m.umount();
    }
  });

  it('lives through a crash of the server: what was synced stays, a lost commit makes syncs fail until a remount', async () => {
    const m = mountFresh(['--meta', server.createDatabase()]);
    const synced = Buffer.alloc(200_000, 'a');
    try {
      const pid = m.daemonPid();
      const fd = fs.openSync(m.p('synced'), 'w');
      fs.writeSync(fd, synced);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.writeFileSync(m.p('unsynced'), 'maybe\n'); // committed asynchronously: a crash may lose it
      server.stop(); // a crash
      server.start();
      const after = fs.openSync(m.p('after'), 'w');
      fs.writeSync(after, 'written after the crash\n');
      let syncFailed = false;
      try {
        fs.fsyncSync(after);
      } catch (err) {
        assert.equal((err as NodeJS.ErrnoException).code, 'EIO');
        syncFailed = true;
      }
      fs.closeSync(after);
      process.kill(pid, 0);
      assert.ok(fs.readFileSync(m.p('synced')).equals(synced));
      const log = fs.readFileSync(join(m.volume, 'pogfs.log'), 'utf8');
      assert.equal(/lost changes it had acknowledged/.test(log), syncFailed, 'a failing sync is explained in the log, and only then');
    } finally {
      m.umount();
    }
    m.mount();
    try {
      assert.ok(fs.readFileSync(m.p('synced')).equals(synced));
      fs.writeFileSync(m.p('again'), 'x');
      const fd = fs.openSync(m.p('again'), 'r+');
      fs.fsyncSync(fd); // a new mount syncs again
      fs.closeSync(fd);
    } finally {
      m.umount();
    }
  });
});
