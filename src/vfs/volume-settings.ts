import { parseByteSize } from '../format';
import { COMPRESSIONS, type Compression } from '../store/codec';

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
    accepts: COMPRESSIONS.join(' or '),
    parse: (t) => {
      if (!(COMPRESSIONS as readonly string[]).includes(t)) throw new Error(`unknown compression ${JSON.stringify(t)} (choose ${COMPRESSIONS.join(' or ')})`);
      return t as Compression;
    },
    format: (v) => v,
    legacy: 'none',
    initial: 'lz4',
  }),
  spec({
    key: 'superchunks',
    field: 'superchunks',
    describe: 'pack small files and file tails into super-chunks compressed together (with lz4)',
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
    parse: (t) => {
      const n = parseByteSize(t);
      if (n > 64 * 1024 ** 3) throw new Error(`chunk cache of ${t} is more than 64G`);
      return n;
    },
    format: (v) => String(v),
    legacy: 64 * 1024 * 1024,
    initial: 64 * 1024 * 1024,
  }),
  spec({
    key: 'repack-below',
    field: 'repackBelow',
    describe: 'gc rewrites a super-chunk when less than this share of it is live',
    accepts: 'a number from 0 (never) to 1',
    parse: (t) => {
      const n = Number(t);
      if (t.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new Error(`repack threshold ${JSON.stringify(t)} is not a number from 0 to 1`);
      return n;
    },
    format: (v) => String(v),
    legacy: 0.5,
    initial: 0.5,
  }),
];

type AnySpec = (typeof SETTING_SPECS)[number];

export function settingSpec(key: string): AnySpec | undefined {
  return SETTING_SPECS.find((s) => s.key === key);
}

/** Parses stored settings; a value this version cannot parse is an error naming the setting. */
export function readSettings(stored: Record<string, string>): VolumeSettings {
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
      throw new Error(`setting ${s.key}: ${(err as Error).message}; upgrade pogfs or fix it with pogfs tune`);
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
