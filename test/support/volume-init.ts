import { newInode } from '../../src/meta/meta-db';
import { S_IFDIR } from '../../src/posix/file-system';

/** What a test volume's metadata starts with: 128 KiB blocks, BLAKE3, a root directory of fixed times. */
export const newVolumeInit = () => ({
  blockSize: 131072,
  hashAlgorithm: 'blake3',
  root: newInode({ mode: S_IFDIR | 0o755, uid: 0, gid: 0, nlink: 2 }, { s: 1, ns: 2 }),
});
