import { relative, resolve } from 'node:path';
import type { PinResult } from '../cache/remote-cache';
import { formatBytes } from '../format';
import { callControl } from './control-socket';
import { progressDisplay } from './progress-output';
import { UsageError } from './errors';
import { pogfsMountContaining } from './mounts';

/** `pogfs pin PATH` / `pogfs unpin PATH`: asks the daemon of the mount holding PATH. */
export async function pin(op: 'pin' | 'unpin', path: string, json: boolean, showProgress = false): Promise<void> {
  const abs = resolve(path);
  const m = pogfsMountContaining(abs);
  if (!m) throw new UsageError(`${abs} is not inside a mounted pogfs volume`);
  const rel = relative(m.target, abs);
  let result: PinResult | { ino: number; unpinned: boolean };
  // The daemon fetches; on a terminal (or with --progress) its progress shows on stderr.
  const line = progressDisplay({ json, progress: showProgress });
  const onProgress = line.enabled ? line.show.bind(line) : undefined;
  try {
    result = await callControl<PinResult | { ino: number; unpinned: boolean }>(m.source, { op, path: rel }, Infinity, onProgress);
  } catch (err) {
    throw new UsageError(`${op} ${abs}: ${(err as Error).message}`);
  } finally {
    line.clear();
  }
  if (json) {
    console.log(JSON.stringify({ path: abs, ...result }, null, 2));
    return;
  }
  if ('unpinned' in result) {
    if (!result.unpinned) throw new UsageError(`${abs} was not pinned (pin and unpin name the same path)`);
    console.log(`unpinned ${abs}: its blocks may be evicted again`);
    return;
  }
  console.log(
    `pinned ${abs}: ${result.blocks} blocks (${formatBytes(result.bytes)}) kept local; ${result.fetched} fetched now` +
      (result.failed > 0 ? `, ${result.failed} could not be fetched (see the volume's log)` : ''),
  );
  if (result.failed > 0) process.exitCode = 1;
}
