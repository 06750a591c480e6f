import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { STATE_FILES } from '../driveview/drive-view';
import { callControl } from './control-socket';
import { setTimeout as sleep } from 'node:timers/promises';
import { liveDaemon } from './daemon-record';
import { UsageError } from './errors';
import { findMount, fuseUnmount, isPogfsMount, isStaleMount } from './mounts';

export async function umount(mountpoint: string, options: { wait: boolean } = { wait: true }): Promise<void> {
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
  // A writable Drive view would upload what is pending before exiting: told to leave it staged.
  // Told before the unmount (once the kernel lets go the daemon starts uploading), and taken
  // back if the unmount does not go ahead, so a later plain umount waits again.
  const leaving = !options.wait && existsSync(join(m.source, STATE_FILES.view));
  const left = leaving ? await callControl<{ pendingOps: number } | undefined>(m.source, { op: 'leave-pending', leave: true }).catch(() => undefined) : undefined;
  const err = fuseUnmount(target);
  if (err) {
    if (leaving) await callControl(m.source, { op: 'leave-pending', leave: false }).catch(() => undefined);
    throw new UsageError(`cannot unmount ${target}: ${err}`, 1);
  }
  if (left && left.pendingOps > 0) console.error(`pogfs: ${left.pendingOps} pending Drive operations stay staged in ${m.source}; the next mount uploads them`);
  // The daemon commits everything once the kernel lets go, then exits. Asked through
  // liveDaemon, not kill(pid, 0): an exited daemon nobody reaps stays a zombie, which
  // kill() still finds.
  const started = Date.now();
  let told = false;
  while (liveDaemon(m.source)?.pid === daemon.pid) {
    const waited = Date.now() - started;
    if (!told && waited > UMOUNT_NOTICE_MS) {
      told = true;
      console.error(`pogfs: ${target} is unmounted; waiting for its daemon (pid ${daemon.pid}) to write out what it holds (see ${join(m.source, 'pogfs.log')})`);
    }
    if (waited > UMOUNT_TIMEOUT_MS) {
      throw new UsageError(
        `${target} is unmounted, but its daemon (pid ${daemon.pid}) is still finishing after ${UMOUNT_TIMEOUT_MS / 1000} s; it keeps going in the background (see ${join(m.source, 'pogfs.log')})`,
        1,
      );
    }
    await sleep(25);
  }
}

/** After this long the user is told what the wait is for. */
const UMOUNT_NOTICE_MS = 10_000;
/** The bound on waiting for a daemon to finish after the unmount (it flushes, maybe uploads). */
const UMOUNT_TIMEOUT_MS = Number(process.env.POGFS_UMOUNT_TIMEOUT_SECONDS ?? 600) * 1000;
