import { resolve } from 'node:path';

/**
 * Native modules (better-sqlite3 above all) are built for one Node.js ABI. Loaded by
 * another Node they fail deep inside whatever opened them first; this names that
 * failure so the command line can say what to do instead of "cannot open the database".
 */
export function isNativeModuleMismatch(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException | undefined;
  return !!e && typeof e.message === 'string' && (/NODE_MODULE_VERSION/.test(e.message) || (e.code === 'ERR_DLOPEN_FAILED' && /\.node\b/.test(e.message)));
}

/** The one line a user sees for a mismatched native module. */
export function nativeModuleMismatchMessage(err: unknown): string {
  const message = (err as Error).message;
  const module = /'([^']+\.node)'/.exec(message)?.[1] ?? 'a native module';
  const built = /using\s+NODE_MODULE_VERSION (\d+)/.exec(message)?.[1];
  const needed = /requires\s+NODE_MODULE_VERSION (\d+)/.exec(message)?.[1];
  const versions = built && needed ? ` (built for ABI ${built}, Node.js ${process.versions.node} needs ${needed})` : '';
  // dist/src/native-modules.js: the package root is two levels up.
  const root = resolve(__dirname, '..', '..');
  return `${module} was built for another Node.js version${versions}: run npm rebuild in ${root}`;
}
