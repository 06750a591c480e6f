import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { MetaBlockParking, MetaEngine } from '../meta/engine';
import { MetaDb, MetadataError, newInode, type Superblock } from '../meta/meta-db';
import { openMetaEngine, type OpenMetaOptions } from '../meta/registry';
import { ROOT_INO } from '../posix/file-system';
import { CacheLedger } from '../cache/cache-ledger';
import type { LocalPackIndex } from '../cache/remote-cache';
import { BlockStore, type BlockStoreOptions } from '../store/block-store';
import { encodingOf } from '../store/codec';
import { HASH_ALGORITHM } from '../store/hash';
import { SUPER_CHUNK_BYTES, SuperChunkPacker } from '../store/super-chunk-packer';
import { now } from './time';
import { formatSettings, initialSettings, readSettings, type VolumeSettings } from './volume-settings';
import { isNativeModuleMismatch } from '../native-modules';

export const DEFAULT_BLOCK_SIZE = 128 * 1024;
/** LZ4 matches reach 64 KiB back: a block at least that long has its context within itself. */
const LZ4_WINDOW = 64 * 1024;
/** A partial super-chunk is packed once no short block was written for this long. */
const PACK_IDLE_MS = 1000;

/** Where a volume keeps its parts, relative to the volume directory. */
export const VolumeFiles = {
  meta: 'meta.db',
  /** The URL of the metadata engine holding the namespace, when it is not meta.db (postgres://…). */
  metaUrl: 'meta.url',
  blocks: 'blocks',
  log: 'pogfs.log',
  daemon: 'daemon.json',
} as const;

/** A user-facing problem with a volume: the CLI prints the message and exits 2. */
export class VolumeError extends Error {
  override readonly name = 'VolumeError';
}

/** The block store's options that follow from a volume's settings. */
function storeOptions(settings: VolumeSettings, blockSize: number): BlockStoreOptions {
  const { codec, level } = encodingOf(settings.compression);
  // Super-chunks take the blocks that are short of a full LZ4 window or of a full block:
  // small files and file tails (all blocks when blocks are smaller than the window).
  const packBelow = settings.superchunks ? (blockSize < LZ4_WINDOW ? blockSize + 1 : blockSize) : 0;
  return { codec, zstdLevel: level, packBelow, chunkCacheBytes: settings.chunkCacheBytes };
}

/**
 * An opened volume: its metadata database, its block store and its settings.
 *
 * The namespace lives in meta.db, or, when the volume records a metadata engine URL
 * (meta.url, `pogfs init --meta postgres://…`), in that engine: then meta.db keeps only the
 * volume's settings, `engine` is that engine once `openEngine` has run, and `meta` (the
 * SQLite scans, repairs and backups of fsck, gc, stats and remotes) refuses, so nothing
 * reads meta.db's empty namespace for the volume's.
 */
export class Volume {
  private superChunkPacker: SuperChunkPacker | undefined;
  private externalEngine: MetaEngine | undefined;
  private externalSecurityXattrs = false;
  private externalChangeTicks = 0;
  /**
   * The store's ledger as a cache of the remote: what is not uploaded yet. Joined to the
   * store on every open, so a block deleted for good always loses its dirty mark; new
   * blocks are marked dirty only when the volume has a remote.
   */
  readonly ledger: CacheLedger;

  private constructor(
    readonly path: string,
    private readonly db: MetaDb,
    readonly store: BlockStore,
    readonly superblock: Superblock,
    readonly settings: VolumeSettings,
    /** The metadata engine's URL when the namespace is not in meta.db. */
    readonly metaUrl: string | undefined,
  ) {
    this.ledger = new CacheLedger(store, settings.remote !== '');
    store.referencesOnRemote = this.sharesBlocks;
  }

  /** The SQLite metadata (scans, repairs, backups, the remote's index); a VolumeError when the namespace is elsewhere. */
  get meta(): MetaDb {
    if (this.metaUrl !== undefined) {
      throw new VolumeError(
        `${this.path} keeps its metadata in ${this.metaUrl.split(':')[0]}: fsck, gc, stats, remotes and metadata backups do not support such a volume yet`,
      );
    }
    return this.db;
  }

  /**
   * meta.db's pack index, for the remote cache: the volume's own, or with the namespace in
   * another engine, a local cache of the shared one (see sharesBlocks).
   */
  get localPackIndex(): LocalPackIndex {
    return this.db;
  }

  /**
   * Whether several machines may write the volume at once, sharing its blocks through the
   * remote: its namespace is in another engine (PostgreSQL) and it has a remote.
   */
  get sharesBlocks(): boolean {
    return this.metaUrl !== undefined && this.settings.remote !== '';
  }

  /** The POSIX-level operations on the volume's metadata (what the vfs uses). */
  get engine(): MetaEngine {
    if (this.metaUrl === undefined) return this.db.engine;
    if (!this.externalEngine) throw new Error(`the metadata engine of ${this.path} is not open (Volume.openEngine)`);
    return this.externalEngine;
  }

  /** Connects to the volume's metadata engine when it is not meta.db (a no-op when it is). */
  async openEngine(options: Pick<OpenMetaOptions, 'readOnly' | 'warn' | 'mountSession'> = {}): Promise<MetaEngine> {
    if (this.metaUrl === undefined || this.externalEngine) return this.engine;
    try {
      this.externalEngine = await openMetaEngine(this.metaUrl, { ...options, sharedPacks: this.sharesBlocks });
      this.externalSecurityXattrs = await this.externalEngine.anySecurityXattr();
    } catch (err) {
      throw new VolumeError(`${this.path}: ${(err as Error).message}`);
    }
    return this.externalEngine;
  }

  /** True when some inode has a security.* attribute (read when the engine opened). */
  anySecurityXattr(): boolean {
    return this.metaUrl === undefined ? this.db.anySecurityXattr() : this.externalSecurityXattrs;
  }

  /**
   * Moves the new volume's namespace into the metadata engine at `url` (an empty
   * database): creates its schema, superblock and root directory, and records the URL.
   */
  async createExternalMeta(url: string): Promise<void> {
    const root = this.db.getInode(ROOT_INO);
    if (!root) throw new VolumeError(`${this.path}: the new volume has no root directory`);
    const { ino: _root, ...rootRow } = root;
    let engine: MetaEngine;
    try {
      engine = await openMetaEngine(url, {
        create: { blockSize: this.superblock.block_size, hashAlgorithm: this.superblock.hash_algorithm, settings: this.db.settings(), root: rootRow },
      });
    } catch (err) {
      throw new VolumeError((err as Error).message);
    }
    const recorded = engine.url;
    await engine.close();
    this.recordMetaUrl(recorded);
  }

  /** Records that the namespace is in the engine at `url` (a new volume's, or a machine joining one: see meta.url). */
  recordMetaUrl(url: string): void {
    writeFileSync(join(this.path, VolumeFiles.metaUrl), `${url}\n`, { mode: 0o600 });
  }

  /** Blocks of closed files parked in the metadata until the block store takes them (see Durability). */
  get parking(): MetaBlockParking | undefined {
    // Not in another engine yet: closes there wait for the block store instead.
    return this.metaUrl === undefined ? this.db.engine : undefined;
  }

  /**
   * The metadata's running count of changes (to tell an idle volume). Another engine's
   * changes are not counted here: its count moves at every call, so its periodic sync
   * point always runs (one synchronous commit per commit interval).
   */
  metaChangeCount(): number {
    return this.metaUrl === undefined ? this.db.changeCount() : ++this.externalChangeTicks;
  }

  /** Moves meta.db's write-ahead log into the database at sync points only (see MetaDb). */
  checkpointAtSyncPoints(): void {
    this.db.checkpointAtSyncPoints();
  }

  /** After a sync point: meta.db's write-ahead log into the database (see MetaDb.checkpoint). */
  checkpoint(): void {
    this.db.checkpoint();
  }

  /** Parked blocks a crash left that the store took at open (see takeParked). */
  takenAtOpen = 0;

  /**
   * Gives the block store the blocks parked in the metadata that it has not taken yet
   * (a crash came between a close and their move), before anything reads the volume,
   * and keeps the metadata's sequence past what the store took.
   */
  private takeParked(): void {
    const taken = this.store.parkedSeq();
    this.db.transaction(() => this.db.parked.continueAfter(taken));
    const rows = this.db.parked.after(taken);
    if (rows.length === 0) return;
    this.store.acquireSync(
      rows.map((r) => ({ hash: r.hash, data: r.data })),
      rows[rows.length - 1].seq,
    );
    this.takenAtOpen = rows.length;
  }

  get blockSize(): number {
    return this.superblock.block_size;
  }

  static exists(path: string): boolean {
    return existsSync(join(path, VolumeFiles.meta));
  }

  /** The codec setting new blocks are written with ('none', 'lz4' or 'zstd:LEVEL'). */
  get compression(): string {
    return this.settings.compression;
  }

  /**
   * The packer of short blocks into super-chunks, started on first use (a mounted
   * volume, gc). Closed with the volume.
   */
  packer(onError: (err: unknown) => void = () => undefined): SuperChunkPacker {
    this.superChunkPacker ??= new SuperChunkPacker(this.store, { targetBytes: SUPER_CHUNK_BYTES, idleMs: PACK_IDLE_MS, onError });
    return this.superChunkPacker;
  }

  static create(path: string, options: { blockSize?: number } & Partial<VolumeSettings> = {}): Volume {
    const dir = resolve(path);
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    const { blockSize: _ignored, ...overrides } = options;
    const settings = initialSettings(overrides);
    if (existsSync(dir)) {
      if (!statSync(dir).isDirectory()) throw new VolumeError(`${dir} exists and is not a directory`);
      if (readdirSync(dir).length > 0) {
        throw new VolumeError(
          Volume.exists(dir) ? `${dir} is already a pogfs volume` : `${dir} is not empty: pick a new or empty directory`,
        );
      }
    }
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const t = now();
    const meta = MetaDb.create(join(dir, VolumeFiles.meta), {
      blockSize,
      hashAlgorithm: HASH_ALGORITHM,
      settings: formatSettings(settings),
      root: newInode({ mode: 0o040755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, nlink: 2 }, t),
    });
    const store = BlockStore.open(join(dir, VolumeFiles.blocks), storeOptions(settings, blockSize));
    if (settings.remote) store.rememberRemote(settings.remote);
    return new Volume(dir, meta, store, meta.superblock(), settings, undefined);
  }

  static open(path: string, options: { readOnly?: boolean } = {}): Volume {
    const dir = resolve(path);
    if (!existsSync(dir)) throw new VolumeError(`no volume at ${dir} (create one with: pogfs init ${path})`);
    if (!Volume.exists(dir)) {
      if (!statSync(dir).isDirectory()) throw new VolumeError(`${dir} is a file, not a volume directory (give the directory pogfs init created)`);
      // init takes only a new or empty directory: suggest it only where it would work.
      const hint = readdirSync(dir).length === 0 ? `create a volume there with: pogfs init ${path}` : 'give the directory pogfs init created';
      throw new VolumeError(`${dir} is not a pogfs volume (no ${VolumeFiles.meta}; ${hint})`);
    }
    let meta: MetaDb;
    try {
      meta = MetaDb.open(join(dir, VolumeFiles.meta), options);
    } catch (err) {
      if (isNativeModuleMismatch(err)) throw err;
      if (err instanceof MetadataError || (err as Error).name === 'SchemaTooNewError') {
        throw new VolumeError(`${dir}: ${(err as Error).message}`);
      }
      throw new VolumeError(`${dir}: cannot read the metadata database: ${(err as Error).message}`);
    }
    const superblock = meta.superblock();
    if (superblock.hash_algorithm !== HASH_ALGORITHM) {
      meta.close();
      throw new VolumeError(`${dir}: unsupported hash algorithm ${superblock.hash_algorithm}`);
    }
    if (!existsSync(join(dir, VolumeFiles.blocks))) {
      meta.close();
      throw new VolumeError(`${dir}: the block store (${VolumeFiles.blocks}/) is missing`);
    }
    let settings: VolumeSettings;
    try {
      settings = readSettings(meta.settings());
    } catch (err) {
      meta.close();
      throw new VolumeError(`${dir}: ${(err as Error).message}`);
    }
    const store = BlockStore.open(join(dir, VolumeFiles.blocks), { readOnly: options.readOnly, ...storeOptions(settings, superblock.block_size) });
    if (settings.remote && !options.readOnly) store.rememberRemote(settings.remote);
    const urlFile = join(dir, VolumeFiles.metaUrl);
    const metaUrl = existsSync(urlFile) ? readFileSync(urlFile, 'utf8').trim() : undefined;
    const volume = new Volume(dir, meta, store, superblock, settings, metaUrl);
    if (!options.readOnly) volume.takeParked();
    return volume;
  }

  /** Stores changed settings (the volume must not be mounted: a daemon reads them once). */
  changeSettings(changes: Partial<VolumeSettings>): VolumeSettings {
    const next = { ...this.settings, ...changes };
    this.db.setSettings(formatSettings(next));
    if (next.remote) this.store.rememberRemote(next.remote);
    return next;
  }

  async close(): Promise<void> {
    await this.superChunkPacker?.close();
    await this.store.close();
    await this.externalEngine?.close();
    this.db.close();
  }
}
