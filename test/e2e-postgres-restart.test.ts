/**
 * PostgreSQL restarted under a mounted volume's load: a process writes and closes files
 * while the server is restarted twice; the daemon lives on and serves, says the outage in
 * its log, and after a remount every file whose close succeeded reads back identical.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isMounted, mountFresh } from './support/mount';
import { startPostgres } from './support/postgres';
import { tempDir } from './support/tmp';

const server = startPostgres();

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
});
