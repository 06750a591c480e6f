import { resolve } from 'node:path';

/**
 * The one reading of a remote's spec, `local:DIR` or `drive:FOLDER`, for every layer that
 * meets one (settings, the command line, opening the remote).
 */

export type RemoteSpec = { kind: 'local'; dir: string } | { kind: 'drive'; folder: string };

const SCHEME = /^(local|drive):/;
const LOCAL = 'local:';

const ACCEPTED = 'expected local:DIR (a directory) or drive:FOLDER (a Drive folder name in My Drive, or a folder id, or id:ID)';

/** Whether `text` is written as a remote spec (a scheme and something after it), not a path. */
export function isRemoteSpec(text: string): boolean {
  return /^(local|drive):./.test(text);
}

/** Parses `local:DIR` or `drive:FOLDER`; anything else throws an Error saying which forms are accepted. */
export function parseRemoteSpec(spec: string): RemoteSpec {
  const m = SCHEME.exec(spec);
  const rest = m ? spec.slice(m[0].length) : '';
  if (m?.[1] === 'local' && rest.trim()) return { kind: 'local', dir: resolve(rest) };
  if (m?.[1] === 'drive' && rest.trim()) return { kind: 'drive', folder: rest.trim() };
  throw new Error(`bad remote ${JSON.stringify(spec)}: ${ACCEPTED}`);
}

/** A remote spec as stored: trimmed, `local:` paths made absolute (the daemon works from another directory). */
export function normalizeRemoteSpec(spec: string): string {
  const s = spec.trim();
  return s.startsWith(LOCAL) && s.length > LOCAL.length ? `${LOCAL}${resolve(s.slice(LOCAL.length))}` : s;
}

/** The directory of a `local:` remote (as written), undefined for any other spec. */
export function localRemoteDir(spec: string | undefined): string | undefined {
  return spec?.startsWith(LOCAL) ? spec.slice(LOCAL.length) : undefined;
}
