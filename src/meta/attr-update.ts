import type { AttrChange } from './engine';
import { S_IFMT } from '../posix/file-system';

/** The columns each AttrChange field writes, in a fixed order; `p` gives the next parameter placeholder. */
const ATTR_COLUMNS: readonly [keyof AttrChange, (p: () => string) => string][] = [
  ['mode', (p) => `mode = (mode & ${S_IFMT}) | (${p()} & ${0o7777})`],
  ['uid', (p) => `uid = ${p()}`],
  ['gid', (p) => `gid = ${p()}`],
  ['size', (p) => `size = ${p()}`],
  ['storedBytes', (p) => `stored_bytes = ${p()}`],
  ['atime', (p) => `atime_s = ${p()}, atime_ns = ${p()}`],
  ['mtime', (p) => `mtime_s = ${p()}, mtime_ns = ${p()}`],
  ['ctime', (p) => `ctime_s = ${p()}, ctime_ns = ${p()}`],
];

/**
 * A field-level attribute update, shared by the engines: `key` names the set of fields
 * (one cached statement per key), `args` their values in column order, `sets` the SET
 * list in the engine's placeholder syntax.
 */
export interface AttrUpdate {
  key: string;
  args: number[];
  sets(placeholder: () => string): string;
}

/** The update `change` asks for; undefined when it gives no field. */
export function attrUpdate(change: AttrChange): AttrUpdate | undefined {
  const args: number[] = [];
  const columns: ((p: () => string) => string)[] = [];
  let key = '';
  for (const [field, sql] of ATTR_COLUMNS) {
    const v = change[field];
    if (v === undefined) continue;
    key += `${field},`;
    columns.push(sql);
    if (typeof v === 'number') args.push(v);
    else args.push(v.s, v.ns);
  }
  if (key === '') return undefined;
  return { key, args, sets: (p) => columns.map((c) => c(p)).join(', ') };
}
