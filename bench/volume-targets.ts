import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Corpus } from './corpus';
import { dropCaches, seconds, sh } from './shell';

/** A filesystem the volume benchmark measures: where it is mounted, how to make it cold, how to stop it. */
export interface Target {
  name: string;
  dir: string;
  /**
   * Unmounts and mounts again, so nothing the kernel or the filesystem keeps in memory
   * survives; absent where the data would not (tmpfs, memfs) or no mount exists.
   */
  remount?(): Promise<void>;
  stop(): Promise<void>;
}

/** A new pogfs volume `vol-KEY` in `work` (`pogfs init` with `initArgs`), mounted with `mountArgs`. */
export function pogfsTarget(
  pogfs: string,
  work: string,
  key: string,
  label: string,
  options: { initArgs?: string[]; mountArgs?: string[] } = {},
): Target {
  const vol = join(work, `vol-${key}`);
  const dir = join(work, `pogfs-mnt-${key}`);
  const quote = (args: string[] | undefined): string => (args ?? []).map((a) => `'${a}'`).join(' ');
  mkdirSync(dir);
  sh(`${pogfs} init '${vol}' ${quote(options.initArgs)}`);
  const mount = () => void sh(`${pogfs} mount '${vol}' '${dir}' ${quote(options.mountArgs)}`);
  const umount = () => void sh(`${pogfs} umount '${dir}'`);
  mount();
  return {
    name: label,
    dir,
    remount: async () => {
      umount();
      mount();
    },
    stop: async () => umount(),
  };
}

/** Remount where the target can, then empty the page, dentry and inode caches. */
export async function makeCold(t: Target): Promise<void> {
  await t.remount?.();
  dropCaches();
}

/**
 * `tar x` of the corpus into `tree` under the target (until it is on disk), then the stat
 * walk (`find -printf '%s %m %u'`) after makeCold: seconds of each, and the tree (left in place).
 */
export async function tarAndColdWalk(t: Target, corpus: Corpus): Promise<{ tree: string; tarSeconds: number; findSeconds: number }> {
  const tree = join(t.dir, 'tree');
  mkdirSync(tree);
  const tarSeconds = seconds(`tar -C '${tree}' -xf '${corpus.tarball}' && sync -f '${tree}'`);
  await makeCold(t);
  const findSeconds = seconds(`find '${tree}' -printf '%s %m %u\\n' > /dev/null`);
  return { tree, tarSeconds, findSeconds };
}
