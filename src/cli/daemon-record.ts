import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { VolumeFiles } from '../vfs/volume';

/** What a running daemon writes into its volume so `umount`, `fsck` and a second mount can find it. */
export interface DaemonRecord {
  pid: number;
  /** The process's start time in clock ticks since boot: tells a reused pid apart. */
  startTicks: string;
  mountpoint: string;
  started: string;
  /** With --metrics: where Prometheus scrapes (http://HOST:PORT/metrics). */
  metrics?: string;
}

/** Writes this process's record (mode 0600: it names where metrics are served). */
export function writeDaemonRecord(path: string, mountpoint: string, metricsUrl?: string): DaemonRecord {
  const record: DaemonRecord = {
    pid: process.pid,
    startTicks: processStartTicks(process.pid) ?? '',
    mountpoint,
    started: new Date().toISOString(),
    ...(metricsUrl ? { metrics: metricsUrl } : {}),
  };
  writeFileSync(path, JSON.stringify(record), { mode: 0o600 });
  return record;
}

export function processStartTicks(pid: number): string | undefined {
  try {
    // Field 22 of /proc/PID/stat; the command name (field 2) may hold spaces, so count from its end.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // A killed daemon nobody has reaped yet is a zombie: as dead as it gets.
    return fields[0] === 'Z' || fields[0] === 'X' ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

/** The daemon that holds the volume, if it is alive. */
export function liveDaemon(volume: string): DaemonRecord | undefined {
  const path = join(volume, VolumeFiles.daemon);
  if (!existsSync(path)) return undefined;
  try {
    const rec = JSON.parse(readFileSync(path, 'utf8')) as DaemonRecord;
    return processStartTicks(rec.pid) === rec.startTicks ? rec : undefined;
  } catch {
    return undefined;
  }
}
