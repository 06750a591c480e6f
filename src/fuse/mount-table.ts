import { execFile, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

/**
 * The kernel's mount table and unmounting through fusermount3: the one reading of
 * /proc/self/mountinfo, the one encoding of a mount option's value, for the session and
 * the commands alike.
 */

export interface MountEntry {
  /** What was mounted (for pogfs, the volume or state directory: the fsname option). */
  source: string;
  /** The mount point. */
  target: string;
  /** Filesystem type, e.g. `fuse.pogfs`. */
  type: string;
  /** The device's "major:minor" (names the mount's bdi under /sys/class/bdi). */
  device: string;
}

/**
 * A field of /proc/self/mountinfo as the path it names: the kernel writes space, tab,
 * newline and backslash as `\ooo` octal and every other byte as is (UTF-8 for a Node path).
 */
export function decodeMountField(field: Buffer): string {
  const out: number[] = [];
  for (let i = 0; i < field.length; i++) {
    const c = field[i];
    if (c === 0x5c && i + 3 < field.length && /^[0-7]{3}$/.test(field.toString('latin1', i + 1, i + 4))) {
      out.push(parseInt(field.toString('latin1', i + 1, i + 4), 8));
      i += 3;
    } else out.push(c);
  }
  return Buffer.from(out).toString('utf8');
}

/** Splits a buffer at every `sep` byte. */
function split(buf: Buffer, sep: number): Buffer[] {
  const parts: Buffer[] = [];
  let start = 0;
  for (let at = buf.indexOf(sep); at >= 0; at = buf.indexOf(sep, start)) {
    parts.push(buf.subarray(start, at));
    start = at + 1;
  }
  parts.push(buf.subarray(start));
  return parts;
}

/**
 * Parses mountinfo: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS`,
 * in mount order.
 */
export function parseMountinfo(text: Buffer): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of split(text, 0x0a)) {
    const f = split(line, 0x20);
    const dash = f.findIndex((x, i) => i >= 6 && x.length === 1 && x[0] === 0x2d);
    if (f.length < 5 || dash < 0 || dash + 2 >= f.length) continue;
    out.push({ source: decodeMountField(f[dash + 2]), target: decodeMountField(f[4]), type: decodeMountField(f[dash + 1]), device: f[2].toString('latin1') });
  }
  return out;
}

/** This process's view of the mount table, in mount order. */
export function readMountTable(): MountEntry[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo'));
}

/** The mount at exactly this path (the topmost, if several are stacked there). */
export function findMount(mountpoint: string, table: readonly MountEntry[] = readMountTable()): MountEntry | undefined {
  const target = resolve(mountpoint);
  for (let i = table.length - 1; i >= 0; i--) if (table[i].target === target) return table[i];
  return undefined;
}

/** A mount option's value as libfuse and fusermount3 read it back: ',' separates options and '\' escapes. */
export function escapeMountOption(value: string): string {
  return value.replace(/[\\,]/g, (c) => `\\${c}`);
}

function unmountArgs(mountpoint: string, lazy: boolean): string[] {
  return ['-u', ...(lazy ? ['-z'] : []), '--', mountpoint];
}

const cannotRun = (err: Error) => `cannot run fusermount3 (${err.message}); is the fuse3 package installed?`;

/** Unmounts a FUSE mount with fusermount3; `lazy` detaches it even while busy. Returns an error message, or undefined. */
export function fuseUnmount(mountpoint: string, lazy = false): string | undefined {
  const r = spawnSync('fusermount3', unmountArgs(mountpoint, lazy), { encoding: 'utf8' });
  if (r.error) return cannotRun(r.error);
  if (r.status !== 0) return (r.stderr || r.stdout || `fusermount3 exited with ${r.status}`).trim();
  return undefined;
}

/** fuseUnmount off the JavaScript thread (a session unmounting itself must keep serving requests meanwhile). */
export function fuseUnmountAsync(mountpoint: string, lazy = false): Promise<string | undefined> {
  return new Promise((done) => {
    execFile('fusermount3', unmountArgs(mountpoint, lazy), { encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return done(undefined);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return done(cannotRun(err));
      done((stderr || stdout || err.message).trim());
    });
  });
}
