#!/usr/bin/env node
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { homedir } from 'node:os';
import { existsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { daemonReporter, launchDaemon, type DaemonFlags } from './daemon-launch';
import { UsageError, userFacingError } from './errors';
import { mountArgsFromHelper } from './mount-helper';
import { mountOverlap } from './mounts';
import { DEFAULT_LOG_MAX_BYTES, LOG_LEVELS, logArgv, logSettings } from './log-options';
import { parseCommitInterval, parseSize } from './units';

/** How often a mounted volume makes everything durable (like ext4's commit=5). */
const DEFAULT_COMMIT_INTERVAL_S = 5;
import { isRemoteSpec, localRemoteDir, normalizeRemoteSpec } from '../remote/remote-spec';

function defaultVolume(): string {
  const base = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(base, 'pogfs', 'default');
}

/** Lazily loaded so `--help` and argument errors never touch native modules. */
const commands = {
  init: () => import('./init-command'),
  tune: () => import('./tune-command'),
  daemon: () => import('./daemon'),
  umount: () => import('./umount-command'),
  stats: () => import('./stats-command'),
  fsck: () => import('./fsck-command'),
  gc: () => import('./gc-command'),
  remoteVolume: () => import('./remote-volume'),
  pgJoin: () => import('./pg-join'),
  pin: () => import('./pin-command'),
  clone: () => import('./clone-command'),
  status: () => import('./status-command'),
  auth: () => import('./auth-command'),
  drive: () => import('./drive-command'),
  version: () => import('./version-command'),
};

/** `--credentials`, `--drive-api-url` ... as setting keys: given with init and with a mount of a remote. */
interface RemoteFlags {
  credentials?: string;
  driveApiUrl?: string;
  driveTokenUrl?: string;
  cacheSize?: string;
  packSize?: string;
}

function remoteSettingFlags(f: RemoteFlags): Record<string, string | undefined> {
  return { 'drive-credentials': f.credentials, 'drive-api-url': f.driveApiUrl, 'drive-token-url': f.driveTokenUrl, 'cache-size': f.cacheSize, 'pack-size': f.packSize };
}

/** How a command reaches Drive: credentials and, for a Drive-compatible server, its URLs. */
function withDriveOptions(c: Command, credentials = 'Drive credentials: a token saved by pogfs auth, a service-account key, or an access token'): Command {
  return c
    .option('--credentials <file>', credentials)
    .option('--drive-api-url <url>', 'Drive API root URL (a Drive-compatible server; default Google\'s)')
    .option('--drive-token-url <url>', 'OAuth token endpoint (default Google\'s)');
}

/** The options every command that reaches a remote takes. */
function withRemoteOptions(c: Command): Command {
  return withDriveOptions(c)
    .option('--cache-size <size>', 'with a remote: the local store is a cache of at most this size (default 10G)')
    .option('--pack-size <size>', 'with a remote: bytes per uploaded pack (default 64M)');
}

/** The log and metrics options of a mount daemon; `where` names the directory holding its default log. */
function withDaemonOptions(c: Command, where: string): Command {
  return c
    .option('-v, --verbose', 'log more: the same as --log-level debug')
    .addOption(new Option('--log-level <level>', 'what the log records (default info)').choices(LOG_LEVELS))
    .option('--log-file <file>', `where the log goes (default pogfs.log in ${where}); - is stderr, with --foreground (for systemd's journal)`)
    .option('--log-max-size <size>', `rename the log to FILE.1 once it passes this size and start a new one; 0 never does (let logrotate, with kill -HUP, do it) (default ${DEFAULT_LOG_MAX_BYTES / 1024 / 1024}M)`, parseSize)
    .option('--metrics <[addr:]port>', 'serve Prometheus metrics at http://ADDR:PORT/metrics (ADDR defaults to 127.0.0.1; port 0 picks a free one, named in the log and daemon.json)');
}

interface MountFlags extends RemoteFlags, DaemonFlags {
  allowOther?: boolean;
  /** true: --sync-on-close; false: the old --no-sync-on-close (now the default, with a notice). */
  syncOnClose?: boolean;
  /** --commit-interval, seconds. */
  commitInterval?: number;
  readOnly?: boolean;
  breakLock?: boolean;
  pidFile?: string;
  cacheDir?: string;
}

/**
 * Refuses a mount that would serve the daemon's own files through itself (it would
 * hang in the kernel for ever), before anything is created, restored or spawned.
 */
async function checkMountOverlap(volume: string, mountpoint: string, cacheDir: string | undefined): Promise<void> {
  const dirs: { what: string; path: string }[] = [];
  if (isRemoteSpec(volume)) {
    const { defaultLocalCopy } = await commands.remoteVolume();
    const spec = normalizeRemoteSpec(volume);
    dirs.push({ what: 'local copy (cache directory)', path: cacheDir ?? defaultLocalCopy(spec) });
    const remoteDir = localRemoteDir(spec);
    if (remoteDir !== undefined) dirs.push({ what: 'remote directory', path: remoteDir });
  } else if ((await commands.pgJoin()).isPgUrl(volume)) {
    // The default cache directory is named by the volume's UUID: checked once it is known.
    if (cacheDir !== undefined) dirs.push({ what: 'local cache (cache directory)', path: cacheDir });
  } else dirs.push({ what: 'volume', path: volume });
  const overlap = mountOverlap(mountpoint, dirs);
  if (overlap) throw new UsageError(overlap);
}

async function mount(args: string[], flags: MountFlags): Promise<void> {
  let volume: string;
  let mountpoint: string;
  // Checked here, before anything is created, restored or started, so a typo is one line and exit 2.
  const metrics = flags.metrics === undefined ? undefined : (await import('./metrics-address')).parseMetricsAddress(flags.metrics);
  const { logFile, logOptions } = logSettings(flags);
  if (flags.syncOnClose === false && !flags.ipcReady) {
    console.error('pogfs: --no-sync-on-close is the default now (close commits without waiting for the disk; fsync and the commit interval make data durable): the flag can go');
  }

  if (args.length === 1) {
    volume = defaultVolume();
    mountpoint = args[0];
    await checkMountOverlap(volume, mountpoint, flags.cacheDir);
    const { ensureVolume } = await commands.init();
    if (ensureVolume(volume)) console.error(`pogfs: created the default volume at ${volume}`);
  } else {
    [volume, mountpoint] = args;
    await checkMountOverlap(volume, mountpoint, flags.cacheDir);
  }
  if (isRemoteSpec(volume) && !flags.ipcReady) {
    // A remote: mount its local copy, restored first if this machine has none.
    const { localCopyFor } = await commands.remoteVolume();
    volume = await localCopyFor(volume, { cacheDir: flags.cacheDir, settings: remoteSettingFlags(flags), notice: (line) => console.error(line), progress: flags });
  } else if (!flags.ipcReady && (await commands.pgJoin()).isPgUrl(volume)) {
    // A volume whose metadata is in PostgreSQL, joined from this machine: mount its local cache.
    const { joinPostgresVolume } = await commands.pgJoin();
    volume = await joinPostgresVolume(volume, { cacheDir: flags.cacheDir, notice: (line) => console.error(line) });
    await checkMountOverlap(volume, mountpoint, undefined);
  }

  if (flags.foreground) {
    const { runDaemon } = await commands.daemon();
    const report = daemonReporter(flags.ipcReady);
    await runDaemon({
      volume,
      mountpoint,
      logFile,
      logOptions,
      metrics,
      allowOther: !!flags.allowOther,
      syncOnClose: flags.syncOnClose === true,
      commitIntervalMs: (flags.commitInterval ?? DEFAULT_COMMIT_INTERVAL_S) * 1000,
      readOnly: !!flags.readOnly,
      breakLock: !!flags.breakLock,
      allowNonEmpty: !!flags.allowNonEmpty,
      pidFile: flags.pidFile ? resolve(flags.pidFile) : undefined,
      notice: report.notice,
      onReady: report.onReady,
    });
    report.finish();
    return;
  }

  // Background: run this same command in the foreground as a detached child and
  // return once it says the mount is ready (or why it is not).
  // This file, not argv[1]: invoked through a mount.pogfs link, argv[1] names the link.
  const argv = [__filename, 'mount', resolve(volume), resolve(mountpoint), '--foreground', '--ipc-ready'];
  if (flags.verbose) argv.push('--verbose');
  if (flags.allowOther) argv.push('--allow-other');
  if (flags.syncOnClose) argv.push('--sync-on-close');
  if (flags.commitInterval !== undefined) argv.push('--commit-interval', String(flags.commitInterval));
  if (flags.readOnly) argv.push('--read-only');
  if (flags.breakLock) argv.push('--break-lock');
  if (flags.allowNonEmpty) argv.push('--allow-non-empty');
  if (flags.pidFile) argv.push('--pid-file', resolve(flags.pidFile));
  if (flags.metrics !== undefined) argv.push('--metrics', flags.metrics);
  argv.push(...logArgv(logFile, logOptions));
  await launchDaemon(argv, { what: 'mount daemon', mountpoint, log: logFile ?? join(resolve(volume), 'pogfs.log') });
}

function program(): Command {
  const p = new Command('pogfs')
    .description('a deduplicating FUSE filesystem: SQLite inodes, LMDB content-addressed blocks')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({
      // Argument errors as JSON when the command was asked for JSON.
      outputError: (text, write) => {
        if (jsonOutput) process.stdout.write(`${JSON.stringify({ error: text.replace(/^error: /, '').trim(), exitCode: 2 })}\n`);
        write(text);
      },
    })
    .exitOverride()
    .addHelpText('after', '\n  -V, --version [--json]  the same as pogfs version');

  p.command('init')
    .description('create a volume directory (metadata database and block store)')
    .argument('<volume>', 'directory to create (must be new or empty)')
    .option('--block-size <size>', 'block size for deduplication, 4K to 4M, a power of two', parseSize, 128 * 1024)
    .option('--compression <codec>', 'compress each block (kept only when it saves 1/8): lz4, zstd, zstd:LEVEL (1 to 19) or none', 'lz4')
    .addOption(new Option('--superchunks <on|off>', 'pack small files and file tails into super-chunks compressed together').choices(['on', 'off']).default('on'))
    .option('--remote <spec>', 'keep the durable copy on a remote: local:DIR or drive:FOLDER (a name in My Drive, or a folder id); the local store becomes a cache')
    .option('--meta <url>', 'keep the metadata in PostgreSQL: postgres://USER@HOST[:PORT]/DB, an empty database (the password from PGPASSWORD or ~/.pgpass, never in the URL)')
    .action(async (volume: string, opts: { blockSize: number; compression: string; superchunks: 'on' | 'off'; remote?: string; meta?: string } & RemoteFlags) => {
      const { initVolume } = await commands.init();
      await initVolume(volume, opts.blockSize, { compression: opts.compression, superchunks: opts.superchunks === 'on' }, opts.remote, remoteSettingFlags(opts), opts.meta);
    });
  withRemoteOptions(p.commands.find((c) => c.name() === 'init')!);

  p.command('tune')
    .description('change settings of an unmounted volume (compression and super-chunks apply to blocks written from then on)')
    .argument('<volume>')
    .option('--compression <codec>', 'codec for new blocks: lz4, zstd, zstd:LEVEL (1 to 19) or none')
    .addOption(new Option('--superchunks <on|off>', 'pack short blocks of new files into super-chunks').choices(['on', 'off']))
    .option('--chunk-cache <size>', 'memory for decompressed super-chunks while mounted (e.g. 64M; 0 keeps none)')
    .option('--repack-below <share>', 'gc rewrites a super-chunk when less than this share (0 to 1) of it is live')
    .action(async (volume: string, opts: { compression?: string; superchunks?: string; chunkCache?: string; repackBelow?: string }) => {
      const { tune } = await commands.tune();
      tune(volume, { compression: opts.compression, superchunks: opts.superchunks, 'chunk-cache': opts.chunkCache, 'repack-below': opts.repackBelow });
    });

  p.command('mount')
    .description('mount a volume (the default volume when only a mount point is given); returns once the mount is ready')
    .usage('[options] [volume | local:DIR | drive:FOLDER | postgres://USER@HOST[:PORT]/DB] <mountpoint>')
    .argument('<volume-and-mountpoint...>', 'VOLUME MOUNTPOINT; a remote (local:DIR, drive:FOLDER) and MOUNTPOINT, restored from the remote when this machine has no copy; the PostgreSQL database of a volume (postgres://USER@HOST[:PORT]/DB, made with init --meta and --remote) and MOUNTPOINT, through a local cache; or MOUNTPOINT alone for the default volume ($XDG_DATA_HOME/pogfs/default, created on first use)')
    .option('-f, --foreground', 'keep the daemon attached to this terminal')
    .option('--allow-other', 'let other users see the mount (always on when mounted by root; needs user_allow_other in /etc/fuse.conf otherwise)')
    .option('--sync-on-close', 'make close as durable as fsync (survives a power cut); by default close commits without waiting for the disk (survives a crash of pogfs) and the commit interval makes it durable')
    .addOption(new Option('--no-sync-on-close', 'the default now; accepted with a notice').hideHelp())
    .option('--commit-interval <seconds>', `everything written reaches the disk within this many seconds (default ${DEFAULT_COMMIT_INTERVAL_S})`, parseCommitInterval)
    .option('--read-only', 'mount read-only (with a remote: no writer lock, so another machine may be writing)')
    .option('--break-lock', 'take the remote\'s writer lock from another machine (only if it will never write again)')
    .option('--allow-non-empty', 'mount over a directory that has entries (they stay hidden until unmounted)')
    .option('--pid-file <file>', 'write the daemon\'s pid here once the mount is ready (systemd Type=forking)')
    .option('--cache-dir <dir>', 'mounting a remote: where its local copy lives (default under ~/.local/share/pogfs/remotes); mounting postgres://…: where its local cache lives (default ~/.cache/pogfs/UUID)')
    .option('--progress', 'show progress on stderr (reading a remote\'s pack indexes while restoring it) even when it is not a terminal')
    .option('--json', 'errors as JSON on stdout; with --progress, progress as one JSON object per line on stderr')
    .addOption(new Option('--ipc-ready').hideHelp())
    .action(async (args: string[], flags: MountFlags) => {
      if (args.length > 2) throw new UsageError(`mount takes [VOLUME] MOUNTPOINT, not ${args.length} arguments`);
      await mount(args, flags);
    });

  withDaemonOptions(withRemoteOptions(p.commands.find((c) => c.name() === 'mount')!), 'the volume');

  p.command('umount')
    .alias('unmount')
    .description('flush everything, unmount, and wait for the daemon to exit')
    .argument('<mountpoint>')
    .option('--no-wait', 'a writable Drive view: do not wait for pending uploads (they stay staged for the next mount)')
    .action(async (mountpoint: string, opts: { wait: boolean }) => {
      const { umount } = await commands.umount();
      await umount(mountpoint, { wait: opts.wait });
    });

  p.command('stats')
    .description('files, logical bytes, unique and stored bytes, dedup ratio, block count')
    .argument('<volume-or-mountpoint>')
    .option('--json', 'machine-readable output')
    .action(async (target: string, opts: { json?: boolean }) => {
      const drive = await commands.drive();
      if (drive.driveViewOf(target)) return drive.driveStatus(target, !!opts.json, true);
      const { stats } = await commands.stats();
      await stats(target, !!opts.json);
    });

  p.command('fsck')
    .description('check a volume: missing, corrupt and orphan blocks, reference counts, the directory tree; exit 0 clean, 1 repaired, 4 problems left, 8 could not check')
    .argument('<volume>')
    .option('--quick', 'do not read and re-hash the block data (structure and counts only)')
    .option('--repair', 'fix what is found (otherwise nothing is written); with a remote, damaged blocks are fetched back from their packs')
    .option('--remote', 'also check the pack index against the remote (packs missing there, or there but unknown)')
    .option('--rebuild-from-remote [remote]', 'the metadata database is lost or damaged: restore the newest backup from the remote (the volume\'s own, or local:DIR / drive:FOLDER), rebuild the block index from the packs, then repair')
    .option('--json', 'machine-readable report')
    .option('--progress', 'show progress on stderr even when it is not a terminal; with --json, as one JSON object per line')
    .option('-f, --force', 'accepted for e2fsck habits: every run is a full check; never allows a mounted volume (a PostgreSQL volume is checked mounted or not: one snapshot of the database)')
    .action(async (volume: string, opts: { quick?: boolean; repair?: boolean; json?: boolean; force?: boolean; remote?: boolean; rebuildFromRemote?: boolean | string } & RemoteFlags) => {
      const { fsck } = await commands.fsck();
      await fsck(volume, { ...opts, settings: remoteSettingFlags(opts) });
    });
  withRemoteOptions(p.commands.find((c) => c.name() === 'fsck')!);

  p.command('gc')
    .description('delete blocks nothing references (through the daemon when mounted) and show the block store\'s free space')
    .argument('<volume>')
    .option('-n, --dry-run', 'only report what would be removed')
    .option('--compact', 'rewrite the block store compactly, giving free space back to the file system')
    .option('--repack-below <share>', 'repack super-chunks less live than this share (0 to 1; default: the volume\'s repack-below setting)')
    .option('--recompress', 'also rewrite super-chunks stored with another codec than the volume\'s current compression')
    .option('--json', 'machine-readable output')
    .option('--progress', 'show progress on stderr even when it is not a terminal; with --json, as one JSON object per line')
    .action(async (volume: string, opts: { dryRun?: boolean; compact?: boolean; json?: boolean; progress?: boolean; repackBelow?: string; recompress?: boolean }) => {
      const { gc } = await commands.gc();
      await gc(volume, opts);
    });

  p.command('status')
    .description('a mounted volume now: cache use, data waiting for upload with rate and ETA, pinned bytes, remote calls')
    .argument('<mountpoint>')
    .option('--json', 'machine-readable output')
    .action(async (mountpoint: string, opts: { json?: boolean }) => {
      const drive = await commands.drive();
      if (drive.driveViewOf(mountpoint)) return drive.driveStatus(mountpoint, !!opts.json, false);
      const { status } = await commands.status();
      await status(mountpoint, !!opts.json);
    });

  p.command('pin')
    .description('keep a file or tree local (for offline use); its blocks are fetched now and never evicted')
    .argument('<path>', 'a file or directory inside a mounted volume')
    .option('--json', 'machine-readable output')
    .option('--progress', 'show progress on stderr even when it is not a terminal; with --json, as one JSON object per line')
    .action(async (path: string, opts: { json?: boolean; progress?: boolean }) => {
      const { pin } = await commands.pin();
      await pin('pin', path, !!opts.json, !!opts.progress);
    });

  p.command('unpin')
    .description('let a pinned file or tree be evicted from the local cache again')
    .argument('<path>')
    .option('--json', 'machine-readable output')
    .action(async (path: string, opts: { json?: boolean }) => {
      const { pin } = await commands.pin();
      await pin('unpin', path, !!opts.json);
    });

  p.command('clone')
    .description('copy a file or tree inside a mounted volume at once, sharing every block (copy-on-write): modes, owners, times, xattrs, symlinks and hard links within the tree kept; exit 1 when refused (DST exists, SRC missing, inside a snapshot), 2 for a usage error')
    .argument('<src>', 'a file, symlink or directory inside a mounted pogfs volume')
    .argument('<dst>', 'a new name in the same mount (must not exist)')
    .option('--json', 'machine-readable output')
    .action(async (src: string, dst: string, opts: { json?: boolean }) => {
      const { clone } = await commands.clone();
      await clone(src, dst, !!opts.json);
    });

  const snapshot = p.command('snapshot').description('read-only snapshots of a mounted volume, at MOUNTPOINT/.snapshots/NAME');
  snapshot
    .command('create')
    .description('freeze the whole volume (or --path DIR) as MOUNTPOINT/.snapshots/NAME: no data copied, every write inside fails with EROFS; exit 1 when refused (NAME exists), 2 for a usage error')
    .argument('<mountpoint>')
    .argument('<name>')
    .option('--path <dir>', 'freeze only this file or tree inside the mount')
    .option('--json', 'machine-readable output')
    .action(async (mountpoint: string, name: string, opts: { path?: string; json?: boolean }) => {
      const { snapshotCreate } = await commands.clone();
      await snapshotCreate(mountpoint, name, opts.path, !!opts.json);
    });
  snapshot
    .command('list')
    .alias('ls')
    .description('the snapshots: name, when taken, files, and the bytes only the snapshot holds (what removing it could free)')
    .argument('<mountpoint>')
    .option('--json', 'machine-readable output')
    .action(async (mountpoint: string, opts: { json?: boolean }) => {
      const { snapshotList } = await commands.clone();
      await snapshotList(mountpoint, !!opts.json);
    });
  snapshot
    .command('rm')
    .description('remove a snapshot and release the blocks only it held; exit 1 when there is no such snapshot')
    .argument('<mountpoint>')
    .argument('<name>')
    .action(async (mountpoint: string, name: string) => {
      const { snapshotRemove } = await commands.clone();
      await snapshotRemove(mountpoint, name);
    });

  p.command('version')
    .description('versions of pogfs, Node.js and libfuse, and which native modules load (exit 1 if one does not)')
    .option('--json', 'machine-readable output')
    .action(async (opts: { json?: boolean }) => {
      const { version } = await commands.version();
      version(!!opts.json);
    });

  p.command('auth')
    .description('authorize pogfs to keep its files in your Google Drive (saves a refresh token, mode 0600)')
    .option('--client-secret-file <file>', 'JSON of a "Desktop app" OAuth client from the Google Cloud console')
    .option('--client-id <id>', 'OAuth client id (instead of --client-secret-file)')
    .option('--client-secret <secret>', 'OAuth client secret, with --client-id')
    .option('--credentials <file>', 'where to save the token (default ~/.config/pogfs/drive-credentials.json)')
    .option('--auth-url <url>', 'OAuth authorization endpoint')
    .option('--token-url <url>', 'OAuth token endpoint')
    .option('--no-browser', 'only print the address; do not try to open a browser')
    .addOption(new Option('--scope <scope>', 'file: only files pogfs makes (volumes); readonly: read all your files (drive mount); full: change them too (drive dupes --apply)').choices(['file', 'readonly', 'full']).default('file'))
    .action(
      async (o: { clientSecretFile?: string; clientId?: string; clientSecret?: string; credentials?: string; authUrl?: string; tokenUrl?: string; browser?: boolean; scope?: 'file' | 'readonly' | 'full' }) => {
        const { auth } = await commands.auth();
        await auth({
          clientSecretFile: o.clientSecretFile,
          clientId: o.clientId,
          clientSecret: o.clientSecret,
          credentials: o.credentials,
          authUrl: o.authUrl,
          tokenUrl: o.tokenUrl,
          noBrowser: o.browser === false,
          scope: o.scope,
        });
      },
    );

  addDriveCommands(p);
  return p;
}

/** With `--json`, scripts read errors as JSON on stdout too. */
const jsonOutput = process.argv.includes('--json');

/** The one line on stderr for people; with --json also a JSON object on stdout for scripts. */
function reportError(message: string, exitCode: number): void {
  if (jsonOutput) process.stdout.write(`${JSON.stringify({ error: message, exitCode })}\n`);
  console.error(`pogfs: ${message}`);
  process.exitCode = exitCode;
}

/** Names `pogfs` answers to as a command; anything else first is a mount(8)-style call. */
function isCommandName(p: Command, name: string): boolean {
  return name === 'help' || p.commands.some((c) => c.name() === name || c.aliases().includes(name));
}

/**
 * mount(8) reaches pogfs as `mount.pogfs SRC DIR -o OPTS` (a link named so) or, through
 * mount.fuse3 for `-t fuse.pogfs`, as `pogfs SRC DIR -o OPTS`: both become `pogfs mount`.
 * Undefined when this is an ordinary command line.
 */
function mountHelperArgs(p: Command): string[] | undefined {
  const args = process.argv.slice(2);
  const invokedAsHelper = basename(process.argv[1] ?? '').startsWith('mount.');
  const first = args[0];
  const looksLikeSource = first !== undefined && !first.startsWith('-') && !isCommandName(p, first) && (first.includes('/') || isRemoteSpec(first) || existsSync(first));
  if (!invokedAsHelper && !looksLikeSource) return undefined;
  return mountArgsFromHelper(args) ?? [];
}

/** `pogfs drive ...`: the read-only view of an existing Google Drive. */
function addDriveCommands(p: Command): void {
  const seconds = (text: string): number => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`expected a number of seconds, not ${text}`);
    return n;
  };
  const drive = p.command('drive').description('a view of your existing Google Drive (for Plex, Jellyfin...): one scan, then the changes feed; read-only, or writable with --rw');
  withDriveOptions(drive.command('mount'), 'Drive credentials (from pogfs auth --scope readonly, a service-account key, or an access token)')
    .description('mount a Drive read-only; the first mount scans it, later ones start at once; returns once the tree is served')
    .argument('<mountpoint>')
    .option('--root <folder-id>', 'show this folder instead of all of My Drive')
    .option('--shared-drive <drive-id>', 'show this shared drive')
    .option('--state-dir <dir>', 'mirror and chunk cache (default under $XDG_DATA_HOME/pogfs/drive/, one per account and root)')
    .option('--cache-size <size>', 'bound of the chunk cache on disk (default 10G)', parseSize)
    .option('--poll-interval <seconds>', 'how often to poll the changes feed (default 60; 0: only on drive refresh)', seconds)
    .option('-f, --foreground', 'keep the daemon attached to this terminal')
    .option('--chunk-size <size>', 'bytes per downloaded chunk (default 1M)', parseSize)
    .option('--readahead <size>', 'most bytes read ahead of a sequential reader (default 64M)', parseSize)
    .option('--allow-non-empty', 'mount over a directory that has entries (they stay hidden until unmounted)')
    .option('--catch-up-wait <seconds>', 'a later mount serves the stored tree after this long if Drive has not answered its catch-up poll (default 10)', seconds)
    .option('--rw', 'writable: changes are staged in the state directory and uploaded in the background (needs pogfs auth --scope full)')
    .option('--upload-delay <seconds>', 'with --rw: upload a file once closed and left alone this long (default 5)', seconds)
    .option('--staging-size <size>', 'with --rw: bound of the staging area; writes beyond it fail with ENOSPC (default 50G)', parseSize)
    .option('--progress', 'show the first scan\'s progress on stderr even when it is not a terminal')
    .option('--json', 'errors as JSON on stdout; with --progress, progress as one JSON object per line on stderr')
    .addOption(new Option('--ipc-ready').hideHelp());
  withDaemonOptions(drive.commands.find((c) => c.name() === 'mount')!, 'the state directory')
    .action(async (mountpoint: string, flags: import('./drive-command').DriveMountFlags) => {
      const { driveMount } = await commands.drive();
      await driveMount(mountpoint, flags);
    });
  drive
    .command('refresh')
    .description('apply the changes feed now; returns when the mount shows them')
    .argument('<mountpoint>')
    .action(async (mountpoint: string) => {
      const { driveRefresh } = await commands.drive();
      await driveRefresh(mountpoint);
    });
  drive
    .command('sync')
    .description('with --rw: return once everything written through the mount is on Drive (exit 1 with the reason if something cannot be uploaded)')
    .argument('<mountpoint>')
    .action(async (mountpoint: string) => {
      const { driveSync } = await commands.drive();
      await driveSync(mountpoint);
    });
  withDriveOptions(drive.command('dupes'))
    .description('duplicate files (same md5 and size) and same-named sibling folders, from the mirror (no Drive call); --apply merges folders and trashes extras')
    .argument('[mountpoint-and-path...]', 'MOUNTPOINT [PATH] (or PATH alone with --state-dir)')
    .option('--state-dir <dir>', 'the Drive view state to read (instead of a mounted view)')
    .addOption(new Option('--keep <rule>', 'which file of a group stays').choices(['newest', 'oldest', 'largest', 'smallest']).default('oldest'))
    .option('--apply', 'merge duplicate folders and move extra files to the Drive trash (needs pogfs auth --scope full); writes a log')
    .option('--undo <log>', 'put back what an --apply moved and trashed')
    .option('--json', 'machine-readable output')
    .action(async (args: string[], flags: import('./drive-command').DupesFlags) => {
      const { driveDupes } = await commands.drive();
      await driveDupes(args, flags);
    });
}

async function main(): Promise<void> {
  try {
    // Before commander: its own --version prints one string, this prints what loaded.
    if (process.argv[2] === '--version' || process.argv[2] === '-V') {
      (await commands.version()).version(jsonOutput);
      return;
    }
    const p = program();
    const helper = mountHelperArgs(p);
    if (helper && helper.length === 0) return; // mount -f: nothing to do
    await p.parseAsync(helper ? [process.argv[0], process.argv[1], ...helper] : process.argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end up here with exit code 0; usage errors were printed already.
      process.exitCode = err.exitCode === 0 ? 0 : 2;
      return;
    }
    const user = userFacingError(err);
    if (user) return reportError(user.message, user.exitCode);
    if (jsonOutput) return reportError(`unexpected error: ${(err as Error).message}`, 1);
    console.error(`pogfs: unexpected error: ${(err as Error).stack ?? String(err)}`);
    process.exitCode = 1;
  }
}

void main();
