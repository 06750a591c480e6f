import { formatBytes, parseByteSize } from '../format';
import { COMPRESSION_CHOICES, parseCompression, type Compression } from '../store/codec';
import { isRemoteSpec } from '../remote/remote-spec';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

/**
 * A volume's settings: what `pogfs init` sets, `pogfs tune` changes and the daemon reads
 * at mount. Stored as text in the metadata database's `settings` table; each setting
 * knows how to parse and print itself, and what a volume that never stored it means.
 */
export interface VolumeSettings {
  /** Codec for new blocks. */
  compression: Compression;
  /** Pack short blocks (small files, tails) into super-chunks compressed as one unit. */
  superchunks: boolean;
  /** Decoded super-chunks kept in memory by a mounted volume (bytes). */
  chunkCacheBytes: number;
  /** gc rewrites a super-chunk when less than this share of its bytes is still live. */
  repackBelow: number;
  /** Where the durable copy lives: '' (none: the local store is the only copy), `local:DIR` or `drive:FOLDER`. */
  remote: string;
  /** With a remote: the local store is a cache of at most this many bytes. */
  cacheBytes: number;
  /** With a remote: bytes of blocks per uploaded pack. */
  packBytes: number;
  /** With a remote: bytes fetched ahead of a sequential reader. */
  readaheadBytes: number;
  /** With a remote: seconds between metadata backups (0: only at unmount). */
  backupIntervalSec: number;
  /** With a remote: metadata backup generations kept. */
  backupKeep: number;
  /** gc rewrites a remote pack when less than this share of it is live. */
  packRepackBelow: number;
  /** Drive API root URL (a Drive-compatible server, or a test emulator); '' for Google's. */
  driveApiUrl: string;
  /** OAuth token endpoint; '' for Google's. */
  driveTokenUrl: string;
  /** Credentials file for Drive; '' for the default ($XDG_CONFIG_HOME/pogfs/drive-credentials.json). */
  driveCredentials: string;
}

interface SettingSpec<K extends keyof VolumeSettings> {
  key: string;
  field: K;
  describe: string;
  /** Accepted values, for messages. */
  accepts: string;
  parse(text: string): VolumeSettings[K];
  format(value: VolumeSettings[K]): string;
  /** What a volume that never stored the setting has (created before it existed). */
  legacy: VolumeSettings[K];
  /** What `pogfs init` gives a new volume. */
  initial: VolumeSettings[K];
}

function parseOnOff(text: string): boolean {
  const t = text.trim().toLowerCase();
  if (['on', 'yes', 'true', '1'].includes(t)) return true;
  if (['off', 'no', 'false', '0'].includes(t)) return false;
  throw new Error(`${JSON.stringify(text)} is not on or off`);
}

function spec<K extends keyof VolumeSettings>(s: SettingSpec<K>): SettingSpec<K> {
  return s;
}

export const SETTING_SPECS = [
  spec({
    key: 'compression',
    field: 'compression',
    describe: 'codec for blocks written from now on',
    accepts: COMPRESSION_CHOICES,
    parse: (t): Compression => parseCompression(t),
    format: (v) => v,
    legacy: 'none',
    initial: 'lz4',
  }),
  spec({
    key: 'superchunks',
    field: 'superchunks',
    describe: 'pack small files and file tails into super-chunks compressed together (with lz4 or zstd)',
    accepts: 'on or off',
    parse: parseOnOff,
    format: (v) => (v ? 'on' : 'off'),
    legacy: false,
    initial: true,
  }),
  spec({
    key: 'chunk-cache',
    field: 'chunkCacheBytes',
    describe: 'memory for decompressed super-chunks while mounted',
    accepts: 'a size such as 64M (0 keeps none)',
    parse: (t) => sizeWithin(t, 'chunk cache', 0, 64 * GiB),
    format: (v) => String(v),
    legacy: 64 * 1024 * 1024,
    initial: 64 * 1024 * 1024,
  }),
  spec({
    key: 'repack-below',
    field: 'repackBelow',
    describe: 'gc rewrites a super-chunk when less than this share of it is live',
    accepts: 'a number from 0 (never) to 1',
    parse: (t) => share(t, 'repack threshold'),
    format: (v) => String(v),
    legacy: 0.5,
    initial: 0.5,
  }),
  spec({
    key: 'remote',
    field: 'remote',
    describe: 'where the durable copy of the blocks and metadata lives',
    accepts: 'none, local:DIR or drive:FOLDER (a folder name or id)',
    parse: (t) => {
      const v = t.trim();
      if (v === '' || v === 'none') return '';
      if (!isRemoteSpec(v)) throw new Error(`remote ${JSON.stringify(t)} is not none, local:DIR or drive:FOLDER`);
      return v;
    },
    format: (v) => v || 'none',
    legacy: '',
    initial: '',
  }),
  spec({
    key: 'cache-size',
    field: 'cacheBytes',
    describe: 'with a remote: the local store is a cache of at most this size',
    accepts: 'a size of at least 16M, such as 10G',
    parse: (t) => sizeWithin(t, 'cache size', 16 * MiB, Infinity),
    format: (v) => String(v),
    legacy: 10 * 1024 ** 3,
    initial: 10 * 1024 ** 3,
  }),
  spec({
    key: 'pack-size',
    field: 'packBytes',
    describe: 'with a remote: bytes of blocks per uploaded pack',
    accepts: 'a size from 1M to 512M',
    parse: (t) => sizeWithin(t, 'pack size', MiB, 512 * MiB),
    format: (v) => String(v),
    legacy: 64 * 1024 * 1024,
    initial: 64 * 1024 * 1024,
  }),
  spec({
    key: 'readahead',
    field: 'readaheadBytes',
    describe: 'with a remote: bytes fetched ahead of a sequential reader',
    accepts: 'a size such as 32M (0: no read-ahead)',
    parse: (t) => sizeWithin(t, 'read-ahead', 0, GiB),
    format: (v) => String(v),
    legacy: 32 * 1024 * 1024,
    initial: 32 * 1024 * 1024,
  }),
  spec({
    key: 'backup-interval',
    field: 'backupIntervalSec',
    describe: 'with a remote: seconds between metadata backups while mounted (0: only at unmount)',
    accepts: 'a whole number of seconds',
    parse: (t) => wholeNumber(t, 'backup interval'),
    format: (v) => String(v),
    legacy: 600,
    initial: 600,
  }),
  spec({
    key: 'backup-keep',
    field: 'backupKeep',
    describe: 'with a remote: metadata backup generations kept',
    accepts: 'a whole number from 1',
    parse: (t) => {
      const n = wholeNumber(t, 'backup-keep');
      if (n < 1) throw new Error('keep at least 1 metadata backup');
      return n;
    },
    format: (v) => String(v),
    legacy: 5,
    initial: 5,
  }),
  spec({
    key: 'pack-repack-below',
    field: 'packRepackBelow',
    describe: 'gc rewrites a remote pack when less than this share of it is live',
    accepts: 'a number from 0 (never) to 1',
    parse: (t) => share(t, 'pack repack threshold'),
    format: (v) => String(v),
    legacy: 0.5,
    initial: 0.5,
  }),
  spec({
    key: 'drive-api-url',
    field: 'driveApiUrl',
    describe: 'Drive API root URL (default: Google\'s)',
    accepts: 'an http(s) URL, or default',
    parse: (t) => url(t, true),
    format: (v) => v || 'default',
    legacy: '',
    initial: '',
  }),
  spec({
    key: 'drive-token-url',
    field: 'driveTokenUrl',
    describe: 'OAuth token endpoint (default: Google\'s)',
    accepts: 'an http(s) URL, or default',
    parse: (t) => url(t, false),
    format: (v) => v || 'default',
    legacy: '',
    initial: '',
  }),
  spec({
    key: 'drive-credentials',
    field: 'driveCredentials',
    describe: 'credentials file for Drive (default: the one pogfs auth writes)',
    accepts: 'a file path, or default',
    parse: (t) => (t.trim() === 'default' ? '' : t.trim()),
    format: (v) => v || 'default',
    legacy: '',
    initial: '',
  }),
];

/** A byte size (64M, 10G ...) from `min` to `max`. */
function sizeWithin(t: string, what: string, min: number, max: number): number {
  const n = parseByteSize(t);
  if (n < min) throw new Error(`${what} ${t} is below ${formatBytes(min)}`);
  if (n > max) throw new Error(`${what} ${t} is more than ${formatBytes(max)}`);
  return n;
}

function wholeNumber(t: string, what: string): number {
  if (!/^\s*\d+\s*$/.test(t)) throw new Error(`${what} ${JSON.stringify(t)} is not a whole number`);
  return Number(t);
}

function share(t: string, what: string): number {
  const n = Number(t);
  if (t.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new Error(`${what} ${JSON.stringify(t)} is not a number from 0 to 1`);
  return n;
}

/** A URL setting; a root URL (`asRoot`) ends in '/' so paths resolve under it. */
function url(t: string, asRoot: boolean): string {
  const v = t.trim();
  if (v === '' || v === 'default') return '';
  let u: URL;
  try {
    u = new URL(v);
  } catch {
    throw new Error(`${JSON.stringify(t)} is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`${JSON.stringify(t)} is not an http(s) URL`);
  return asRoot && !v.endsWith('/') ? `${v}/` : v;
}

type AnySpec = (typeof SETTING_SPECS)[number];

export function settingSpec(key: string): AnySpec | undefined {
  return SETTING_SPECS.find((s) => s.key === key);
}

/**
 * Parses settings; a value this version cannot parse is an error naming the setting.
 * `given` says the text came from the command line (a flag to correct), not from a
 * volume (which a newer pogfs may have written, or `pogfs tune` can fix).
 */
export function readSettings(stored: Record<string, string>, origin: 'volume' | 'given' = 'volume'): VolumeSettings {
  const out = {} as Record<keyof VolumeSettings, unknown>;
  for (const s of SETTING_SPECS) {
    const text = stored[s.key];
    if (text === undefined) {
      out[s.field] = s.legacy;
      continue;
    }
    try {
      out[s.field] = s.parse(text);
    } catch (err) {
      const message = (err as Error).message;
      throw new Error(origin === 'given' ? `--${s.key}: ${message}` : `setting ${s.key}: ${message}; upgrade pogfs or fix it with pogfs tune`);
    }
  }
  return out as unknown as VolumeSettings;
}

/** The stored form of settings: every key with its text. */
export function formatSettings(settings: VolumeSettings): Record<string, string> {
  const out: Record<string, string> = {};
  for (const s of SETTING_SPECS) out[s.key] = (s.format as (v: unknown) => string)(settings[s.field]);
  return out;
}

/** What a new volume gets, with `overrides` applied. */
export function initialSettings(overrides: Partial<VolumeSettings> = {}): VolumeSettings {
  const out = {} as Record<keyof VolumeSettings, unknown>;
  for (const s of SETTING_SPECS) out[s.field] = overrides[s.field] ?? s.initial;
  return out as unknown as VolumeSettings;
}
