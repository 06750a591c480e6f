import { E, fail } from '../posix/errors';
import { NAME_MAX } from '../posix/file-system';

/** Longest symlink target, in bytes (PATH_MAX less its NUL). */
export const SYMLINK_MAX = 4095;
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 65536;

/** ENAMETOOLONG past NAME_MAX, ENOENT for the empty name (as a path lookup says). */
export function checkName(name: Buffer): void {
  if (name.length > NAME_MAX) fail(E.ENAMETOOLONG);
  if (name.length === 0) fail(E.ENOENT);
}

/** ERANGE for an empty or too long attribute name (as Linux's xattr calls say). */
export function checkXattrName(name: Buffer): void {
  if (name.length === 0 || name.length > XATTR_NAME_MAX) fail(E.ERANGE);
}
