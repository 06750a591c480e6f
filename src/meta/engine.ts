import type { Timespec } from '../posix/file-system';
import type { BlockRow, DirRow, EntryRow, InodeRow, InodeSummary, NewInode, Superblock, VolumeTotals } from './meta-db';

/**
 * The metadata engine: a volume's namespace, attributes, symlinks, xattrs and block maps
 * at the level of POSIX operations. Each operation is atomic inside the engine (checks
 * and writes in one transaction), so several clients of one database (another process,
 * later another machine) cannot interleave between a check and its write. Failures
 * reject with an FsError carrying the errno Linux gives (src/posix/errors.ts).
 *
 * Shaped after JuiceFS's pkg/meta: one interface for the filesystem above, narrower ones
 * for fsck/gc (`MetaScan`) and metadata backups (`MetaSnapshot`), engines opened by URL
 * scheme (registry.ts), and one conformance suite run against every engine
 * (test/meta-conformance.ts).
 */

// The rename and setxattr flags are the FileSystem's (src/posix), as the kernel gives them.
export { RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, type Timespec } from '../posix/file-system';

/** What a new inode is made of; the engine adds the times, the link count and the set-group-ID rule. */
export interface NodeSpec {
  /** File type and permission bits. */
  mode: number;
  uid: number;
  gid: number;
  rdev?: number;
  /** A symlink's target (its size is the target's length). */
  target?: Buffer;
  /** create(2): the caller opens the new file, counted as one `opened` in the same transaction. */
  open?: boolean;
}

/**
 * The attributes an operation changes. Only the fields given are written: two clients
 * changing different fields of one inode both keep their change (no whole-row
 * write-back, so no lost update).
 */
export interface AttrChange {
  /** Permission bits (the file type bits are kept). */
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  storedBytes?: number;
  atime?: Timespec;
  mtime?: Timespec;
  ctime?: Timespec;
}

/** Says whether an inode is in use in this client (open, or known to the kernel): unlinking it then keeps it. */
export type InUse = (ino: number) => boolean;

/** The fate of an inode an operation took a name (or its last name) from. */
export interface Detached {
  /** Its attributes after the operation (nlink 0 when no name is left). */
  attr: InodeRow;
  /**
   * Present when the inode was freed in the same transaction: the block references its
   * rows held, for the caller to release once the change is durable (invariant 1).
   */
  freed?: Buffer[];
}

export interface RenameResult {
  /** The inode that moved, after the operation. */
  moved: InodeRow;
  /** The inode the new name named before, when it was replaced (not with RENAME_EXCHANGE). */
  replaced?: Detached;
  /** With RENAME_EXCHANGE: the other inode, after the operation. */
  exchanged?: InodeRow;
}

/** One page of a directory listing. */
export interface DirPage {
  entries: DirRow[];
  /** Pass as `after` for the next page; absent when this page is the last. */
  next?: Buffer;
}

/** One file's committed content: changed block rows (undefined: the row goes), its size and stored bytes. */
export interface ContentCommit {
  ino: number;
  rows: ReadonlyMap<number, { hash: Buffer; len: number } | undefined>;
  size: number;
  storedBytes: number;
  /** Attribute changes committed with the content (e.g. the times of the writes). */
  attrs?: AttrChange;
}

/**
 * A content commit on a volume several machines share refused because blocks it names are
 * in no pack of the shared index (gc removed their entries since this machine stored
 * them): nothing was committed. The caller uploads them again and commits again.
 */
export class BlocksNotPublished extends Error {
  override readonly name = 'BlocksNotPublished';
  constructor(readonly hashes: readonly Buffer[]) {
    super(`${hashes.length} blocks of the commit are in no pack of the shared pack index`);
  }
}

/** A block whose bytes wait in the metadata until the block store takes them (no data: one more reference to a stored block). */
export interface ParkedBlock {
  hash: Buffer;
  data?: Buffer;
}

/**
 * Blocks parked in the metadata (DESIGN invariant 3): a file being closed is committed
 * with its last blocks in the same metadata transaction, handed to the OS without waiting
 * for the disk, so the close survives a crash of the daemon and no row can ever reach the
 * disk without the bytes it names. The block store takes them later, many at once.
 */
export interface MetaBlockParking {
  /** `commitContent` with `blocks` parked in the same transaction; returns the sequence number of the last one. */
  commitContentParking(commits: readonly ContentCommit[], blocks: readonly ParkedBlock[]): Promise<number>;
  /** Drops the parked blocks up to `seq`: the block store holds them durably. */
  unpark(seq: number): Promise<void>;
}

/** The hooks the vfs's durability rules rest on (group commit, fsync, close-to-durable). */
export interface MetaDurability {
  /**
   * Groups changes into one commit for up to this long (ms; 0: each operation commits on
   * its own). Durability points commit the group at once.
   */
  setGroupCommit(ms: number): void;
  /** Commits the open group, if any (handed to the OS, not synced). */
  commitGroup(): Promise<void>;
  /** Makes every change so far durable (survives a power cut). */
  barrier(): Promise<void>;
}

/**
 * What another client of a shared metadata database changed (MetaEngine.watchChanges):
 * the inodes whose attributes, names or content changed and the names (directory, name)
 * added or removed; or, when that cannot be said (a change too large to list, notices
 * missed while the feed was disconnected), that everything may have changed.
 */
export type ExternalChange =
  | { kind: 'names'; inodes: number[]; entries: Array<[number, Buffer]> }
  | { kind: 'everything'; reason: string };

/** A subscription to other clients' changes (MetaEngine.watchChanges). */
export interface ChangeWatch {
  /** Resolves once the first try to follow changes is over (changes committed after it are seen, or, if it failed, an "everything" follows once it works). */
  ready: Promise<void>;
  stop(): void;
}

export interface MetaEngine extends MetaDurability {
  /** The engine's URL (scheme and address), as given to openMetaEngine. */
  readonly url: string;

  superblock(): Promise<Superblock>;

  // ---- names and attributes ----

  /** The inode `name` names in directory `parent`. ENOENT, ENOTDIR. */
  lookup(parent: number, name: Buffer): Promise<InodeRow>;
  /** ENOENT. */
  getattr(ino: number): Promise<InodeRow>;
  /** Writes the fields given (ctime only when given); ENOENT. */
  setattr(ino: number, change: AttrChange): Promise<InodeRow>;
  /** A parent of `ino` (for a directory, its only one); undefined for the root or a nameless inode. */
  parentOf(ino: number): Promise<number | undefined>;
  /** Inodes, files, directories and logical bytes, for statfs and stats. */
  statfs(): Promise<VolumeTotals>;

  // ---- the namespace (each one transaction) ----

  /**
   * Makes an inode (file, directory, symlink, device, fifo, socket) and its entry, and
   * updates the parent (mtime, ctime, nlink for a directory). In a set-group-ID
   * directory the inode takes the directory's group, and a directory the bit. EEXIST,
   * ENOENT, ENOTDIR.
   */
  mknod(parent: number, name: Buffer, spec: NodeSpec, t: Timespec): Promise<InodeRow>;
  /** A new name for a non-directory: EPERM for a directory, EEXIST, ENOENT, ENOTDIR. */
  link(ino: number, parent: number, name: Buffer, t: Timespec): Promise<InodeRow>;
  /**
   * Drops a non-directory's name: EISDIR, ENOENT, ENOTDIR. An inode left without names
   * is freed unless `inUse` says it is still open.
   */
  unlink(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached>;
  /** Drops an empty directory: ENOTEMPTY, ENOTDIR, ENOENT. */
  rmdir(parent: number, name: Buffer, t: Timespec, inUse?: InUse): Promise<Detached>;
  /**
   * rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE: EINVAL (bad flags, a directory
   * into itself), EEXIST, ENOENT, ENOTDIR, EISDIR, ENOTEMPTY. A replaced inode left
   * without names is freed unless `inUse` says it is still open.
   */
  rename(parent: number, name: Buffer, newParent: number, newName: Buffer, flags: number, t: Timespec, inUse?: InUse): Promise<RenameResult>;
  /**
   * A directory's entries in name order after `after` (exclusive), at most `limit`.
   * ENOTDIR, ENOENT.
   */
  readdir(dir: number, after?: Buffer, limit?: number): Promise<DirPage>;
  /** EINVAL when `ino` is not a symlink. */
  readlink(ino: number): Promise<Buffer>;

  // ---- extended attributes ----

  /** ENODATA. */
  getxattr(ino: number, name: Buffer): Promise<Buffer>;
  /** With XATTR_CREATE/XATTR_REPLACE: EEXIST, ENODATA. Sets ctime to `t`. */
  setxattr(ino: number, name: Buffer, value: Buffer, flags: number, t: Timespec): Promise<void>;
  listxattr(ino: number): Promise<Buffer[]>;
  /** ENODATA. Sets ctime to `t`. */
  removexattr(ino: number, name: Buffer, t: Timespec): Promise<void>;
  /** True when some inode has a security.* attribute. */
  anySecurityXattr(): Promise<boolean>;

  // ---- content ----

  /** A file's block map, in block order. */
  blocks(ino: number): Promise<BlockRow[]>;
  /**
   * Commits files' content in one transaction: block rows, size, stored bytes and the
   * attributes given. The caller releases the references the rows replaced.
   */
  commitContent(commits: readonly ContentCommit[]): Promise<void>;

  // ---- freeing ----

  /**
   * Frees an inode no name and no client uses any more (this client's hold on it, if any,
   * is dropped; while another client holds it, it stays); returns the block references it held.
   */
  free(ino: number): Promise<Buffer[]>;
  /** Inodes left without names (unlinked while open before a crash) that no live client holds, for recovery. */
  unlinkedInodes(): Promise<number[]>;

  /**
   * Engines several clients write at once: this client opened a handle of regular file
   * `ino` (ENOENT when the inode is gone). The first handle here records the hold in the
   * database, so that another client's unlink (rmdir, rename over it) leaves the inode
   * without names instead of freeing it; called before the file's blocks are read. Returns
   * the file's block map when it read it with the record (in one round trip), else undefined.
   */
  opened?(ino: number): Promise<BlockRow[] | undefined>;
  /**
   * A handle `opened` (or a create with `open`) is closed, after its content was committed.
   * The last one here drops the hold and frees the inode if it has no name left and no
   * other live client holds it (the block references it held are returned, for the caller
   * to release), unless `keep`: the inode is still in use here, and is freed later by `free`.
   */
  closed?(ino: number, keep: boolean): Promise<Buffer[]>;
  /** Drops at once the holds `closed` let linger (an engine that drops them in batches), before the caller's last release of blocks. */
  flushClosed?(): Promise<void>;

  /**
   * Calls `onChange` with what other clients of the same database commit, in commit order,
   * never for this client's own changes (engines other clients can share; absent where the
   * engine is its volume's only client). Stopped by `stop`, or when the engine closes.
   */
  watchChanges?(onChange: (change: ExternalChange) => void): ChangeWatch;

  close(): Promise<void>;
}

/**
 * What fsck and gc read of a volume (whole-volume scans), on an unmounted volume.
 * Synchronous and whole-table today (SQLite in process); an engine over the network
 * would page these.
 */
export interface MetaScan {
  schemaVersion(): number;
  /** The engine's own structural check: an empty list when its storage is sound. */
  quickCheck(): string[];
  allInodes(): IterableIterator<InodeSummary>;
  allEntries(): IterableIterator<EntryRow>;
  entriesOf(ino: number): { parent: number; name: Buffer }[];
  /** The names in `parent` that name `ino`, in name order. */
  namesOf(parent: number, ino: number): Buffer[];
  blockRowCounts(): IterableIterator<{ hash: Buffer; n: number }>;
  blockRowsOf(hash: Buffer): { ino: number; idx: number; len: number }[];
  /** Blocks parked with content commits after `seq` (see MetaBlockParking), in order. */
  parkedBlocksAfter(seq: number): (ParkedBlock & { seq: number })[];
  blockRowsPastSize(blockSize: number): { ino: number; idx: number; hash: Buffer; len: number; size: number; mode: number }[];
  storedBytesMismatches(): { ino: number; stored: number; actual: number }[];
  strayRowOwners(): { ino: number; blocks: number; symlinks: number; xattrs: number }[];
  linkCounts(): Map<number, number>;
  subdirCounts(): Map<number, number>;
  /** Bytes the block rows reference (a block shared by N rows counts N times). */
  referencedBytes(): number;
  /** Distinct blocks the rows reference, and their bytes. */
  uniqueBlocks(): { n: number; bytes: number };
}

/**
 * The direct repairs fsck makes on an unmounted volume: row-level writes that may break
 * the rules the engine keeps (that is what repairing a broken volume takes), run in one
 * durable transaction.
 */
export interface MetaRepair {
  durableTransaction<T>(fn: () => T): T;
  getInode(ino: number): InodeRow | undefined;
  insertInode(row: NewInode): number;
  insertInodeWithIno(row: InodeRow): void;
  updateInode(row: InodeRow): void;
  deleteInode(ino: number): Buffer[];
  lookup(parent: number, name: Buffer): number | undefined;
  addEntry(parent: number, name: Buffer, ino: number): void;
  removeEntry(parent: number, name: Buffer): void;
  setBlock(ino: number, idx: number, hash: Buffer, len: number): void;
  deleteBlock(ino: number, idx: number): void;
  setNlink(ino: number, nlink: number): void;
  setStoredBytes(ino: number, storedBytes: number): void;
}

/** What a metadata backup needs: a change counter, committed state, and a consistent copy. */
export interface MetaSnapshot {
  /** Grows with every change this client made (to skip backups when nothing changed). */
  changeCount(): number;
  /** Commits the open group, so a snapshot taken by another connection sees it. */
  commitGroup(): void;
  /** A consistent copy of the committed metadata, compressed, made off the JavaScript thread. */
  snapshot(): Promise<{ data: Buffer; rawBytes: number }>;
}

/** One hash and how many block rows of a range reference it. */
export interface RefCount {
  hash: Buffer;
  n: number;
}

/** A tree operation under way: a clone staged but not yet named, or a tree being removed. */
export interface TreeOp {
  id: number;
  kind: 'clone' | 'remove';
  /** The inode range the operation made (a clone) or releases (a removal). */
  first: number;
  last: number;
}

/** A clone staged by `stageClone`: its inodes exist, nothing names its root yet. */
export interface StagedClone extends TreeOp {
  root: number;
  inodes: number;
}

/** A read-only snapshot, as `pogfs snapshot list` shows it. */
export interface SnapshotInfo {
  name: Buffer;
  root: number;
  first: number;
  last: number;
  /** The path frozen, relative to the volume's root ('' for the whole volume). */
  source: string;
  createdNs: number;
  /** Regular files in it. */
  files: number;
  /** Bytes of blocks that nothing outside the snapshot references (what removing it could free). */
  exclusiveBytes: number;
}

/**
 * Clones and snapshots (src/vfs/tree-ops.ts drives them): set-based copies of whole
 * trees inside the metadata, each step one transaction. Kept apart from MetaEngine so
 * an engine can come without them. Synchronous (SQLite in process): the vfs takes the
 * block references of a staged range with no other metadata change in between.
 */
export interface MetaClone {
  /**
   * Copies the tree at `src` (a file, symlink or directory and everything under it,
   * skipping the inodes in `exclude`) into new inodes with consecutive numbers: modes,
   * owners, times, symlink targets, xattrs and block rows; two names of one inode inside
   * the tree become two names of one new inode. Nothing names the copy's root yet; the
   * operation is recorded in tree_ops. ENOENT.
   */
  stageClone(src: number, exclude: readonly number[], t: Timespec): StagedClone;
  /** The block rows of an inode range, counted per hash. */
  rangeReferences(first: number, last: number): RefCount[];
  /**
   * Names a staged clone: an entry `name` in `parent` for its root, the parent's times and
   * link count, and (for a snapshot) its snapshots row; the tree_ops row goes. EEXIST,
   * ENOENT, ENOTDIR.
   */
  linkClone(op: StagedClone, parent: number, name: Buffer, t: Timespec, snapshot?: { name: Buffer; source: string }): InodeRow;
  /**
   * Takes a snapshot's entry and row away and records its range for removal (tree_ops
   * 'remove'); its rows stay until `dropRange`. ENOENT.
   */
  detachSnapshot(name: Buffer, t: Timespec): TreeOp;
  /** Deletes every row of the operation's inode range, and the operation. */
  dropRange(op: TreeOp): void;
  /** Tree operations a crash left under way. */
  pendingTreeOps(): TreeOp[];
  /** The .snapshots directory's inode, made (mode 0555, root's owner) when `create` says so. */
  snapshotsDir(create?: { t: Timespec }): number | undefined;
  snapshots(): SnapshotInfo[];
  /** The inode ranges of every snapshot (what is read-only). */
  snapshotRanges(): { first: number; last: number }[];
}
