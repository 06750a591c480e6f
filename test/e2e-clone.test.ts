import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { CLI, isMounted, mountFresh, pogfs, pogfsOk, sh } from './support/mount';
import { treeDigests, unmountQuietly } from './support/remote-mount';
import { tempDir } from './support/tmp';

/**
 * `pogfs clone` and read-only snapshots through a real mount: copies that share every
 * block and then change independently, snapshots that refuse every write, exact counts
 * (fsck clean, gc finds nothing) after removal, snapshots in the metadata backups, and
 * kill -9 in the middle of a large clone or removal.
 */

const B = 128 * 1024;

interface StatsJson {
  blocks: number;
  uniqueBytes: number;
  storedBytes: number;
  snapshots: { name: string; files: number; exclusiveBytes: number }[];
}

interface FsckJson {
  exitCode: number;
  findings: { kind: string; severity: string; count: number; examples: string[] }[];
}

const stats = (target: string): StatsJson => JSON.parse(pogfsOk(['stats', target, '--json'])) as StatsJson;

function fsckClean(volume: string): void {
  const r = pogfs(['fsck', volume, '--json']);
  const report = JSON.parse(r.stdout) as FsckJson;
  assert.equal(r.status, 0, `fsck: ${JSON.stringify(report.findings)}`);
}

/** `stat` of what a clone must keep: type and mode, owner, size, atime and mtime (ns). */
const kept = (path: string): string => sh(`stat -c '%f %u:%g %s %.9X %.9Y' '${path}'`).trim();
const KEPT_PATHS = ['big', 'sub', 'sub/small', 'sub/big-link', 'sub/sym'];

/** Python that tries one write-like call and prints the errno's name (or OK). */
const TRY = String.raw`
import errno, os, sys
def attempt(label, fn):
    try:
        fn()
        print(label, 'OK')
    except OSError as e:
        print(label, errno.errorcode[e.errno])
s = sys.argv[1]
live = sys.argv[2]
attempt('write', lambda: os.close(os.open(s + '/d/file', os.O_WRONLY)))
attempt('rdwr', lambda: os.close(os.open(s + '/d/file', os.O_RDWR)))
attempt('trunc-open', lambda: os.close(os.open(s + '/d/file', os.O_RDONLY | os.O_TRUNC)))
attempt('truncate', lambda: os.truncate(s + '/d/file', 1))
attempt('create', lambda: os.close(os.open(s + '/d/new', os.O_WRONLY | os.O_CREAT, 0o644)))
attempt('mkdir', lambda: os.mkdir(s + '/d/newdir'))
attempt('mkfifo', lambda: os.mkfifo(s + '/d/fifo'))
attempt('symlink', lambda: os.symlink('file', s + '/d/sym2'))
attempt('link-in', lambda: os.link(live + '/outside', s + '/d/in'))
attempt('link-out', lambda: os.link(s + '/d/file', live + '/out'))
attempt('unlink', lambda: os.unlink(s + '/d/file'))
attempt('rmdir', lambda: os.rmdir(s + '/d/empty'))
attempt('rename-within', lambda: os.rename(s + '/d/file', s + '/d/file2'))
attempt('rename-out', lambda: os.rename(s + '/d/file', live + '/moved'))
attempt('rename-in', lambda: os.rename(live + '/outside', s + '/d/moved'))
attempt('chmod', lambda: os.chmod(s + '/d/file', 0o777))
attempt('chown', lambda: os.chown(s + '/d/file', 1234, 1234))
attempt('utime', lambda: os.utime(s + '/d/file', (1, 1)))
attempt('setxattr', lambda: os.setxattr(s + '/d/file', 'user.y', b'2'))
attempt('removexattr', lambda: os.removexattr(s + '/d/file', 'user.x'))
attempt('snapdir-mkdir', lambda: os.mkdir(live + '/.snapshots/mine'))
attempt('snapdir-rename', lambda: os.rename(live + '/.snapshots', live + '/snaps'))
attempt('snapdir-rmdir', lambda: os.rmdir(live + '/.snapshots'))
attempt('snapdir-chmod', lambda: os.chmod(live + '/.snapshots', 0o777))
attempt('snapdir-replace', lambda: os.rename(live + '/emptydir', live + '/.snapshots'))
attempt('snapshot-rename', lambda: os.rename(s, live + '/.snapshots/other'))
`;

describe('pogfs clone and snapshots', () => {
  const m = mountFresh();

  it('clone and snapshot have --help; a path off any pogfs mount is a usage error (exit 2)', () => {
    for (const cmd of [['clone'], ['snapshot'], ['snapshot', 'create'], ['snapshot', 'list'], ['snapshot', 'rm']]) {
      const r = pogfs([...cmd, '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /Usage: pogfs/);
    }
    const off = tempDir();
    const clone = pogfs(['clone', off, join(off, 'x')]);
    assert.equal(clone.status, 2);
    assert.match(clone.stderr, /is not inside a mounted pogfs volume/);
    const snap = pogfs(['snapshot', 'list', off]);
    assert.equal(snap.status, 2);
    assert.match(snap.stderr, /is not a mount point/);
  });

  it('a clone shares every block, keeps modes, owners, times, xattrs, symlinks and hard links, then changes independently of its source', () => {
    mkdirSync(m.p('src', 'sub'), { recursive: true });
    sh(`head -c ${3 * B + 1000} /dev/urandom > '${m.p('src', 'big')}'`);
    writeFileSync(m.p('src', 'sub', 'small'), 'small file\n');
    sh(`ln '${m.p('src', 'big')}' '${m.p('src', 'sub', 'big-link')}'`);
    sh(`ln -s ../big '${m.p('src', 'sub', 'sym')}'`);
    sh(`chmod 640 '${m.p('src', 'big')}' && chown 1234:2345 '${m.p('src', 'sub', 'small')}' && touch -d '2001-02-03 04:05:06.123456789' '${m.p('src', 'sub', 'small')}'`);
    sh(`python3 -c "import os; os.setxattr('${m.p('src', 'big')}', 'user.note', b'kept')"`);
    // A link from outside the tree: not part of the clone.
    sh(`ln '${m.p('src', 'sub', 'small')}' '${m.p('outside-link')}'`);
    // Blocks of files just closed wait parked in the metadata; gc (a dry run changes
    // nothing) moves them into the store first, so the counts below compare like with like.
    pogfsOk(['gc', m.volume, '--dry-run']);
    const before = stats(m.mnt);
    const attrs = KEPT_PATHS.map((p) => kept(m.p('src', p)));
    // The kernel now holds a negative entry for the name (for 60 s): the clone must clear it.
    assert.ok(!existsSync(m.p('copy')));

    const r = pogfs(['clone', m.p('src'), m.p('copy')]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /cloned .* 5 inodes/);
    const after = stats(m.mnt);
    assert.equal(after.blocks, before.blocks, 'a clone stores no block');
    assert.equal(after.storedBytes, before.storedBytes);

    assert.deepEqual(KEPT_PATHS.map((p) => kept(m.p('copy', p))), attrs);
    assert.deepEqual(treeDigests(m.p('copy')), treeDigests(m.p('src')));
    assert.equal(statSync(m.p('copy', 'sub', 'small')).nlink, 1, 'the link from outside the tree is not cloned');
    const big = statSync(m.p('copy', 'big'));
    assert.equal(statSync(m.p('copy', 'sub', 'big-link')).ino, big.ino, 'two names of one inode stay one inode');
    assert.notEqual(big.ino, statSync(m.p('src', 'big')).ino);
    assert.equal(big.nlink, 2);
    assert.equal(readlinkSync(m.p('copy', 'sub', 'sym')), '../big');
    assert.ok(lstatSync(m.p('copy', 'sub', 'sym')).isSymbolicLink());
    assert.equal(sh(`python3 -c "import os; print(os.getxattr('${m.p('copy', 'big')}', 'user.note').decode())"`).trim(), 'kept');

    // Both sides change; each reads only its own changes.
    const srcBig = readFileSync(m.p('src', 'big'));
    sh(`printf 'copy side' | dd of='${m.p('copy', 'big')}' bs=1 seek=${B + 10} conv=notrunc status=none`);
    sh(`echo 'source side' >> '${m.p('src', 'sub', 'small')}'`);
    assert.deepEqual(readFileSync(m.p('src', 'big')), srcBig);
    const expected = Buffer.from(srcBig);
    expected.write('copy side', B + 10);
    assert.deepEqual(readFileSync(m.p('copy', 'sub', 'big-link')), expected, 'the hard link inside the copy sees the copy\'s change');
    assert.equal(readFileSync(m.p('copy', 'sub', 'small'), 'utf8'), 'small file\n');
    assert.equal(readFileSync(m.p('src', 'sub', 'small'), 'utf8'), 'small file\nsource side\n');

    // A single file too; an existing destination is refused with one line and exit 1.
    assert.equal(pogfs(['clone', m.p('src', 'big'), m.p('big-clone')]).status, 0);
    assert.deepEqual(readFileSync(m.p('big-clone')), srcBig);
    const exists = pogfs(['clone', m.p('src'), m.p('copy')]);
    assert.equal(exists.status, 1);
    assert.match(exists.stderr, /^pogfs: clone .*copy already exists \(EEXIST\)\n$/);
    const missing = pogfs(['clone', m.p('nothing'), m.p('x')]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /does not exist \(ENOENT\)/);
    const elsewhere = pogfs(['clone', m.p('src'), join(tempDir(), 'x')]);
    assert.equal(elsewhere.status, 2);
    assert.match(elsewhere.stderr, /same pogfs mount/);
  });

  it('a .snapshots of the user\'s own at the root keeps snapshot create from working, with one line saying so', () => {
    mkdirSync(m.p('.snapshots'));
    const r = pogfs(['snapshot', 'create', m.mnt, 'early']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^pogfs: snapshot create early: the root holds a \.snapshots of its own .*rename it first \(EEXIST\)\n$/);
    sh(`rmdir '${m.p('.snapshots')}'`);
  });

  it('a snapshot reads like its tree did and refuses every kind of write with EROFS, root included; .snapshots too', () => {
    mkdirSync(m.p('d', 'empty'), { recursive: true });
    mkdirSync(m.p('emptydir'));
    sh(`head -c ${2 * B} /dev/urandom > '${m.p('d', 'file')}'`);
    sh(`python3 -c "import os; os.setxattr('${m.p('d', 'file')}', 'user.x', b'1')"`);
    writeFileSync(m.p('outside'), 'live\n');
    const digests = treeDigests(m.p('d'));
    assert.ok(!existsSync(m.p('.snapshots')), 'no .snapshots before the first snapshot');
    const r = pogfs(['snapshot', 'create', m.mnt, 'first']);
    assert.equal(r.status, 0, r.stderr);
    const snap = m.p('.snapshots', 'first');
    assert.deepEqual(treeDigests(join(snap, 'd')), digests);
    assert.ok(existsSync(join(snap, 'copy', 'sub', 'big-link')), 'the whole volume is in it');

    const out = sh(`python3 -c '${TRY.replace(/'/g, `'"'"'`)}' '${snap}' '${m.mnt}'`);
    const results = new Map(out.trim().split('\n').map((l) => l.split(' ') as [string, string]));
    assert.equal(results.size, 26);
    for (const [call, result] of results) assert.equal(result, 'EROFS', `${call} inside a snapshot gave ${result}`);
    // Nothing changed, and the live tree still writes.
    assert.deepEqual(treeDigests(join(snap, 'd')), digests);
    writeFileSync(m.p('d', 'file'), 'rewritten\n');
    assert.deepEqual(treeDigests(join(snap, 'd')), digests);

    // A later whole-volume snapshot does not hold the earlier one; a --path one holds only its tree.
    assert.equal(pogfs(['snapshot', 'create', m.mnt, 'second']).status, 0);
    assert.ok(!existsSync(m.p('.snapshots', 'second', '.snapshots')));
    assert.equal(pogfs(['snapshot', 'create', m.mnt, 'justd', '--path', m.p('d')]).status, 0);
    assert.deepEqual(treeDigests(m.p('.snapshots', 'justd')), treeDigests(m.p('d')));
    const again = pogfs(['snapshot', 'create', m.mnt, 'first']);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /already exists \(EEXIST\)/);
    // A clone out of a snapshot is writable (a restore).
    assert.equal(pogfs(['clone', join(snap, 'd'), m.p('restored')]).status, 0);
    assert.deepEqual(treeDigests(m.p('restored')), digests);
    writeFileSync(m.p('restored', 'file'), 'writable\n');
  });

  it('snapshot list and stats show the bytes each holds alone; rm releases exactly them: fsck clean, gc finds nothing', () => {
    const list = () => JSON.parse(pogfsOk(['snapshot', 'list', m.mnt, '--json'])) as { name: string; files: number; exclusiveBytes: number }[];
    const names = list().map((s) => s.name);
    assert.deepEqual(names.sort(), ['first', 'justd', 'second']);
    // d/file was rewritten after "first" and before "second": its old 2 blocks are held by
    // "first" alone. "justd" holds the new content, which the live file shares.
    const first = list().find((s) => s.name === 'first')!;
    assert.equal(first.exclusiveBytes, 2 * B);
    assert.deepEqual(stats(m.mnt).snapshots.find((s) => s.name === 'first')?.exclusiveBytes, 2 * B);
    assert.match(pogfsOk(['stats', m.mnt]), /snapshot first\s+\d+ files, 256 KiB held by it alone/);
    assert.match(pogfsOk(['snapshot', 'list', m.mnt]), /^first\s+\S+\s+\d+ files\s+256 KiB exclusive\s+of \//m);

    // The live file's references to those blocks are dropped a second after its rewrite
    // committed (the reclaimer's delay); gc (a dry run changes nothing) drops them now, so
    // "first" is their only holder when the counts below are taken.
    pogfsOk(['gc', m.volume, '--dry-run']);
    const before = stats(m.mnt);
    assert.equal(pogfs(['snapshot', 'rm', m.mnt, 'first']).status, 0);
    assert.ok(!existsSync(m.p('.snapshots', 'first')));
    const after = stats(m.mnt);
    assert.equal(before.uniqueBytes - after.uniqueBytes, 2 * B, 'exactly the blocks it held alone are gone');
    assert.equal(before.blocks - after.blocks, 2);
    const gone = pogfs(['snapshot', 'rm', m.mnt, 'first']);
    assert.equal(gone.status, 1);
    assert.match(gone.stderr, /does not exist \(ENOENT\)/);

    const gc = JSON.parse(pogfsOk(['gc', m.volume, '--json'])) as { removedBlocks: number };
    assert.equal(gc.removedBlocks, 0, 'nothing was left for gc');
    m.umount();
    fsckClean(m.volume);
    m.mount();
    assert.deepEqual(list().map((s) => s.name).sort(), ['justd', 'second']);
    assert.equal(pogfs(['snapshot', 'rm', m.mnt, 'second']).status, 0);
    assert.equal(pogfs(['snapshot', 'rm', m.mnt, 'justd']).status, 0);
    // With every snapshot gone .snapshots stays, empty and read-only.
    assert.deepEqual(sh(`ls -A '${m.p('.snapshots')}'`), '');
    const gc2 = JSON.parse(pogfsOk(['gc', m.volume, '--json'])) as { removedBlocks: number };
    assert.equal(gc2.removedBlocks, 0);
    m.umount();
    fsckClean(m.volume);
    m.mount();
  });
});

describe('snapshots in the metadata backups', () => {
  const dir = tempDir('pogfs-snap-remote-', () => [mnt, mnt2].forEach(unmountQuietly));
  const volume = join(dir, 'vol');
  const mnt = join(dir, 'mnt');
  const mnt2 = join(dir, 'mnt2');
  const remote = `local:${join(dir, 'remote')}`;
  mkdirSync(mnt);
  mkdirSync(mnt2);

  it('a machine that mounts from the remote sees the snapshot, read-only, with its content', () => {
    pogfsOk(['init', volume, '--remote', remote, '--pack-size', '4M']);
    pogfsOk(['mount', volume, mnt]);
    mkdirSync(join(mnt, 'docs'));
    sh(`head -c ${5 * B} /dev/urandom > '${join(mnt, 'docs', 'a')}'`);
    writeFileSync(join(mnt, 'docs', 'b'), 'before\n');
    const digests = treeDigests(join(mnt, 'docs'));
    pogfsOk(['snapshot', 'create', mnt, 'keep']);
    writeFileSync(join(mnt, 'docs', 'b'), 'after\n');
    sh(`rm '${join(mnt, 'docs', 'a')}'`);
    pogfsOk(['umount', mnt]);

    const r = pogfs(['mount', remote, mnt2, '--cache-dir', join(dir, 'copy')]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(treeDigests(join(mnt2, '.snapshots', 'keep', 'docs')), digests);
    assert.equal(readFileSync(join(mnt2, 'docs', 'b'), 'utf8'), 'after\n');
    assert.match(pogfsOk(['snapshot', 'list', mnt2]), /^keep\s/m);
    const w = spawnSync('sh', ['-c', `echo x > '${join(mnt2, '.snapshots', 'keep', 'docs', 'b')}'`], { encoding: 'utf8' });
    assert.match(w.stderr, /Read-only file system/);
    pogfsOk(['umount', mnt2]);
  });
});

/** Starts `pogfs ARGS` and kills the volume's daemon with SIGKILL `afterMs` later. */
async function killDuring(volumeDaemonPid: number, args: string[], afterMs: number): Promise<void> {
  const cli = spawn(process.execPath, [CLI, ...args], { stdio: 'ignore' });
  const exited = new Promise((r) => cli.on('exit', r));
  await sleep(afterMs);
  try {
    process.kill(volumeDaemonPid, 'SIGKILL');
  } catch {
    // already gone
  }
  await exited;
  for (let i = 0; i < 100 && existsSync(`/proc/${volumeDaemonPid}`); i++) await sleep(20);
}

/** Files and directories under `dir` (the directory itself included). */
const count = (dir: string): number => Number(sh(`find '${dir}' | wc -l`).trim());

describe('kill -9 during a large clone or snapshot removal', () => {
  const m = mountFresh();
  let treeSize = 0;
  let cloneMs = 0;
  /** Whether each clone round's copy was there after the remount. */
  const outcomes: boolean[] = [];

  it('builds a tree of about 25,000 inodes (by cloning a small one)', () => {
    mkdirSync(m.p('seed'));
    sh(`cd '${m.p('seed')}' && for d in $(seq 1 20); do mkdir d$d; for f in $(seq 1 49); do printf "file $d $f" > d$d/f$f; done; done`);
    sh(`head -c ${4 * B} /dev/urandom > '${m.p('seed', 'big')}'`);
    mkdirSync(m.p('tree'));
    for (let i = 0; i < 25; i++) pogfsOk(['clone', m.p('seed'), m.p('tree', `s${i}`)]);
    treeSize = count(m.p('tree'));
    assert.ok(treeSize > 25_000, `${treeSize} inodes`);
    const started = performance.now();
    pogfsOk(['clone', m.p('tree'), m.p('timing')]);
    cloneMs = performance.now() - started;
    console.log(`clone of ${treeSize} inodes: ${cloneMs.toFixed(0)} ms`);
    assert.equal(count(m.p('timing')), treeSize);
    sh(`rm -rf '${m.p('timing')}'`);
    // A crash loses releases still queued (a leak fsck reports): the rounds start with none.
    m.umount();
    m.mount();
  });

  for (const round of [0, 1, 2, 3, 4]) {
    it(`kill -9 during a clone, round ${round}: after the remount the clone is whole or absent, and fsck is clean`, async () => {
      const dst = m.p(`clone${round}`);
      // From before the command starts to after it would have ended (its start-up included).
      await killDuring(m.daemonPid(), ['clone', m.p('tree'), dst], (round * cloneMs) / 2);
      m.mount();
      const present = existsSync(dst);
      outcomes.push(present);
      if (present) {
        assert.equal(count(dst), treeSize, 'a clone that is there is whole');
        assert.equal(readFileSync(join(dst, 's7', 'd3', 'f9'), 'utf8'), 'file 3 9');
      }
      m.umount();
      fsckClean(m.volume);
      m.mount(); // a copy that is there stays: the next rounds clone and snapshot only 'tree'
    });
  }

  for (const round of [0, 1, 2, 3]) {
    it(`kill -9 during a snapshot removal, round ${round}: the snapshot is whole or gone, counts exact (fsck clean)`, async () => {
      pogfsOk(['snapshot', 'create', m.mnt, `s${round}`, '--path', m.p('tree')]);
      // Blocks only the snapshot holds, so its removal releases some to zero.
      sh(`head -c ${3 * B} /dev/urandom > '${m.p('tree', 's0', 'big')}'`);
      m.umount();
      m.mount();
      const started = performance.now();
      await killDuring(m.daemonPid(), ['snapshot', 'rm', m.mnt, `s${round}`], (round * cloneMs * 2) / 3);
      const waited = performance.now() - started;
      m.mount();
      const snap = m.p('.snapshots', `s${round}`);
      if (existsSync(snap)) assert.equal(count(snap), treeSize, `whole after ${waited} ms`);
      m.umount();
      fsckClean(m.volume);
      m.mount();
      if (existsSync(snap)) pogfsOk(['snapshot', 'rm', m.mnt, `s${round}`]);
    });
  }

  it('the kills spanned the clone: some rounds found no copy, some a whole one (each step cut off is in test/clone.test.ts)', () => {
    assert.ok(outcomes.includes(false) && outcomes.includes(true), `outcomes ${JSON.stringify(outcomes)}`);
    assert.ok(isMounted(m.mnt));
    m.umount();
    fsckClean(m.volume);
    m.mount();
  });
});
