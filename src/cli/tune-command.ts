import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { Volume } from '../vfs/volume';
import { SETTING_SPECS, formatSettings, type VolumeSettings } from '../vfs/volume-settings';
import { liveDaemon } from './daemon-record';
import { UsageError } from './errors';

/** Setting key (as on the command line, without the dashes) → the text given. */
export type TuneFlags = Record<string, string | undefined>;

/**
 * Changes settings of an unmounted volume. A running daemon holds the settings it read at
 * mount time (and the block store open), so a mounted volume is refused rather than
 * changed behind its back. Compression and super-chunks apply to blocks written from then
 * on: existing blocks keep their form (each stored value says which it has), and a later
 * gc repacks what it finds.
 */
export function tune(target: string, flags: TuneFlags): void {
  const path = resolve(target);
  if (!existsSync(path) || !Volume.exists(path)) throw new UsageError(`${path} is not a pogfs volume`);
  const changes: Partial<Record<keyof VolumeSettings, unknown>> = {};
  for (const s of SETTING_SPECS) {
    const text = flags[s.key];
    if (text === undefined) continue;
    try {
      changes[s.field] = s.parse(text);
    } catch (err) {
      throw new UsageError(`--${s.key}: ${(err as Error).message}`);
    }
  }
  if (Object.keys(changes).length === 0) {
    throw new UsageError(`nothing to change: give ${SETTING_SPECS.map((s) => `--${s.key}`).join(', ')}`);
  }
  const holder = liveDaemon(path);
  if (holder) {
    throw new UsageError(
      `${path} is mounted at ${holder.mountpoint} (daemon pid ${holder.pid}): unmount it first (pogfs umount ${holder.mountpoint}); settings never change under a mounted volume`,
    );
  }
  const v = Volume.open(path);
  try {
    const before = formatSettings(v.settings);
    const after = formatSettings(v.changeSettings(changes as Partial<VolumeSettings>));
    for (const s of SETTING_SPECS) {
      if (flags[s.key] === undefined) continue;
      const note = s.key === 'compression' || s.key === 'superchunks' ? ' (applies to blocks written from now on)' : '';
      console.log(before[s.key] === after[s.key] ? `${v.path}: ${s.key} is already ${after[s.key]}` : `${v.path}: ${s.key} ${before[s.key]} -> ${after[s.key]}${note}`);
    }
  } finally {
    void v.close();
  }
}
