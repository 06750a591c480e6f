import type { RemoteKind } from './remote';

/** Object names are plain tokens, so they are safe as file names, as Drive names and inside `q` strings alike. */
const OBJECT_NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/;

/** Throws unless `name` can name a remote object: 1–200 of `A-Z a-z 0-9 . _ -`, not starting with a dot. */
export function assertObjectName(kind: RemoteKind, name: string): void {
  if (!OBJECT_NAME.test(name)) {
    throw new Error(`invalid ${kind} name ${JSON.stringify(name.slice(0, 80))}: use 1-200 of A-Z a-z 0-9 . _ - (not starting with a dot)`);
  }
}

/** A pack's name: `p` and 40 hex digits of its content's hash, so an upload retried after a crash reuses the name. */
export function packName(contentHashHex: string): string {
  return `p${contentHashHex.slice(0, 40)}`;
}

/** The subfolder of `packs/` a pack lives in: its first two characters, so no folder grows past a few thousand entries per million packs. */
export function packPrefix(name: string): string {
  return name.slice(0, 2);
}

/** Every subfolder a pack named by `packName` can land in. */
export const PACK_PREFIXES: readonly string[] = [...'0123456789abcdef'].map((digit) => packPrefix(packName(digit)));

/** The top-level file holding the writer lock. */
export const LOCK_NAME = 'lock.json';
