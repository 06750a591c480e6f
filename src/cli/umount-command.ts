import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { liveDaemon } from './daemon-record';
import { UsageError } from './errors';
import { findMount, fuseUnmount, isPogfsMount, isStaleMount } from './mounts';

export async function umount(mountpoint: string): Promise<void> {
  const target = resolve(mountpoint);
  const m = findMount(target);
  if (!m) throw new UsageError(`${target} is not mounted`);
  if (!isPogfsMount(m)) throw new UsageError(`${target} is not a pogfs mount (it is ${m.type})`);
  const daemon = liveDaemon(m.source);
  if (isStaleMount(target) || !daemon) {
    const err = fuseUnmount(target, true);
    if (err) throw new UsageError(`cannot unmount ${target}: ${err}`, 1);
    console.error(`pogfs: ${target} had no running daemon; the stale mount was removed`);
    return;
  }
  const err = fuseUnmount(target);
  if (err) throw new UsageError(`cannot unmount ${target}: ${err}`, 1);
  // The daemon commits everything once the kernel lets go, then exits. Asked through
  // liveDaemon, not kill(pid, 0): an exited daemon nobody reaps stays a zombie, which
  // kill() still finds.
  while (liveDaemon(m.source)?.pid === daemon.pid) await sleep(25);
}
