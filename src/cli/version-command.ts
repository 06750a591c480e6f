import { readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';

/** One native implementation pogfs depends on, and whether it loads in this Node. */
export interface NativeModuleReport {
  name: string;
  /** The package's version (package.json), when found. */
  version?: string;
  loaded: boolean;
  /** The .node file that loaded, relative to the package root when inside it. */
  file?: string;
  /** What loading it threw (a missing build, an ABI mismatch ...). */
  error?: string;
  /** Extra facts the module reports about itself (SQLite's version, libfuse's). */
  detail?: Record<string, string>;
}

export interface VersionReport {
  pogfs: string;
  node: string;
  /** Node's native module ABI (NODE_MODULE_VERSION): modules must be built for it. */
  abi: string;
  platform: string;
  libfuse?: string;
  fuseApi?: string;
  native: NativeModuleReport[];
}

/** dist/src/cli/version-command.js: the package root is three levels up. */
const ROOT = join(__dirname, '..', '..', '..');

function packageVersion(dir: string): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

/** The version in a dependency's package.json (found from its entry point: `exports` may hide package.json). */
function moduleVersion(name: string): string | undefined {
  let dir: string;
  try {
    dir = dirname(require.resolve(name));
  } catch {
    return undefined;
  }
  for (; dirname(dir) !== dir; dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === name) return pkg.version;
    } catch {
      // no package.json here: look further up
    }
  }
  return undefined;
}

const loadedAddons = (): Set<string> => new Set(Object.keys(require.cache).filter((k) => k.endsWith('.node')));

/**
 * Loads one native module the way pogfs uses it; a failure is reported, never thrown,
 * so `pogfs version` is what a user runs when something does not load.
 */
function probe(name: string, load: () => Record<string, string> | void, version = moduleVersion(name)): NativeModuleReport {
  const before = loadedAddons();
  try {
    const detail = load() ?? undefined;
    const added = [...loadedAddons()].filter((f) => !before.has(f));
    // lmdb also loads msgpackr-extract: name the module's own addon when there are several.
    const file = added.find((f) => f.includes(name.replace(/^@[^/]+\//, '').split(' ')[0])) ?? added[0];
    const shown = file && !relative(ROOT, file).startsWith('..') ? relative(ROOT, file) : file;
    return { name, version, loaded: true, ...(shown ? { file: shown } : {}), ...(detail ? { detail } : {}) };
  } catch (err) {
    return { name, version, loaded: false, error: loadFailure(err) };
  }
}

/**
 * One line for why a module did not load. napi-rs loaders (lz4-napi, blake-hash) throw
 * a generic "Cannot find native binding" with the real reasons chained as causes: name
 * the first that is not just a candidate file that does not exist.
 */
function loadFailure(err: unknown): string {
  const first = (e: unknown) => ((e as Error)?.message ?? String(e)).split('\n')[0];
  const causes: unknown[] = [];
  for (let c = (err as { cause?: unknown })?.cause; c !== undefined && causes.length < 50; c = (c as { cause?: unknown })?.cause) causes.push(c);
  const reason = causes.find((c) => !/^Cannot find module/.test(first(c)));
  return reason === undefined ? first(err) : `${first(err)} (${first(reason)})`;
}

/* eslint-disable @typescript-eslint/no-require-imports -- each module is loaded inside its own probe, so one failing is reported rather than fatal */
export function versionReport(): VersionReport {
  let fuse: { libfuse: string; api: string } | undefined;
  const native: NativeModuleReport[] = [
    probe('better-sqlite3', () => {
      const Database = require('better-sqlite3') as typeof import('better-sqlite3');
      const db = new Database(':memory:');
      try {
        return { sqlite: (db.prepare('select sqlite_version() as v').get() as { v: string }).v };
      } finally {
        db.close();
      }
    }),
    probe('lmdb', () => {
      const lmdb = require('lmdb') as { version?: { versionString?: string } };
      return lmdb.version?.versionString ? { lmdb: lmdb.version.versionString } : undefined;
    }),
    probe('lz4-napi', () => {
      const { compressSync } = require('lz4-napi') as typeof import('lz4-napi');
      compressSync(Buffer.from('pogfs'));
    }),
    probe('@napi-rs/blake-hash', () => {
      const { blake3 } = require('@napi-rs/blake-hash') as typeof import('@napi-rs/blake-hash');
      blake3(Buffer.from('pogfs'));
    }),
    probe(
      'pogfs_zstd (zstd binding)',
      () => {
        const { zstdVersion } = require('../store/zstd') as typeof import('../store/zstd');
        return { libzstd: zstdVersion() };
      },
      packageVersion(ROOT),
    ),
    probe(
      'pogfs_fuse (FUSE binding)',
      () => {
        const { fuseVersions } = require('../fuse/session') as typeof import('../fuse/session');
        fuse = fuseVersions();
        return { libfuse: fuse.libfuse, api: fuse.api };
      },
      packageVersion(ROOT),
    ),
  ];
  /* eslint-enable @typescript-eslint/no-require-imports */
  return {
    pogfs: packageVersion(ROOT) ?? 'unknown',
    node: process.versions.node,
    abi: process.versions.modules,
    platform: `${process.platform}-${process.arch}`,
    ...(fuse ? { libfuse: fuse.libfuse, fuseApi: fuse.api } : {}),
    native,
  };
}

export function renderVersion(r: VersionReport): string {
  const lines = [
    `pogfs ${r.pogfs}`,
    `node ${r.node} (ABI ${r.abi}, ${r.platform})`,
    `libfuse ${r.libfuse ?? 'unknown (the FUSE binding did not load)'}${r.fuseApi ? ` (API ${r.fuseApi})` : ''}`,
    'native modules:',
  ];
  const width = Math.max(...r.native.map((m) => m.name.length));
  const vWidth = Math.max(...r.native.map((m) => (m.version ?? '?').length));
  for (const m of r.native) {
    const what = m.loaded
      ? `loaded${m.detail ? ` (${Object.entries(m.detail).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}${m.file ? ` ${m.file}` : ''}`
      : `NOT LOADED: ${m.error}`;
    lines.push(`  ${m.name.padEnd(width)}  ${(m.version ?? '?').padEnd(vWidth)}  ${what}`);
  }
  if (r.native.some((m) => !m.loaded)) lines.push(`a native module did not load (after a Node.js upgrade, this is expected): run npm rebuild in ${ROOT}, and npx node-gyp rebuild there for the FUSE binding (it needs libfuse3-dev, pkg-config and a C compiler)`);
  return lines.join('\n');
}

/** `pogfs version [--json]`: exit 0 when everything loads, 1 when a native module does not. */
export function version(json: boolean): void {
  const r = versionReport();
  console.log(json ? JSON.stringify(r, null, 2) : renderVersion(r));
  if (r.native.some((m) => !m.loaded)) process.exitCode = 1;
}
