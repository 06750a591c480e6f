import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { MetaDb, MetadataError, newInode, type Superblock } from '../meta/meta-db';
import { BlockStore } from '../store/block-store';
import { codecFor, type Compression } from '../store/codec';
import { HASH_ALGORITHM } from '../store/hash';
import { now } from './time';

export const DEFAULT_BLOCK_SIZE = 128 * 1024;
/** New volumes compress blocks with LZ4 unless told otherwise. */
export const DEFAULT_COMPRESSION: Compression = 'lz4';

/** Where a volume keeps its parts, relative to the volume directory. */
export const VolumeFiles = {
  meta: 'meta.db',
  blocks: 'blocks',
  log: 'pogfs.log',
  daemon: 'daemon.json',
} as const;

/** A user-facing problem with a volume: the CLI prints the message and exits 2. */
export class VolumeError extends Error {
  override readonly name = 'VolumeError';
}

/** An opened volume: its metadata database and its block store. */
export class Volume {
  private constructor(
    readonly path: string,
    readonly meta: MetaDb,
    readonly store: BlockStore,
    readonly superblock: Superblock,
  ) {}

  get blockSize(): number {
    return this.superblock.block_size;
  }

  static exists(path: string): boolean {
    return existsSync(join(path, VolumeFiles.meta));
  }

  /** The codec setting new blocks are written with ('lz4' or 'none'). */
  get compression(): string {
    return this.superblock.compression;
  }

  static create(path: string, options: { blockSize?: number; compression?: Compression } = {}): Volume {
    const dir = resolve(path);
    const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    const compression = options.compression ?? DEFAULT_COMPRESSION;
    const codec = codecFor(compression);
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
      compression,
      root: newInode({ mode: 0o040755, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, nlink: 2 }, t),
    });
    const store = BlockStore.open(join(dir, VolumeFiles.blocks), { codec });
    return new Volume(dir, meta, store, meta.superblock());
  }

  static open(path: string, options: { readOnly?: boolean } = {}): Volume {
    const dir = resolve(path);
    if (!existsSync(dir)) throw new VolumeError(`no volume at ${dir} (create one with: pogfs init ${path})`);
    if (!Volume.exists(dir)) {
      throw new VolumeError(`${dir} is not a pogfs volume (no ${VolumeFiles.meta}; create one with: pogfs init DIR)`);
    }
    let meta: MetaDb;
    try {
      meta = MetaDb.open(join(dir, VolumeFiles.meta), options);
    } catch (err) {
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
    let codec;
    try {
      codec = codecFor(superblock.compression);
    } catch (err) {
      meta.close();
      throw new VolumeError(`${dir}: ${(err as Error).message}; upgrade pogfs`);
    }
    const store = BlockStore.open(join(dir, VolumeFiles.blocks), { readOnly: options.readOnly, codec });
    return new Volume(dir, meta, store, superblock);
  }

  async close(): Promise<void> {
    await this.store.close();
    this.meta.close();
  }
}
