/**
 * How many requests reach the daemon, counted by its metrics (per FUSE op): readdirplus
 * fills a listing's attributes so a walk that stats every name asks nothing more; the
 * flush of a handle that cannot write is answered by the binding itself; forgets come in
 * batches and still free what was unlinked.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { mountFresh, pogfsOk, sh, type MountedVolume } from './support/mount';

/** One sample of a Prometheus text exposition: `name{labels} value` (0 when absent). */
function sample(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

/** Requests of `op` the daemon has answered. */
const ops = (text: string, op: string): number => sample(text, 'pogfs_fuse_op_duration_seconds_count', `{op="${op}"}`);

/** Mounts (again) with metrics on a free port; returns the scrape address. */
function mountWithMetrics(m: MountedVolume): string {
  pogfsOk(['mount', m.volume, m.mnt, '--metrics', '0']);
  const url = (JSON.parse(readFileSync(join(m.volume, 'daemon.json'), 'utf8')) as { metrics?: string }).metrics;
  assert.ok(url);
  return url;
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  assert.equal(res.status, 200);
  return res.text();
}

describe('FUSE requests reaching the daemon', () => {
  it('after a cold mount, stat of every listed name asks no lookup or getattr per name (readdirplus), with the right attributes', async () => {
    const m = mountFresh();
    const n = 300;
    sh(`mkdir ${m.p('d')} && cd ${m.p('d')} && for i in $(seq 1 ${n}); do head -c $i /dev/urandom > file-$i; chmod 6$((i % 8))0 file-$i; done`);
    m.umount();
    const url = mountWithMetrics(m);
    try {
      const before = await scrape(url);
      // The glob lists the directory (one process), stat then looks at every name.
      const out = sh(`stat -c '%n %s %a' ${m.p('d')}/*`).trim().split('\n');
      const after = await scrape(url);
      assert.equal(out.length, n);
      for (const line of out) {
        const [path, size, mode] = line.split(' ');
        const i = Number(path.slice(path.lastIndexOf('-') + 1));
        assert.equal(Number(size), i, path);
        assert.equal(mode, `6${i % 8}0`, path);
      }
      assert.ok(ops(after, 'readdirplus') - ops(before, 'readdirplus') >= 1);
      // The directory itself is looked up; none of its names are.
      assert.ok(ops(after, 'lookup') - ops(before, 'lookup') <= 2, `${ops(after, 'lookup') - ops(before, 'lookup')} lookups`);
      assert.ok(ops(after, 'getattr') - ops(before, 'getattr') <= 2, `${ops(after, 'getattr') - ops(before, 'getattr')} getattrs`);
    } finally {
      m.umount();
    }
  });

  it('closing a read-only file sends no flush to the daemon; closing a written one does', async () => {
    const m = mountFresh();
    sh(`mkdir ${m.p('d')} && for i in $(seq 1 50); do echo $i > ${m.p('d')}/f$i; done`);
    m.umount();
    const url = mountWithMetrics(m);
    try {
      const before = await scrape(url);
      assert.equal(sh(`cat ${m.p('d')}/f*`).trim().split('\n').length, 50);
      const read = await scrape(url);
      assert.ok(ops(read, 'open') - ops(before, 'open') >= 50);
      assert.ok(ops(read, 'release') - ops(before, 'release') >= 50);
      assert.equal(ops(read, 'flush') - ops(before, 'flush'), 0);
      sh(`echo more >> ${m.p('d', 'f1')}`);
      const written = await scrape(url);
      assert.ok(ops(written, 'flush') - ops(read, 'flush') >= 1);
      assert.equal(readFileSync(m.p('d', 'f1'), 'utf8'), '1\nmore\n');
    } finally {
      m.umount();
    }
  });

  it('a directory listed again comes from the kernel\'s cache, until it changes through the mount', async () => {
    const m = mountFresh();
    sh(`mkdir ${m.p('d')} && for i in $(seq 1 20); do echo $i > ${m.p('d')}/f$i; done`);
    m.umount();
    const url = mountWithMetrics(m);
    const listings = (text: string): number => ops(text, 'readdir') + ops(text, 'readdirplus');
    const ls = (): string[] => sh(`ls -A ${m.p('d')}`).trim().split('\n').sort();
    const names = Array.from({ length: 20 }, (_, i) => `f${i + 1}`);
    try {
      assert.deepEqual(ls(), [...names].sort());
      const first = await scrape(url);
      assert.deepEqual(ls(), [...names].sort());
      const again = await scrape(url);
      assert.equal(listings(again) - listings(first), 0);
      assert.ok(ops(again, 'opendir') > ops(first, 'opendir'));
      // Each change drops the cached listing.
      sh(`touch ${m.p('d', 'new')}`);
      assert.deepEqual(ls(), [...names, 'new'].sort());
      sh(`rm ${m.p('d', 'f1')} && mv ${m.p('d', 'f2')} ${m.p('d', 'moved')}`);
      assert.deepEqual(ls(), [...names.slice(2), 'moved', 'new'].sort());
      sh(`mkdir ${m.p('e')} && mv ${m.p('d', 'f3')} ${m.p('e', 'f3')}`);
      assert.deepEqual(ls(), [...names.slice(3), 'moved', 'new'].sort());
      const changed = await scrape(url);
      assert.ok(listings(changed) - listings(again) >= 3);
    } finally {
      m.umount();
    }
  });

  it('files listed, opened, unlinked and closed all at once are freed: their blocks leave the store', async () => {
    const m = mountFresh();
    const n = 200;
    // Distinct content: one block each.
    sh(`mkdir ${m.p('d')} && for i in $(seq 1 ${n}); do head -c 4096 /dev/urandom > ${m.p('d')}/f$i; done`);
    m.umount();
    const url = mountWithMetrics(m);
    try {
      const blocks = async (): Promise<number> => sample(await scrape(url), 'pogfs_block_store_blocks');
      const full = await blocks();
      assert.ok(full >= n, `${full} blocks`);
      // Listed (each name a lookup the kernel holds), held open, unlinked, then every
      // descriptor closed at process exit: the kernel forgets the inodes in a burst.
      const holder = `
        const fs = require('node:fs');
        const dir = ${JSON.stringify(m.p('d'))};
        const names = fs.readdirSync(dir);
        for (const name of names) fs.statSync(dir + '/' + name);
        const fds = names.map((name) => fs.openSync(dir + '/' + name, 'r'));
        for (const name of names) fs.unlinkSync(dir + '/' + name);
        if (fds.length !== ${n}) process.exit(3);
      `;
      const r = spawnSync(process.execPath, ['-e', holder], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      let now = await blocks();
      for (const deadline = Date.now() + 30_000; now > full - n && Date.now() < deadline; ) {
        await sleep(200);
        now = await blocks();
      }
      assert.ok(now <= full - n, `${now} blocks left of ${full}, ${n} files freed`);
      assert.deepEqual(sh(`ls -A ${m.p('d')}`), '');
    } finally {
      m.umount();
    }
  });

  it("rm of files nobody holds sends no setattr to the daemon (the binding acknowledges the kernel's write-back of an unreachable inode's times); a file still open keeps its own", async () => {
    const m = mountFresh();
    const n = 100;
    sh(`mkdir ${m.p('d')} && for i in $(seq 1 ${n}); do echo $i > ${m.p('d')}/f$i; done && echo kept > ${m.p('held')}`);
    m.umount();
    const url = mountWithMetrics(m);
    try {
      const before = await scrape(url);
      sh(`rm ${m.p('d')}/f*`);
      const removed = await scrape(url);
      assert.equal(ops(removed, 'unlink') - ops(before, 'unlink'), n);
      assert.equal(ops(removed, 'setattr') - ops(before, 'setattr'), 0);
      assert.equal(sh(`ls -A ${m.p('d')}`), '');
      // The write-back was acknowledged, not refused: an error there would be kept against
      // the whole filesystem and fail the next syncfs.
      sh(`sync -f ${m.mnt}`);
      // Unlinked while open: not freed, so its new ctime reaches the daemon, and the open
      // descriptor still sees the file whole.
      const holder = `
        const fs = require('node:fs');
        const path = ${JSON.stringify(m.p('held'))};
        const fd = fs.openSync(path, 'r');
        const ctime = fs.fstatSync(fd).ctimeMs;
        const t = Date.now(); while (Date.now() - t < 20) {}
        fs.unlinkSync(path);
        const st = fs.fstatSync(fd);
        process.stdout.write(JSON.stringify({ nlink: st.nlink, newer: st.ctimeMs > ctime, data: fs.readFileSync(fd, 'utf8') }));
      `;
      const r = spawnSync(process.execPath, ['-e', holder], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { nlink: 0, newer: true, data: 'kept\n' });
      const held = await scrape(url);
      assert.ok(ops(held, 'setattr') - ops(removed, 'setattr') >= 1, 'the open file\'s ctime reached the daemon');
    } finally {
      m.umount();
    }
  });
});
