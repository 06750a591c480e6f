import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { BlockStore } from '../src/store/block-store';
import { hashBlock } from '../src/store/hash';
import { mountFresh, pogfs, pogfsOk, sh } from './support/mount';

interface LiveGc {
  removedBlocks: number;
  storedBlocks: number;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Blocks the store holds that no committed block row names, counted from outside the daemon. */
function unreferencedNow(volume: string): number {
  const db = new Database(join(volume, 'meta.db'), { readonly: true });
  const rows = new Set((db.prepare('SELECT DISTINCT hash FROM blocks').pluck().all() as Buffer[]).map((h) => h.toString('hex')));
  db.close();
  const store = BlockStore.open(join(volume, 'blocks'), { readOnly: true });
  let n = 0;
  for (const h of store.scanHashes()) if (!rows.has(h.toString('hex'))) n++;
  void store.close();
  return n;
}

describe('gc on a mounted volume (done by the daemon)', () => {
  const m = mountFresh();

  it('removes exactly the unreferenced blocks and keeps shared, open-unlinked and concurrently written data', async () => {
    const a = randomBytes(1024 * 1024);
    writeFileSync(m.p('a'), a);
    writeFileSync(m.p('b'), a); // shares every block with a
    const c = randomBytes(512 * 1024);
    writeFileSync(m.p('c'), c);
    writeFileSync(m.p('d'), randomBytes(256 * 1024));
    const e = randomBytes(384 * 1024);
    writeFileSync(m.p('e'), e);
    // e is held open by another process and unlinked: its blocks must survive gc.
    // It prints its sha256 of the file when told to, after gc.
    const holder = spawn(
      'python3',
      ['-c', `import sys, hashlib\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\nsys.stdin.readline()\nprint(hashlib.sha256(f.read()).hexdigest(), flush=True)`, m.p('e')],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    let held = '';
    holder.stdout.on('data', (d: Buffer) => (held += d.toString()));
    while (!held.includes('open')) await sleep(10);
    sh(`rm '${m.p('e')}' '${m.p('d')}'`);

    // Leaked blocks, as a crash leaves them: stored with a reference but named by no row.
    // LMDB serves several processes, so the test adds them while the daemon runs.
    const orphans = [randomBytes(131072), randomBytes(131072), randomBytes(5000)];
    const store = BlockStore.open(join(m.volume, 'blocks'));
    await store.acquire(orphans.map((data) => ({ hash: hashBlock(data), data })));
    await store.close();
    await sleep(1500); // the daemon's metadata commit interval, so the outside recount sees d gone
    const expected = unreferencedNow(m.volume);
    assert.equal(expected, orphans.length);

    const dry = JSON.parse(pogfsOk(['gc', m.volume, '--dry-run', '--json'])) as LiveGc;
    assert.equal(dry.removedBlocks, orphans.length);
    const real = JSON.parse(pogfsOk(['gc', m.volume, '--json'])) as LiveGc;
    assert.equal(real.removedBlocks, orphans.length);
    assert.equal((JSON.parse(pogfsOk(['gc', m.volume, '--json'])) as LiveGc).removedBlocks, 0);

    assert.equal(sha(readFileSync(m.p('a'))), sha(a));
    assert.equal(sha(readFileSync(m.p('b'))), sha(a));
    assert.equal(sha(readFileSync(m.p('c'))), sha(c));
    const exited = new Promise((r) => holder.on('exit', r));
    holder.stdin.end('go\n');
    await exited;
    assert.equal(held.split('\n')[1], sha(e), 'the unlinked file held open changed under gc');
  });

  it('a writer deduplicating against garbage while gc runs never loses its data', async () => {
    const victims = Array.from({ length: 32 }, () => randomBytes(131072));
    const store = BlockStore.open(join(m.volume, 'blocks'));
    await store.acquire(victims.map((data) => ({ hash: hashBlock(data), data })));
    await store.close();
    const content = Buffer.concat(victims);
    const source = `${m.volume}.src`;
    writeFileSync(source, content);
    // A separate process writes the garbage's bytes again while gc runs (spawnSync blocks
    // this process, so the writer must not live here).
    const writer = spawn('/bin/sh', ['-c', `for i in 0 1 2 3 4 5 6 7; do cp '${source}' '${m.mnt}'/w$i; done`], { stdio: 'ignore' });
    const finished = new Promise<number | null>((r) => writer.on('exit', r));
    for (let i = 0; i < 4; i++) {
      const r = pogfs(['gc', m.volume]);
      assert.equal(r.status, 0, r.stderr);
    }
    assert.equal(await finished, 0);
    for (let i = 0; i < 8; i++) assert.equal(sha(readFileSync(m.p(`w${i}`))), sha(content), `w${i}`);
    m.umount();
    const fsck = pogfs(['fsck', m.volume, '--json']);
    const report = JSON.parse(fsck.stdout) as { findings: { kind: string; severity: string }[] };
    assert.deepEqual(report.findings.filter((f) => f.severity === 'error'), []);
    m.mount();
    for (let i = 0; i < 8; i++) assert.equal(sha(readFileSync(m.p(`w${i}`))), sha(content));
  });
});
