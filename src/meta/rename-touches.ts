import { isDir } from '../posix/file-system';
import type { InodeRow } from './meta-db';

/** Changes to one inode a rename makes, gathered first and written once at its end. */
export interface Touch {
  nlink: number;
  /** mtime and ctime (a directory whose entries changed). */
  modified: boolean;
  /** ctime only (an inode whose names or links changed). */
  changed: boolean;
}

/**
 * What a rename of `src` (named in `parent`) to a name in `newParent` does to link counts
 * and times, the same for every engine: `dst` is the inode the new name held (replaced,
 * or with `exchange` swapped). Only the counting: the engines check, move the names and
 * write these.
 */
export function renameTouches(parent: number, newParent: number, src: InodeRow, dst: InodeRow | undefined, exchange: boolean): Map<number, Touch> {
  const touches = new Map<number, Touch>();
  const touch = (ino: number): Touch => {
    let x = touches.get(ino);
    if (!x) touches.set(ino, (x = { nlink: 0, modified: false, changed: false }));
    return x;
  };
  if (exchange && dst) {
    // A directory swapped with a non-directory carries its ".." across.
    if (parent !== newParent && isDir(src.mode) !== isDir(dst.mode)) {
      const delta = isDir(src.mode) ? 1 : -1;
      touch(newParent).nlink += delta;
      touch(parent).nlink -= delta;
    }
    touch(dst.ino).changed = true;
  } else {
    if (dst) {
      if (isDir(dst.mode)) touch(newParent).nlink -= 1; // the replaced directory's ".." is gone
      else touch(dst.ino).nlink -= 1;
      touch(dst.ino).changed = true;
    }
    if (isDir(src.mode) && parent !== newParent) {
      touch(parent).nlink -= 1;
      touch(newParent).nlink += 1;
    }
  }
  touch(src.ino).changed = true;
  touch(parent).modified = true;
  touch(newParent).modified = true;
  return touches;
}
