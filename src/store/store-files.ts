import { closeSync, fstatSync, mkdirSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockStore } from './block-store';

/**
 * The block store's LMDB file as a file: checks of its header made before anything maps
 * it, how its pages are used, and compaction into a copy without free pages.
 */

/** Page usage of the LMDB file (see storeSpace). */
export interface StoreSpace {
  pageSize: number;
  /** Size of data.mdb on disk. */
  fileBytes: number;
  /** Bytes in pages some tree (or a meta page) holds. */
  usedBytes: number;
  /** Bytes in free pages inside the file: reused by later writes, given back only by compaction. */
  freeBytes: number;
  /** Pages of the `blocks` sub-database (leaf, branch and overflow). */
  blockPages: number;
}

/** What the LMDB file's own header says, read with plain file reads (no memory map). */
export interface StoreFileCheck {
  /** Undefined when the file looks whole; otherwise why it cannot be opened safely. */
  problem?: string;
  fileBytes: number;
  pageSize: number;
  /** Bytes the last committed transaction needs the file to hold. */
  neededBytes: number;
}

const LMDB_MAGIC = 0xbeefc0de;

/**
 * Checks `dir`/data.mdb before anything maps it: LMDB maps the whole file, and touching a
 * page past a truncated end kills the process with SIGBUS, so a truncated or foreign file
 * must be recognised from its two meta pages first. Layout (LMDB 1.x as built by lmdb-js):
 * 24-byte page header, then magic u32, version u32, address u64, mapsize u64, two 48-byte
 * tree records (the first one's first u32 is the page size), last page u64, txnid u64.
 */
export function checkStoreFile(dir: string): StoreFileCheck {
  const path = join(dir, 'data.mdb');
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    return { problem: `cannot open ${path}: ${(err as Error).message}`, fileBytes: 0, pageSize: 0, neededBytes: 0 };
  }
  try {
    const fileBytes = fstatSync(fd).size;
    const first = Buffer.alloc(160);
    const n = readSync(fd, first, 0, first.length, 0);
    const meta = (buf: Buffer) => ({
      magic: buf.readUInt32LE(24),
      pageSize: buf.readUInt32LE(48),
      lastPage: Number(buf.readBigUInt64LE(144)),
      txnid: buf.readBigUInt64LE(152),
    });
    if (n < first.length || meta(first).magic !== LMDB_MAGIC) {
      return { problem: `${path} is not an LMDB file (bad or missing header; ${fileBytes} bytes)`, fileBytes, pageSize: 0, neededBytes: 0 };
    }
    const m0 = meta(first);
    const pageSize = m0.pageSize;
    if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) {
      return { problem: `${path} has an invalid page size ${pageSize}`, fileBytes, pageSize, neededBytes: 0 };
    }
    const second = Buffer.alloc(160);
    const n2 = readSync(fd, second, 0, second.length, pageSize);
    let best = m0;
    if (n2 === second.length) {
      const m1 = meta(second);
      if (m1.magic === LMDB_MAGIC && m1.txnid > m0.txnid) best = m1;
    }
    const neededBytes = (best.lastPage + 1) * pageSize;
    if (fileBytes < 2 * pageSize || fileBytes < neededBytes) {
      return {
        problem: `${path} is truncated: ${fileBytes} bytes, but its last committed transaction uses ${neededBytes}`,
        fileBytes,
        pageSize,
        neededBytes,
      };
    }
    return { fileBytes, pageSize, neededBytes };
  } finally {
    closeSync(fd);
  }
}

/**
 * The sub-databases whose pages count as used (see storeSpace). The remote cache's ledger
 * (`dirty`, `dirtyq`) is not among them: its few pages have always shown as free.
 */
const COUNTED_TABLES = ['blocks', 'refs', 'info', 'chunks', 'chunkinfo', 'chunkdir', 'unpacked'];

/**
 * How the LMDB file's pages are used: pages in the file, pages held by the trees (data,
 * reference counts, totals, the catalogue of sub-databases, the free list itself, the two
 * meta pages) and the rest, which is free (reused by later writes, never given back to
 * the file system; `compactStore` does that).
 */
export function storeSpace(store: BlockStore): StoreSpace {
  type TreeStats = { treeBranchPageCount: number; treeLeafPageCount: number; overflowPages: number };
  const pages = (s: TreeStats) => s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages;
  const tablePages = (name: string) => pages(store.env.table(name).getStats() as TreeStats);
  const all = store.env.envStats() as TreeStats & { pageSize: number; lastPageNumber: number; root: TreeStats; free: TreeStats };
  const treePages = COUNTED_TABLES.reduce((n, name) => n + tablePages(name), 0) + pages(all.root) + pages(all.free) + 2;
  const totalPages = all.lastPageNumber + 1;
  let fileBytes = 0;
  try {
    fileBytes = statSync(join(store.path, 'data.mdb')).size;
  } catch {
    fileBytes = 0;
  }
  return {
    pageSize: all.pageSize,
    fileBytes,
    usedBytes: Math.min(treePages, totalPages) * all.pageSize,
    freeBytes: Math.max(0, totalPages - treePages) * all.pageSize,
    blockPages: tablePages('blocks') + tablePages('chunks'),
  };
}

/** Writes a compacted copy of the store's whole environment (free pages dropped) as `dir`/data.mdb. */
export async function compactStore(store: BlockStore, dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  await store.env.backup(dir, true);
}
