/**
 * The durable remote under a volume: where packs of blocks, metadata backups and the
 * writer lock live. Two backends implement it: `local:DIR` (a directory, the embedded
 * default) and `drive:FOLDER` (a Google Drive folder). The cache layer (src/cache) is the
 * only user; it never sees HTTP, paths or Drive ids beyond the opaque `RemoteObject.id`.
 *
 * Objects are immutable once written: a pack or a metadata generation is uploaded whole
 * under a new name and only ever read or deleted afterwards, so no backend needs to
 * handle concurrent updates of one object. The one mutable object is the lock.
 */

/** What kind of object: packs (block data) and metadata backups live apart. */
export type RemoteKind = 'pack' | 'meta';

/** An object stored on the remote. */
export interface RemoteObject {
  kind: RemoteKind;
  /** The name it was stored under (unique within its kind). */
  name: string;
  /** The backend's handle for it (a relative path, a Drive file id); opaque to callers. */
  id: string;
  size: number;
}

/** How a `put` may be carried out. */
export interface PutOptions {
  /**
   * The caller promises that no object of this kind and name exists yet (it never reuses a
   * name, as with packs named by a new unique id). A backend may then skip what it does to
   * replace an existing object: DriveRemote makes no `files.list` for the name, so a pack
   * that fits in one upload chunk costs two calls (session start and one chunk). A put
   * retried inside the backend still never leaves two copies. Breaking the promise leaves
   * the old object next to the new one under the same name; `list` and reads by name then
   * see the newer.
   */
  fresh?: boolean;
}

/** Who holds the writer lock. */
export interface RemoteLock {
  /** Stable identity of the holder: the local volume's uuid (a restart of the same volume is the same owner). */
  owner: string;
  host: string;
  pid: number;
  /** When it was taken, ISO 8601. */
  since: string;
}

/** Calls made so far, by method (backend-specific names, e.g. `files.create`), for `pogfs stats`. */
export type RemoteCounters = Record<string, number>;

/** HTTP requests made so far by method and by how each ended (`ok`, or a failure's `429`, `503`, `network` ...), for metrics. */
export interface RequestOutcome {
  method: string;
  status: string;
  requests: number;
}

/** A remote refused or failed in a way the caller should report, not retry. */
export class RemoteError extends Error {
  override readonly name = 'RemoteError';
  constructor(
    message: string,
    /** 'not-found': the object does not exist; 'locked': another owner holds the lock; 'auth': credentials rejected; 'quota': out of space; 'io': anything else after retries. */
    readonly code: 'not-found' | 'locked' | 'auth' | 'quota' | 'io' | 'cancelled' = 'io',
  ) {
    super(message);
  }
}

/**
 * Bytes of a ranged read so far: `data[0, filled)` holds the range's first `filled`
 * bytes. After a failed attempt a read may start over, with a new buffer and `filled`
 * from 0 again.
 */
export type ReadProgress = (data: Buffer, filled: number) => void;

export interface Remote {
  /** How the user named it: `local:/abs/dir` or `drive:Folder name (id)`. */
  readonly description: string;

  /** Creates the remote's layout (folders) if missing; idempotent. */
  init(): Promise<void>;

  /**
   * Stores `data` under `name`; resolves once the remote holds it durably. Retries
   * transient failures itself (a pack upload resumes instead of starting over). A name
   * already stored is replaced: afterwards the name holds `data` and nothing else.
   */
  put(kind: RemoteKind, name: string, data: Buffer, options?: PutOptions): Promise<RemoteObject>;

  /**
   * Reads `length` bytes at `offset` of an object (the whole object when both are
   * omitted). Resolves with exactly that many bytes or rejects; never a short buffer.
   * A backend that streams tells `onProgress` as the bytes arrive, so a caller can use
   * the front of a long range before its end is in.
   */
  read(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>, offset?: number, length?: number, onProgress?: ReadProgress): Promise<Buffer>;

  /** Every object of a kind, in no particular order. */
  list(kind: RemoteKind): Promise<RemoteObject[]>;

  /** Deletes an object; an absent one is not an error. */
  delete(object: Pick<RemoteObject, 'kind' | 'name' | 'id'>): Promise<void>;

  /** The current lock holder, if any. */
  readLock(): Promise<RemoteLock | undefined>;

  /**
   * Takes the writer lock for `lock.owner`. Succeeds if the lock is free or already held by
   * the same owner; otherwise rejects with RemoteError code 'locked' unless `force`, which
   * takes it over (the caller warns the user).
   */
  acquireLock(lock: RemoteLock, options?: { force?: boolean }): Promise<void>;

  /** Releases the lock if `owner` holds it. */
  releaseLock(owner: string): Promise<void>;

  /** Calls made so far, by method. */
  counters(): RemoteCounters;

  /** Requests by method and outcome (an HTTP backend only). */
  requestOutcomes?(): RequestOutcome[];

  /** Ends background work (keep-alive sockets); the remote is unusable afterwards. */
  close(): Promise<void>;
}
