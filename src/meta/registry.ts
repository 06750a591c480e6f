import type { MetaEngine } from './engine';
import { MetaDb, MetadataError, type NewInode } from './meta-db';
import type { MountSessionOptions } from './pg-mount-session';

/** What a new volume's metadata starts with (the superblock's fields and the root directory). */
export interface MetaInit {
  blockSize: number;
  hashAlgorithm: string;
  settings?: Record<string, string>;
  root: NewInode;
}

export interface OpenMetaOptions {
  /** Creates the metadata instead of opening existing metadata. */
  create?: MetaInit;
  readOnly?: boolean;
  /** Where the engine says what it recovers from on its own (a lost database connection): the daemon's log. */
  warn?: (msg: string) => void;
  /**
   * A mount's engine: claims the metadata for this client (a session, refused while another
   * mount holds it; see pg-mount-session.ts), held until close. Engines of one process
   * (the SQLite engine) have nothing to claim and ignore it.
   */
  mountSession?: MountSessionOptions;
  /**
   * A volume whose blocks several machines share through a remote and a pack index in the
   * engine's database: a content commit checks, under a lock that holds off gc, that every
   * block it names is in the index (BlocksNotPublished otherwise). Ignored by the SQLite engine.
   */
  sharedPacks?: boolean;
}

/** Opens the engine at `address` (the URL after "scheme:"). */
export type MetaEngineOpener = (address: string, options: OpenMetaOptions) => Promise<MetaEngine>;

const engines = new Map<string, MetaEngineOpener>();

/** Makes `scheme:` URLs open with `opener` (one engine per scheme). */
export function registerMetaEngine(scheme: string, opener: MetaEngineOpener): void {
  if (engines.has(scheme)) throw new Error(`a metadata engine is already registered for ${scheme}:`);
  engines.set(scheme, opener);
}

/** The schemes openMetaEngine knows, in registration order. */
export function metaEngineSchemes(): string[] {
  return [...engines.keys()];
}

/**
 * Opens (or with `create`, creates) the metadata engine a URL names: `sqlite:PATH` (also
 * `sqlite://PATH`) is a volume's SQLite database file; `postgres://USER@HOST[:PORT]/DB`
 * (also `postgresql:`) a PostgreSQL database, the password never in the URL. An unknown scheme is a
 * MetadataError naming the known ones.
 */
export function openMetaEngine(url: string, options: OpenMetaOptions = {}): Promise<MetaEngine> {
  const m = /^([a-z][a-z0-9+.-]*):(.*)$/i.exec(url);
  const known = metaEngineSchemes().map((s) => `${s}:`).join(', ');
  if (!m) return Promise.reject(new MetadataError(`"${url}" is not a metadata engine URL (scheme:address; known schemes: ${known})`));
  const opener = engines.get(m[1].toLowerCase());
  if (!opener) return Promise.reject(new MetadataError(`unknown metadata engine "${m[1]}:" in "${url}" (known: ${known})`));
  return opener(m[2], options);
}

registerMetaEngine('sqlite', async (address, options) => {
  const path = address.startsWith('//') ? address.slice(2) : address;
  if (path === '') throw new MetadataError('sqlite: needs the path of the database file (sqlite:PATH)');
  const meta = options.create ? MetaDb.create(path, options.create) : MetaDb.open(path, { readOnly: options.readOnly });
  return meta.engine;
});

// Loaded on first use: a volume on SQLite does not load the PostgreSQL client.
const openPostgres: MetaEngineOpener = async (address, options) => (await import('./pg-engine')).PgEngine.open(address, options);
registerMetaEngine('postgres', openPostgres);
registerMetaEngine('postgresql', openPostgres);
