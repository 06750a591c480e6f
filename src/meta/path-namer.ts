import type { MetaScan } from './engine';
import { ROOT_INO } from '../posix/file-system';

/** How files are named to people (fsck findings, read errors): by path, names made printable. */

/** A name (bytes) for display: UTF-8 when it is valid, control and invalid bytes as \xNN. */
export function displayName(name: Buffer): string {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(name);
  } catch {
    text = Array.from(name, (b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
    return text;
  }
  return text.replace(/[\x00-\x1f\x7f\\]/g, (c) => (c === '\\' ? '\\\\' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`));
}

/** Names inodes by path, walking entries up to the root (memoized per directory). */
export class PathNamer {
  private readonly dirs = new Map<number, string>();

  constructor(private readonly meta: Pick<MetaScan, 'entriesOf'>) {}

  /** One path of `ino`, plus "(and N more links)" when several entries name it. */
  of(ino: number): string {
    if (ino === ROOT_INO) return '/';
    const links = this.meta.entriesOf(ino);
    if (links.length === 0) return `<inode #${ino}, named by no entry>`;
    const base = `${this.dir(links[0].parent)}${displayName(links[0].name)}`;
    return links.length > 1 ? `${base} (and ${links.length - 1} more link${links.length > 2 ? 's' : ''})` : base;
  }

  /** The path of a directory, ending in '/'. */
  dir(ino: number): string {
    const known = this.dirs.get(ino);
    if (known !== undefined) return known;
    const parts: string[] = [];
    const seen = new Set<number>();
    let cur = ino;
    let prefix = '/';
    while (cur !== ROOT_INO) {
      if (seen.has(cur) || seen.size > 4096) {
        prefix = `<directory cycle at #${cur}>/`;
        break;
      }
      seen.add(cur);
      const up = this.meta.entriesOf(cur)[0];
      if (!up) {
        prefix = `<unreachable #${cur}>/`;
        break;
      }
      parts.unshift(displayName(up.name));
      cur = up.parent;
    }
    const path = prefix + parts.map((p) => `${p}/`).join('');
    this.dirs.set(ino, path);
    return path;
  }
}
