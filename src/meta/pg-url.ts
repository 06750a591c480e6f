import { MetadataError } from './meta-db';

/**
 * A PostgreSQL engine URL, checked: `postgres://USER@HOST[:PORT]/DB` (also `postgresql:`;
 * `?host=/socket/dir` for a Unix socket). A password is never taken from the URL, as it
 * would show in the command line, `ps`, fstab and logs: the pg client reads it from
 * PGPASSWORD, or from ~/.pgpass or the file PGPASSFILE names (only when its mode is 0600).
 */
export interface PgUrl {
  /** What the pg client is given. */
  connectionString: string;
  /** The URL to show and record (scheme `postgres:`, no password can be in it). */
  url: string;
}

/** Parses `address` (the URL after "postgres:"), refusing a URL that carries a password. */
export function parsePgUrl(address: string): PgUrl {
  const usage = 'postgres: needs a URL of the form postgres://USER@HOST[:PORT]/DB';
  if (!address.startsWith('//')) throw new MetadataError(usage);
  let parsed: URL;
  try {
    parsed = new URL(`postgres:${address}`);
  } catch {
    throw new MetadataError(usage);
  }
  if (parsed.password !== '' || parsed.searchParams.has('password')) {
    // The message names neither the URL nor the password: it goes to the terminal and the log.
    throw new MetadataError(
      'the postgres: URL carries a password, which would be seen in the command line and the log: remove it and give it in PGPASSWORD, ~/.pgpass or a file of mode 0600 named by PGPASSFILE',
    );
  }
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
  if (database === '' || database.includes('/')) throw new MetadataError(`${usage} (the database name is missing)`);
  const url = `postgres:${address}`;
  return { connectionString: url, url };
}
