import { execFileSync } from 'node:child_process';

export function sh(cmd: string): string {
  return execFileSync('/bin/sh', ['-c', cmd], { encoding: 'utf8', maxBuffer: 1 << 26 });
}

/** Wall-clock seconds a shell command takes. */
export function seconds(cmd: string): number {
  const t = process.hrtime.bigint();
  sh(cmd);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

/** Empties the page cache (root only), so the next read comes from the disk. */
export function dropCaches(): void {
  sh('sync; echo 3 > /proc/sys/vm/drop_caches');
}
