import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, relative, resolve } from 'node:path';
import { describe, it } from 'node:test';
import ts from 'typescript';

/**
 * The layer rule (README, "Layout, by layer"): data flows top to bottom and nothing imports
 * upward. Top to bottom: cli (and fsck beside it) → fuse, gc → vfs, driveview → cache → meta,
 * store, remote → posix → the shared helpers at the top of src/; fuse knows the filesystems it
 * serves only through posix's FileSystem interface, and the metadata engine answers with
 * posix's errnos and mode bits. This file is the one place the allowed
 * imports are written down; the README's table is checked against it.
 */

const ROOT = resolve(__dirname, '..', '..');

type Layer = 'cli' | 'fsck' | 'fuse' | 'gc' | 'vfs' | 'driveview' | 'posix' | 'cache' | 'meta' | 'store' | 'remote' | 'shared';

/** Which layers a layer's files may import (besides their own layer). */
const MAY_IMPORT: Record<Layer, readonly Layer[]> = {
  cli: ['fsck', 'fuse', 'gc', 'vfs', 'driveview', 'posix', 'cache', 'meta', 'store', 'remote', 'shared'],
  fsck: ['vfs', 'driveview', 'posix', 'cache', 'meta', 'store', 'remote', 'shared'],
  fuse: ['posix', 'shared'],
  gc: ['vfs', 'posix', 'cache', 'meta', 'store', 'remote', 'shared'],
  vfs: ['posix', 'cache', 'meta', 'store', 'remote', 'shared'],
  driveview: ['posix', 'cache', 'store', 'remote', 'shared'],
  posix: ['shared'],
  cache: ['meta', 'store', 'remote', 'shared'],
  meta: ['posix', 'shared'],
  store: ['shared'],
  remote: ['shared'],
  shared: [],
};

/** Of cli, only the commands use fsck (the daemon and the rest of the CLI do not). */
const FSCK_USERS = /^src\/cli\/[^/]+-command\.ts$/;

/** Packages only their owners import: SQL only in meta (and the Drive view's mirror and journal), LMDB only in the store, the Drive API only in remote (and the Drive view). */
const PACKAGE_OWNERS: Record<string, readonly string[]> = {
  'better-sqlite3': ['src/meta/', 'src/driveview/mirror-db.ts', 'src/driveview/journal-db.ts'],
  pg: ['src/meta/'],
  lmdb: ['src/store/'],
  '@googleapis/drive': ['src/remote/', 'src/driveview/'],
};

/**
 * Imports that break the rule today, each with why it is still there. Delete an entry when
 * the import goes (a test below fails while an entry matches nothing).
 */
const ALLOWED_EXCEPTIONS: readonly { from: string; to: string; reason: string }[] = [
  { from: 'src/cli/version-command.ts', to: 'better-sqlite3', reason: 'pogfs version loads each native module to report its version' },
  { from: 'src/cli/version-command.ts', to: 'lmdb', reason: 'pogfs version loads each native module to report its version' },
  { from: 'src/cli/auth-command.ts', to: '@googleapis/drive', reason: 'pogfs auth runs the OAuth consent flow with the Google client' },
];

interface Import {
  /** The importing file, relative to the repository (src/cli/daemon.ts). */
  from: string;
  /** The imported module: a repository path without extension (fsck/gc), or a package name. */
  to: string;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
    const rel = posix.join(dir, e.name);
    if (e.isDirectory()) out.push(...sourceFiles(rel));
    else if (e.name.endsWith('.ts')) out.push(rel);
  }
  return out;
}

/** Every module a file imports (static, dynamic, require, `import type`), as repository paths or package names. */
function importsOf(file: string): Import[] {
  const info = ts.preProcessFile(readFileSync(join(ROOT, file), 'utf8'), true, true);
  return info.importedFiles.map(({ fileName }) => ({
    from: file,
    to: fileName.startsWith('.') ? relative(ROOT, resolve(ROOT, dirname(file), fileName)).split('\\').join('/') : packageName(fileName),
  }));
}

function packageName(spec: string): string {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

/** The layer of a repository path, or undefined outside src/ and fsck/. */
function layerOf(path: string): Layer | undefined {
  const parts = path.split('/');
  if (parts[0] === 'fsck') return 'fsck';
  if (parts[0] !== 'src') return undefined;
  if (parts.length === 2) return 'shared';
  const layer = parts[1];
  if (!(layer in MAY_IMPORT)) throw new Error(`${path}: src/${layer}/ is a folder the layer table does not know: add it to MAY_IMPORT (and the README)`);
  return layer as Layer;
}

/** Why an import breaks the rule, or undefined when it does not. */
function violation(imp: Import): string | undefined {
  const from = layerOf(imp.from)!;
  if (!imp.to.startsWith('src/') && !imp.to.startsWith('fsck/') && !imp.to.startsWith('.')) {
    const owners = PACKAGE_OWNERS[imp.to];
    if (owners && !owners.some((o) => imp.from === o || (o.endsWith('/') && imp.from.startsWith(o)))) return `${imp.from} imports ${imp.to}, which only ${owners.join(', ')} may import`;
    return undefined;
  }
  const to = layerOf(imp.to);
  if (to === undefined) return `${imp.from} imports ${imp.to}, outside src/ and fsck/`;
  if (to === from) return undefined;
  if (!MAY_IMPORT[from].includes(to)) return `${imp.from} (${from}) imports ${imp.to} (${to}): ${from} may import only ${MAY_IMPORT[from].join(', ') || 'nothing else'}`;
  if (to === 'fsck' && from === 'cli' && !FSCK_USERS.test(imp.from)) return `${imp.from} imports ${imp.to}: of src/cli/, only the *-command.ts files may use fsck/`;
  return undefined;
}

const isException = (imp: Import) => ALLOWED_EXCEPTIONS.some((e) => e.from === imp.from && e.to === imp.to);

const allImports = (): Import[] => [...sourceFiles('src'), ...sourceFiles('fsck')].flatMap(importsOf);

describe('the layer rule', () => {
  it('no file in src/ or fsck/ imports upward (beyond the listed exceptions)', () => {
    const broken = allImports()
      .filter((imp) => !isException(imp))
      .map(violation)
      .filter((v): v is string => v !== undefined);
    assert.deepEqual(broken, []);
  });

  it('every listed exception still exists (delete the entries whose import is gone)', () => {
    const imports = allImports();
    const stale = ALLOWED_EXCEPTIONS.filter((e) => !imports.some((imp) => imp.from === e.from && imp.to === e.to));
    assert.deepEqual(stale, []);
    for (const e of ALLOWED_EXCEPTIONS) assert.ok(violation(e), `${e.from} → ${e.to} breaks no rule: it need not be an exception`);
  });

  it('catches an upward import, a sideways one, a misplaced package and fsck used outside the commands', () => {
    assert.match(violation({ from: 'src/store/block-store.ts', to: 'src/vfs/volume' }) ?? '', /store may import only shared/);
    assert.match(violation({ from: 'src/meta/meta-db.ts', to: 'src/store/hash' }) ?? '', /meta/);
    assert.match(violation({ from: 'src/vfs/volume.ts', to: 'src/driveview/names' }) ?? '', /vfs/);
    assert.match(violation({ from: 'src/fuse/session.ts', to: 'src/cli/log' }) ?? '', /fuse/);
    assert.match(violation({ from: 'src/fuse/fs-adapter.ts', to: 'src/vfs/filesystem' }) ?? '', /fuse may import only posix, shared/);
    assert.match(violation({ from: 'src/posix/file-system.ts', to: 'src/vfs/time' }) ?? '', /posix/);
    assert.match(violation({ from: 'fsck/checker.ts', to: 'src/fuse/types' }) ?? '', /fsck/);
    assert.match(violation({ from: 'src/cache/restore.ts', to: 'fsck/report' }) ?? '', /cache/);
    assert.match(violation({ from: 'src/cli/mounts.ts', to: 'fsck/gc' }) ?? '', /only the \*-command\.ts files/);
    assert.match(violation({ from: 'src/vfs/volume.ts', to: 'lmdb' }) ?? '', /only src\/store\//);
    assert.match(violation({ from: 'src/cache/ledger.ts', to: 'pg' }) ?? '', /only src\/meta\//);
    assert.equal(violation({ from: 'src/cli/gc-command.ts', to: 'fsck/gc' }), undefined);
    assert.equal(violation({ from: 'src/cache/block-fetcher.ts', to: 'src/store/hash' }), undefined);
    assert.equal(violation({ from: 'src/store/codec.ts', to: 'src/format' }), undefined);
  });

  it('the README\'s layout table says what this file says each folder may import', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('Layout, by layer'));
    const rows = new Map<string, string>();
    for (const line of section.split('\n').slice(1)) {
      if (line.trim() === '' && rows.size > 0) break;
      const m = /^\| `([^`]+)` \|[^|]*\| (.*) \|$/.exec(line);
      if (m) rows.set(m[1], m[2]);
    }
    const folderOf = (l: Layer) => (l === 'fsck' ? 'fsck/' : l === 'shared' ? 'src/*.ts' : `src/${l}/`);
    for (const layer of Object.keys(MAY_IMPORT) as Layer[]) {
      const row = rows.get(folderOf(layer));
      assert.ok(row !== undefined, `the README's table has no row for ${folderOf(layer)}`);
      const named = [...row.matchAll(/`([^`]+)`/g)].map((m) => m[1]);
      assert.deepEqual(named.sort(), MAY_IMPORT[layer].map(folderOf).sort(), `README row ${folderOf(layer)}: ${row}`);
    }
  });
});
