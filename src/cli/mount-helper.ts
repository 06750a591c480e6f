import { UsageError } from './errors';

/**
 * `mount(8)` and `/etc/fstab` reach pogfs two ways: `mount -t fuse.pogfs SRC DIR -o OPTS`
 * runs mount.fuse3, which runs `pogfs SRC DIR -o OPTS`; `mount -t pogfs` runs a helper
 * `mount.pogfs SRC DIR [-sfnv] [-o OPTS]`. Both arrive here and become the arguments of
 * `pogfs mount SRC DIR --flag ...`.
 */

/** pogfs's own `-o` options: the name in fstab → the `pogfs mount` flag (`=` ones take a value). */
const POGFS_OPTIONS: Record<string, string> = {
  ro: '--read-only',
  read_only: '--read-only',
  allow_other: '--allow-other',
  allow_non_empty: '--allow-non-empty',
  nonempty: '--allow-non-empty',
  sync_on_close: '--sync-on-close',
  no_sync_on_close: '--no-sync-on-close',
  'commit=': '--commit-interval',
  verbose: '--verbose',
  break_lock: '--break-lock',
  'cache_size=': '--cache-size',
  'pack_size=': '--pack-size',
  'cache_dir=': '--cache-dir',
  'credentials=': '--credentials',
  'drive_api_url=': '--drive-api-url',
  'drive_token_url=': '--drive-token-url',
  'pid_file=': '--pid-file',
  'log_level=': '--log-level',
  'log_file=': '--log-file',
  'log_max_size=': '--log-max-size',
  'metrics=': '--metrics',
};

/**
 * Options meant for mount(8), systemd or the kernel's generic mount flags, which a FUSE
 * mount either always has (nosuid, nodev) or cannot use: accepted and ignored, as
 * mount(8) expects of a helper.
 */
const IGNORED = new Set([
  'defaults', 'rw', 'auto', 'noauto', 'user', 'nouser', 'users', 'owner', 'group', '_netdev', 'nofail',
  'exec', 'noexec', 'suid', 'nosuid', 'dev', 'nodev', 'sync', 'async', 'atime', 'noatime', 'relatime',
  'norelatime', 'strictatime', 'lazytime', 'nolazytime', 'diratime', 'nodiratime', 'default_permissions',
  'loud', 'silent', 'iversion', 'noiversion', 'mand', 'nomand',
]);
const IGNORED_PREFIXES = ['x-', 'X-', 'comment=', 'fsname=', 'subtype=', 'uid=', 'gid=', 'helper=', 'setuid='];

/** `-o` text (comma-separated, as fstab's fourth field) → `pogfs mount` flags. */
export function mountFlagsFromOptions(text: string): string[] {
  const flags: string[] = [];
  for (const option of text.split(',').filter((o) => o.length > 0)) {
    if (IGNORED.has(option) || IGNORED_PREFIXES.some((p) => option.startsWith(p))) continue;
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq + 1);
    const flag = POGFS_OPTIONS[key];
    if (!flag) {
      const known = Object.keys(POGFS_OPTIONS).map((k) => (k.endsWith('=') ? `${k}VALUE` : k));
      throw new UsageError(`unknown mount option "${option}" (pogfs takes ${known.join(', ')}; mount(8) and x-systemd options are ignored)`);
    }
    if (eq < 0) flags.push(flag);
    else flags.push(flag, option.slice(eq + 1));
  }
  return flags;
}

/**
 * The `pogfs mount` arguments for a mount(8)-style command line
 * `SRC DIR [-o OPTS] [-s] [-f] [-n] [-v] [-t TYPE]`, or undefined for `-f`
 * (mount(8)'s "fake": do everything but the mount).
 */
export function mountArgsFromHelper(args: readonly string[]): string[] | undefined {
  const positional: string[] = [];
  const flags: string[] = [];
  let fake = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '-o') {
      const text = args[++i];
      if (text === undefined) throw new UsageError('-o needs a list of options');
      flags.push(...mountFlagsFromOptions(text));
    } else if (a.startsWith('-o') && a.length > 2) flags.push(...mountFlagsFromOptions(a.slice(2)));
    else if (a === '-t' || a === '-N') i++; // the type (fuse.pogfs) and a namespace: nothing to do
    else if (a === '-f') fake = true;
    else if (a === '-v') flags.push('--verbose');
    else if (a === '-s' || a === '-n' || a === '-r' || a === '-w') {
      // sloppy, no mtab: nothing to do; -r is -o ro.
      if (a === '-r') flags.push('--read-only');
    } else if (a.startsWith('-')) throw new UsageError(`unknown mount helper flag ${a}`);
    else positional.push(a);
  }
  if (positional.length !== 2) throw new UsageError(`a mount helper takes SOURCE MOUNTPOINT [-o OPTIONS], not ${positional.length} names`);
  if (fake) return undefined;
  // mount.fuse3 may hand the source as "pogfs#SRC" (the old fstab form).
  const source = positional[0].replace(/^pogfs#/, '');
  return ['mount', source, positional[1], ...flags];
}
