import { BLOCK_HEADER_SIZE, decodeHeader, encodeBlock } from '../src/store/codec';
import { hashBlock } from '../src/store/hash';
import { StoreRepair } from '../src/store/repair';
import { newInode } from '../src/meta/meta-db';
import { now, type Timespec } from '../src/vfs/time';
import { LOST_FOUND, hashOf, type CheckState } from './checker';
import { ROOT_INO, isDir, isReg } from '../src/posix/file-system';

/**
 * The repairer: applies what a check found, in an order that keeps DESIGN invariant 1 even
 * if it is interrupted (a crash at any point leaves at worst reference counts too high):
 *
 *  1. new block values (partial blocks cut at a file's end) are stored with their
 *     references taken, durably, before anything points at them;
 *  2. one durable SQLite transaction fixes the tree and the index: recreates a missing
 *     root, frees dead inodes, deletes stray rows, drops dangling entries and links that
 *     close cycles, attaches unreachable inodes under /lost+found as #<ino>, trims block
 *     rows past the size, corrects stored bytes, and sets every nlink from the entries;
 *  3. one durable LMDB transaction, recounting from the (now committed) index: reference
 *     counts rewritten, orphan blocks deleted, corrupt values deleted, blocks that files
 *     reference but the store lacks recorded as "known damaged" (their rows stay, so reads
 *     of those ranges fail with EIO instead of returning zeros), totals rewritten.
 */
export async function repairVolume(state: CheckState): Promise<void> {
  const { volume, plan, findings } = state;
  const meta = volume.meta;
  const store = volume.store;
  const repair = new StoreRepair(store);
  const bs = state.blockSize;
  const dead = new Set(plan.dead);
  const key = (h: Buffer) => h.toString('latin1');

  // --- 1. Rows past the size: deleted, or (a block cut by the size) rewritten shorter.
  type Trim = { ino: number; idx: number; hash?: Buffer; len?: number };
  const trims: Trim[] = [];
  const fresh = new Map<string, { hash: Buffer; data: Buffer; uses: number }>();
  for (const r of meta.blockRowsPastSize(bs)) {
    if (dead.has(r.ino)) continue;
    const start = r.idx * bs;
    if (!isReg(r.mode) || start >= r.size) {
      trims.push({ ino: r.ino, idx: r.idx });
      continue;
    }
    const keep = r.size - start;
    const data = readVerified(state, r.hash);
    if (!data) {
      // A lost block stays lost (EIO); only its length follows the size.
      trims.push({ ino: r.ino, idx: r.idx, hash: r.hash, len: keep });
      continue;
    }
    const cut = Buffer.from(data.subarray(0, keep));
    if (cut.every((b) => b === 0)) {
      trims.push({ ino: r.ino, idx: r.idx }); // all zeros: a hole
      continue;
    }
    const hash = hashBlock(cut);
    const k = key(hash);
    const f = fresh.get(k);
    if (f) f.uses += 1;
    else fresh.set(k, { hash, data: cut, uses: 1 });
    trims.push({ ino: r.ino, idx: r.idx, hash, len: keep });
  }
  if (fresh.size > 0) {
    await repair.run((txn) => {
      for (const [k, f] of fresh) {
        const had = state.stored.get(k);
        if (!had || had.problem) {
          repair.putRawValue(txn, f.hash, encodeBlock(f.data));
          state.stored.set(k, { stored: BLOCK_HEADER_SIZE + f.data.length, raw: f.data.length });
        }
        const count = (state.refs.get(k) ?? 0) + f.uses;
        repair.setRefCount(txn, f.hash, count);
        state.refs.set(k, count);
      }
    });
  }

  // --- 2. The tree and the index, in one durable SQLite transaction.
  let nlinkFixed = 0;
  meta.durableTransaction(() => {
    const t = now();
    if (plan.rootMissing) {
      meta.insertInodeWithIno({
        ino: ROOT_INO,
        ...newInode({ mode: 0o040755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, nlink: 2 }, t),
      });
    }
    for (const ino of plan.dead) meta.deleteInode(ino);
    for (const ino of plan.strayOwners) meta.deleteInode(ino);
    for (const e of plan.dropEntries) meta.removeEntry(e.parent, e.name);

    if (plan.tops.length > 0 && !plan.rootBroken) {
      const lf = lostAndFound(state, t);
      for (const ino of plan.tops) {
        let name = Buffer.from(`#${ino}`);
        for (let k = 1; meta.lookup(lf, name) !== undefined; k++) name = Buffer.from(`#${ino}.${k}`);
        meta.addEntry(lf, name, ino);
      }
    }

    for (const tr of trims) {
      if (tr.hash && tr.len) meta.setBlock(tr.ino, tr.idx, tr.hash, tr.len);
      else meta.deleteBlock(tr.ino, tr.idx);
    }
    for (const m of meta.storedBytesMismatches()) meta.setStoredBytes(m.ino, m.actual);

    const links = meta.linkCounts();
    const subdirs = meta.subdirCounts();
    const all = [...meta.allInodes()];
    for (const r of all) {
      const want = isDir(r.mode) ? 2 + (subdirs.get(r.ino) ?? 0) : (links.get(r.ino) ?? 0);
      if (r.nlink !== want) {
        meta.setNlink(r.ino, want);
        nlinkFixed++;
      }
    }
  });

  // --- 3. The block store, recounted from the committed index, in one durable transaction.
  const rows = new Map<string, number>();
  let references = 0;
  for (const r of meta.blockRowCounts()) {
    rows.set(key(r.hash), r.n);
    references += r.n;
  }
  await repair.run((txn) => {
    let blocks = 0;
    let uniqueBytes = 0;
    let storedBytes = 0;
    /** Per kept super-chunk: the blocks that still point into it. */
    const survivors = new Map<number, { hash: Buffer; offset: number; length: number }[]>();
    for (const [k, s] of state.stored) {
      const hash = hashOf(k);
      const n = rows.get(k) ?? 0;
      if (s.problem || n === 0) {
        // A quick check read no values: the store's own bookkeeping (chunk shares,
        // totals) follows each deletion. A full one recounts everything below.
        if (state.quick) repair.dropBlock(txn, hash);
        else repair.deleteValue(txn, hash);
        if (n > 0 && !state.damaged.has(k)) repair.markDamaged(txn, hash);
      } else {
        blocks += 1;
        uniqueBytes += s.raw;
        storedBytes += s.stored;
        const loc = state.locators.get(k);
        if (loc) {
          let list = survivors.get(loc.chunk);
          if (!list) survivors.set(loc.chunk, (list = []));
          list.push({ hash, offset: loc.offset, length: loc.length });
        }
        if (state.damaged.has(k)) repair.clearDamaged(txn, hash); // the block is whole again
      }
      if (state.refs.get(k) !== n) repair.setRefCount(txn, hash, n);
    }
    const remote = volume.settings.remote !== '';
    for (const [k, n] of rows) {
      if (state.stored.has(k)) continue;
      // Referenced but absent: the rows stay (reads fail with EIO, or fetch the block from
      // the remote when a pack holds it) and the count stays equal to them, so a later
      // write of the same bytes can never be dropped early.
      const hash = hashOf(k);
      if (state.refs.get(k) !== n) repair.setRefCount(txn, hash, n);
      if (!state.damaged.has(k) && !(remote && meta.remote.has(hash))) repair.markDamaged(txn, hash);
    }
    for (const k of state.refs.keys()) if (!state.stored.has(k) && !rows.has(k)) repair.setRefCount(txn, hashOf(k), 0);
    for (const k of state.damaged) if (!rows.has(k)) repair.clearDamaged(txn, hashOf(k));
    if (!state.quick) {
      // Super-chunks: bad or empty ones go; the rest get counts and member lists recounted.
      for (const [chunk, c] of state.chunks) {
        const inside = survivors.get(chunk);
        if (c.problem || !inside) {
          repair.deleteChunk(txn, chunk);
          continue;
        }
        const value = store.superChunks.value(chunk);
        const totalBytes = value ? safeRawLength(value) : inside.reduce((n, m) => Math.max(n, m.offset + m.length), 0);
        repair.setChunkInfo(txn, chunk, { liveBlocks: inside.length, liveBytes: inside.reduce((n, m) => n + m.length, 0), totalBytes });
        repair.setChunkMembers(txn, chunk, inside);
        storedBytes += c.stored;
      }
      for (const chunk of state.chunkInfo.keys()) if (!state.chunks.has(chunk)) repair.deleteChunk(txn, chunk);
    } else {
      // The totals kept by dropBlock, plus the values written in step 1.
      const t = store.stats();
      uniqueBytes = t.uniqueBytes;
      storedBytes = t.storedBytes;
      for (const f of fresh.values()) {
        uniqueBytes += f.data.length;
        storedBytes += f.data.length + BLOCK_HEADER_SIZE;
      }
    }
    repair.setTotals(txn, { blocks, uniqueBytes, storedBytes, references });
  });

  // --- What was done.
  const all = (kind: Parameters<typeof findings.setRepaired>[0], action: string) => findings.setRepaired(kind, findings.count(kind), action);
  all('missing-block', 'kept the files; the lost ranges read as EIO and are recorded as known damaged (restore those files from a backup)');
  all('corrupt-block', 'deleted the bad values; referenced ranges now read as EIO and are recorded as known damaged');
  all('corrupt-superchunk', 'deleted the super-chunks; the ranges of the files named above read as EIO and are recorded as known damaged');
  all('chunk-bookkeeping', 'recounted the live blocks of every super-chunk');
  all('orphan-superchunk', 'deleted');
  all('wrong-refcount', 'rewrote reference counts from the block index');
  all('excess-refcount', 'rewrote reference counts from the block index');
  all('orphan-block', 'deleted');
  all('wrong-nlink', `set link counts from the entries (${nlinkFixed} inodes changed)`);
  all('dangling-entry', 'removed the entries');
  findings.setRepaired(
    'unreachable',
    plan.rootBroken ? 0 : findings.count('unreachable'),
    plan.rootBroken ? 'the root is not a directory: nothing was attached' : `removed links closing cycles; attached ${plan.tops.length} inodes under /${LOST_FOUND} as #<ino>`,
  );
  all('dead-inode', 'freed (rows deleted, references dropped)');
  all('size-mismatch', 'trimmed block rows past the size; corrected stored bytes');
  all('stray-rows', 'deleted');
  all('bad-totals', 'rewrote the totals from the recount');
  findings.setRepaired('metadata-corrupt', 0, 'not repaired: restore meta.db from a backup or rebuild it with sqlite3 .recover');
}

/** A block's decoded bytes, only if they hash to its key. */
function readVerified(state: CheckState, hash: Buffer): Buffer | undefined {
  const s = state.stored.get(hash.toString('latin1'));
  if (!s || s.problem) return undefined;
  return state.volume.store.getVerified(hash);
}

function safeRawLength(value: Buffer): number {
  try {
    return decodeHeader(value).rawLength;
  } catch {
    return Math.max(0, value.length - BLOCK_HEADER_SIZE);
  }
}

/** The /lost+found directory (mode 0700, owned like the root), created when missing. */
function lostAndFound(
  state: CheckState,
  t: Timespec,
): number {
  const meta = state.volume.meta;
  for (let k = 0; ; k++) {
    const name = Buffer.from(k === 0 ? LOST_FOUND : `${LOST_FOUND}.${k}`);
    const existing = meta.lookup(ROOT_INO, name);
    if (existing !== undefined) {
      const row = meta.getInode(existing);
      if (row && isDir(row.mode)) return existing;
      continue;
    }
    const root = meta.getInode(ROOT_INO)!;
    const ino = meta.insertInode(newInode({ mode: 0o040700, uid: root.uid, gid: root.gid, nlink: 2 }, t));
    meta.addEntry(ROOT_INO, name, ino);
    meta.updateInode({ ...root, mtime_s: t.s, mtime_ns: t.ns, ctime_s: t.s, ctime_ns: t.ns });
    return ino;
  }
}
