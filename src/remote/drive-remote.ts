/**
 * `drive:FOLDER`: a Remote in a Google Drive folder. Layout inside the folder:
 *
 *   packs/xx/NAME   packs, in subfolders by the first two characters of the name (Drive
 *                   allows at most 500,000 items in one folder)
 *   meta/NAME       metadata backups
 *   lock.json       the writer lock
 *
 * Drive allows several files with one name in a folder, so `put` keeps names unique
 * itself: it looks the name up first (an identical file, same size and md5, is taken as
 * already stored; a different one is replaced once the new one is safe), and a create
 * retried after an ambiguous failure looks again before it uploads a second copy. A
 * `fresh` put skips the first look-up (the caller promises the name is new), never the
 * second. Uploads are checked against the md5 Drive computes.
 */
import type { DriveClient, DriveFile } from './drive-client';
import { FOLDER_MIME, md5Hex } from './drive-client';
import { assertObjectName, LOCK_NAME, PACK_PREFIXES, packPrefix } from './object-names';
import { RemoteError, type PutOptions, type ReadProgress, type Remote, type RemoteCounters, type RemoteKind, type RequestOutcome, type RemoteLock, type RemoteObject } from './remote';

const OBJECT_MIME = 'application/octet-stream';
/** How many `'id' in parents` terms one listing query ORs together (Drive limits the length of `q`). */
const PARENTS_PER_QUERY = 40;

/** Something that looks like a Drive id rather than a folder name. */
const DRIVE_ID = /^[A-Za-z0-9_-]{25,}$/;

/** A string literal for a Drive `q` query. */
export function queryString(value: string): string {
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

interface Folder {
  id: string;
  name: string;
}

export class DriveRemote implements Remote {
  private topFolder: Folder | undefined;
  /** Folder ids found so far, by path: '' the top folder, then `packs`, `meta`, `packs/ab`. */
  private readonly folderIds = new Map<string, string>();
  private readonly pending = new Map<string, Promise<string | undefined>>();

  /**
   * @param folderSpec a folder name (found, or created, in My Drive), a folder id, or `id:ID`.
   */
  constructor(
    private readonly client: DriveClient,
    private readonly folderSpec: string,
  ) {
    if (!folderSpec.trim()) throw new Error('a Drive folder name or id is needed');
  }

  get description(): string {
    return this.topFolder ? `drive:${this.topFolder.name} (${this.topFolder.id})` : `drive:${this.folderSpec}`;
  }

  /**
   * Besides the layout, learns every pack subfolder with one listing and makes the missing
   * ones now (16, once per remote): found or made one at a time while writing, each new
   * subfolder cost two calls, as many as the pack going into it.
   */
  async init(): Promise<void> {
    const packs = (await this.folderId('packs', true))!;
    await this.folderId('meta', true);
    await this.learnPackFolders(packs);
    for (const prefix of PACK_PREFIXES) {
      // The listing just said it is missing: no look-up before the create.
      if (!this.folderIds.has(`packs/${prefix}`)) this.folderIds.set(`packs/${prefix}`, (await this.createFolderIn(packs, prefix)).id);
    }
  }

  async put(kind: RemoteKind, name: string, data: Buffer, options: PutOptions = {}): Promise<RemoteObject> {
    assertObjectName(kind, name);
    const parent = (await this.folderId(kind === 'pack' ? `packs/${packPrefix(name)}` : 'meta', true))!;
    const md5 = md5Hex(data);
    // Run only before a retry that follows an ambiguous failure, fresh or not: an attempt
    // that seemed to fail may have stored the file, and a second upload would duplicate it.
    const findExact = async () => (await this.filesNamed(parent, name)).find((f) => f.size === data.length && f.md5Checksum === md5);
    // A fresh name has nothing to find or replace; the look-up would be one call in three of a pack that fits one chunk.
    const existing = options.fresh ? [] : await this.filesNamed(parent, name);
    let file = existing.find((f) => f.size === data.length && f.md5Checksum === md5);
    if (!file) {
      file = await this.client.createFile({ name, parents: [parent], mimeType: OBJECT_MIME }, data, findExact);
      // Drive computes md5 of what it received; an empty object has nothing to check.
      if (file.size !== data.length || (file.md5Checksum !== md5 && data.length > 0)) {
        await this.client.deleteFile(file.id);
        throw new RemoteError(`Drive stored ${kind} ${name} as ${file.size} bytes with md5 ${file.md5Checksum ?? 'none'}; sent ${data.length} bytes with md5 ${md5}`, 'io');
      }
    }
    for (const old of existing) if (old.id !== file.id) await this.client.deleteFile(old.id);
    return { kind, name, id: file.id, size: data.length };
  }

  async read(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>, offset?: number, length?: number, onProgress?: ReadProgress): Promise<Buffer> {
    checkRange(offset, length);
    if (object.id) {
      try {
        return await this.client.download(object.id, offset, length, onProgress);
      } catch (e) {
        if (!(e instanceof RemoteError && e.code === 'not-found')) throw e;
      }
    }
    // No id, or a stale one: the name decides.
    const found = await this.findObject(object.kind, object.name);
    if (!found || found.id === object.id) throw new RemoteError(`${object.kind} ${object.name} is not in ${this.description}`, 'not-found');
    return this.client.download(found.id, offset, length, onProgress);
  }

  async list(kind: RemoteKind): Promise<RemoteObject[]> {
    let files: DriveFile[];
    if (kind === 'meta') {
      const meta = await this.folderId('meta', false);
      files = meta ? await this.client.listFiles(`${queryString(meta)} in parents and trashed = false and mimeType != ${queryString(FOLDER_MIME)}`) : [];
    } else {
      const packs = await this.folderId('packs', false);
      if (!packs) return [];
      const subfolders = await this.learnPackFolders(packs);
      files = [];
      for (let i = 0; i < subfolders.length; i += PARENTS_PER_QUERY) {
        const parents = subfolders.slice(i, i + PARENTS_PER_QUERY).map((f) => `${queryString(f.id)} in parents`);
        files.push(...(await this.client.listFiles(`(${parents.join(' or ')}) and trashed = false and mimeType != ${queryString(FOLDER_MIME)}`)));
      }
    }
    // A name twice (a crash between upload and cleanup): the newest is the one put last.
    const byName = new Map<string, DriveFile>();
    for (const f of oldestFirst(files)) byName.set(f.name, f);
    return [...byName.values()].map((f) => ({ kind, name: f.name, id: f.id, size: f.size }));
  }

  async delete(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>): Promise<void> {
    if (object.id && (await this.client.deleteFile(object.id))) return;
    const parent = await this.folderId(object.kind === 'pack' ? `packs/${packPrefix(object.name)}` : 'meta', false);
    if (!parent) return;
    for (const f of await this.filesNamed(parent, object.name)) await this.client.deleteFile(f.id);
  }

  async readLock(): Promise<RemoteLock | undefined> {
    const top = await this.folderId('', false);
    if (!top) return undefined;
    const [current] = await this.lockFiles(top);
    return current && this.readLockFile(current);
  }

  /**
   * Takes the lock. Drive has no compare-and-swap, so this is best effort: read, write,
   * then read back and confirm we hold it. Two machines starting within the same second
   * can still both believe they hold it in rare interleavings; the lock keeps out a second
   * writer started later, which is what it is for.
   */
  async acquireLock(lock: RemoteLock, options: { force?: boolean } = {}): Promise<void> {
    const top = (await this.folderId('', true))!;
    const files = await this.lockFiles(top);
    // Force replaces even a lock file that is not a lock.
    const holder = files[0] && (await this.readLockFile(files[0]).catch((e: unknown) => {
      if (options.force && e instanceof RemoteError && e.code === 'io') return undefined;
      throw e;
    }));
    if (holder && holder.owner !== lock.owner && !options.force) throw lockedError(this.description, holder);
    const body = Buffer.from(JSON.stringify(lock));
    let ours: DriveFile;
    if (files[0]) ours = await this.client.updateContent(files[0].id, body, 'application/json');
    else ours = await this.client.createFile({ name: LOCK_NAME, parents: [top], mimeType: 'application/json' }, body);
    // When two writers created lock.json at once, the older file is the lock.
    const after = await this.lockFiles(top);
    const confirmed = after[0] && (await this.readLockFile(after[0]));
    if (!confirmed || confirmed.owner !== lock.owner) {
      if (after[0]?.id !== ours.id) await this.client.deleteFile(ours.id);
      throw lockedError(this.description, confirmed ?? lock);
    }
    for (const extra of after.slice(1)) await this.client.deleteFile(extra.id);
  }

  async releaseLock(owner: string): Promise<void> {
    const top = await this.folderId('', false);
    if (!top) return;
    for (const f of await this.lockFiles(top)) {
      const lock = await this.readLockFile(f).catch(() => undefined);
      if (lock?.owner === owner) await this.client.deleteFile(f.id);
    }
  }

  counters(): RemoteCounters {
    return this.client.counters();
  }

  requestOutcomes(): RequestOutcome[] {
    return this.client.requestOutcomes();
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  // ---- folders -----------------------------------------------------------------------

  /** Lists the subfolders of `packs/` and remembers their ids (the oldest of a name twice). */
  private async learnPackFolders(packs: string): Promise<DriveFile[]> {
    const subfolders = await this.client.listFiles(`${queryString(packs)} in parents and mimeType = ${queryString(FOLDER_MIME)} and trashed = false`);
    for (const sub of oldestFirst(subfolders)) if (!this.folderIds.has(`packs/${sub.name}`)) this.folderIds.set(`packs/${sub.name}`, sub.id);
    return subfolders;
  }

  private async lockFiles(top: string): Promise<DriveFile[]> {
    return oldestFirst(await this.filesNamed(top, LOCK_NAME));
  }

  private async readLockFile(file: DriveFile): Promise<RemoteLock> {
    const text = (await this.client.download(file.id)).toString('utf8');
    try {
      const v = JSON.parse(text) as Partial<RemoteLock>;
      if (typeof v.owner === 'string' && typeof v.host === 'string' && typeof v.pid === 'number' && typeof v.since === 'string') {
        return { owner: v.owner, host: v.host, pid: v.pid, since: v.since };
      }
    } catch {
      // fall through
    }
    throw new RemoteError(`${LOCK_NAME} in ${this.description} is not a lock (remove it if no pogfs uses this folder)`, 'io');
  }

  private async filesNamed(parent: string, name: string): Promise<DriveFile[]> {
    return this.client.listFiles(`${queryString(parent)} in parents and name = ${queryString(name)} and trashed = false and mimeType != ${queryString(FOLDER_MIME)}`);
  }

  private async findObject(kind: RemoteKind, name: string): Promise<DriveFile | undefined> {
    const parent = await this.folderId(kind === 'pack' ? `packs/${packPrefix(name)}` : 'meta', false);
    if (!parent) return undefined;
    const files = oldestFirst(await this.filesNamed(parent, name));
    return files[files.length - 1];
  }

  /** The id of the top folder (path '') or a folder under it (`packs`, `meta`, `packs/ab`); with `create`, made when missing. */
  private async folderId(path: string, create: boolean): Promise<string | undefined> {
    const known = this.folderIds.get(path);
    if (known) return known;
    let id = await this.singleFlight(`find ${path}`, () => this.findFolder(path));
    if (!id && create) id = await this.singleFlight(`make ${path}`, () => this.makeFolder(path));
    if (id) this.folderIds.set(path, id);
    return id;
  }

  /** Concurrent callers asking the same thing share one round of calls. */
  private singleFlight(key: string, fn: () => Promise<string | undefined>): Promise<string | undefined> {
    const running = this.pending.get(key);
    if (running) return running;
    const p = fn().finally(() => this.pending.delete(key));
    this.pending.set(key, p);
    return p;
  }

  private async findFolder(path: string): Promise<string | undefined> {
    if (path === '') return (await this.resolveTop(false))?.id;
    const { parentPath, name } = splitPath(path);
    const parent = await this.folderId(parentPath, false);
    if (!parent) return undefined;
    return oldestFirst(await this.client.listFiles(folderQuery(parent, name)))[0]?.id;
  }

  private async makeFolder(path: string): Promise<string | undefined> {
    if (path === '') return (await this.resolveTop(true))?.id;
    const { parentPath, name } = splitPath(path);
    const parent = (await this.folderId(parentPath, true))!;
    const [found] = oldestFirst(await this.client.listFiles(folderQuery(parent, name)));
    return (found ?? (await this.createFolderIn(parent, name))).id;
  }

  /** Creates a folder; a retry after an ambiguous failure first looks for the one that attempt may have made. */
  private async createFolderIn(parent: string, name: string): Promise<DriveFile> {
    return this.client.createFolder(name, parent, async () => oldestFirst(await this.client.listFiles(folderQuery(parent, name)))[0]);
  }

  /** Finds the top folder by id or by name in My Drive; with `create`, makes it there when missing. */
  private async resolveTop(create: boolean): Promise<Folder | undefined> {
    const spec = this.folderSpec;
    const explicitId = spec.startsWith('id:') ? spec.slice(3) : undefined;
    const candidateId = explicitId ?? (DRIVE_ID.test(spec) ? spec : undefined);
    if (candidateId !== undefined) {
      try {
        const f = await this.client.getFile(candidateId);
        if (f.mimeType !== FOLDER_MIME) throw new RemoteError(`Drive item ${candidateId} is not a folder`, 'io');
        if (f.trashed) throw new RemoteError(`Drive folder ${candidateId} is in the trash`, 'not-found');
        return (this.topFolder = { id: f.id, name: f.name });
      } catch (e) {
        const notFound = e instanceof RemoteError && e.code === 'not-found';
        if (notFound && explicitId !== undefined) throw new RemoteError(`Drive folder ${candidateId} not found (pogfs sees only folders it created itself)`, 'not-found');
        if (!notFound) throw e;
        // Not an id after all: a folder name that happens to look like one.
      }
    }
    let [found] = oldestFirst(await this.client.listFiles(folderQuery('root', spec)));
    if (!found && create) found = await this.createFolderIn('root', spec);
    if (found) this.topFolder = { id: found.id, name: found.name };
    return found && this.topFolder;
  }
}

function folderQuery(parent: string, name: string): string {
  return `${queryString(parent)} in parents and name = ${queryString(name)} and mimeType = ${queryString(FOLDER_MIME)} and trashed = false`;
}

function splitPath(path: string): { parentPath: string; name: string } {
  const slash = path.lastIndexOf('/');
  return { parentPath: slash < 0 ? '' : path.slice(0, slash), name: path.slice(slash + 1) };
}

function oldestFirst(files: DriveFile[]): DriveFile[] {
  return [...files].sort((a, b) => (a.createdTime ?? '').localeCompare(b.createdTime ?? '') || a.id.localeCompare(b.id));
}

function checkRange(offset: number | undefined, length: number | undefined): void {
  if ((offset !== undefined && !(Number.isInteger(offset) && offset >= 0)) || (length !== undefined && !(Number.isInteger(length) && length >= 0))) {
    throw new RemoteError(`bad range: offset ${offset}, length ${length}`, 'io');
  }
}

function lockedError(where: string, holder: RemoteLock): RemoteError {
  return new RemoteError(`${where} is locked by ${holder.host} (pid ${holder.pid}) since ${holder.since}`, 'locked');
}
