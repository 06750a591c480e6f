/**
 * The FUSE ceiling in C: libfuse's own low-level passthrough example (`passthrough_ll`,
 * shipped as source with the libfuse3-dev package the project installs), serving a tmpfs
 * with its worker threads, the writeback cache and the longest cache timeouts it offers.
 * It does no work of its own beyond the kernel round trip and a system call on the tmpfs,
 * so what it takes for a workload is the least any FUSE filesystem takes on this machine.
 * Built into the work directory at each run, never kept.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { sh } from './shell';
import type { Target } from './volume-targets';

export const C_FUSE_NAME = 'passthrough_ll (C FUSE)';

/** Where Debian's libfuse3-dev puts the examples (gzip-compressed on some releases). */
const EXAMPLES = '/usr/share/doc/libfuse3-dev/examples';

/**
 * Compiles passthrough_ll into `work`; the reason instead when the example or a compiler
 * is missing, so the benchmark goes on without this row.
 */
export function buildCFuse(work: string): { binary: string } | { missing: string } {
  const dir = join(work, 'c-fuse');
  mkdirSync(dir, { recursive: true });
  for (const name of ['passthrough_ll.c', 'passthrough_helpers.h']) {
    const plain = join(EXAMPLES, name);
    if (existsSync(plain)) sh(`cp '${plain}' '${dir}/'`);
    else if (existsSync(`${plain}.gz`)) sh(`gzip -dc '${plain}.gz' > '${dir}/${name}'`);
    else if (name.endsWith('.c')) return { missing: `${plain} not found (package libfuse3-dev)` };
  }
  const binary = join(dir, 'passthrough_ll');
  const cc = spawnSync('/bin/sh', ['-c', `cc -O2 -o '${binary}' '${dir}/passthrough_ll.c' $(pkg-config fuse3 --cflags --libs)`], { encoding: 'utf8' });
  if (cc.status !== 0) return { missing: `compiling passthrough_ll failed: ${(cc.stderr || cc.stdout).trim().split('\n')[0]}` };
  return { binary };
}

/** Mounts `binary` at `mnt` over a new tmpfs at `backing` (of `sizeMib`); stop() unmounts both. */
export async function cFuse(binary: string, backing: string, mnt: string, sizeMib: number): Promise<Target> {
  mkdirSync(backing, { recursive: true });
  mkdirSync(mnt, { recursive: true });
  sh(`mount -t tmpfs -o size=${sizeMib}m pogfs-bench-c '${backing}'`);
  const child = spawn(binary, ['-f', '-o', `source=${backing},cache=always,writeback`, mnt], { stdio: ['ignore', 'ignore', 'pipe'] });
  // The example leaves its thread limit unset and libfuse 3.14 says so at start; anything else it says is passed on.
  child.stderr?.on('data', (chunk: Buffer) => {
    const rest = chunk
      .toString()
      .split('\n')
      .filter((line) => line !== '' && !/invalid max threads value/.test(line));
    if (rest.length > 0) process.stderr.write(`${rest.join('\n')}\n`);
  });
  for (let i = 0; ; i++) {
    if (sh('cat /proc/mounts').split('\n').some((l) => l.split(' ')[1] === mnt)) break;
    if (child.exitCode !== null || i >= 200) {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      sh(`umount '${backing}'`);
      throw new Error(`${mnt}: passthrough_ll did not mount`);
    }
    await sleep(50);
  }
  return {
    name: C_FUSE_NAME,
    dir: mnt,
    stop: async () => {
      const exited = new Promise((r) => child.once('exit', r));
      sh(`umount '${mnt}'`);
      await exited;
      sh(`umount '${backing}'`);
    },
  };
}
