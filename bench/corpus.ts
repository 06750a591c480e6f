import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { sh } from './shell';

/**
 * The small-file corpus of the volume benchmark: real trees of headers and scripts
 * (issue 15 measured /usr/include, /usr/share/perl and /usr/lib/python3, about 13,500
 * entries). POGFS_BENCH_CORPUS (directories separated by ':') replaces the list; a
 * directory this machine lacks is left out, and the entry count is printed, so runs
 * on different machines say what they measured.
 */
const DEFAULT_CORPUS = ['/usr/include', '/usr/share/perl', '/usr/lib/python3'];

export interface Corpus {
  tarball: string;
  /** Entries in the tarball (files, directories, symlinks), as `tar -t` lists them. */
  entries: number;
  dirs: string[];
}

/** Packs the corpus into one tarball in `dir` (a tmpfs, so reading it costs nothing). */
export function makeCorpusTarball(dir: string): Corpus {
  const wanted = process.env.POGFS_BENCH_CORPUS ? process.env.POGFS_BENCH_CORPUS.split(':').filter(Boolean) : DEFAULT_CORPUS;
  const dirs = wanted.filter((d) => existsSync(d));
  if (dirs.length === 0) throw new Error(`bench: none of the corpus directories exists (${wanted.join(', ')}); set POGFS_BENCH_CORPUS`);
  const tarball = join(dir, 'corpus.tar');
  // Paths relative to /, so the tree extracts under any directory.
  const relative = dirs.map((d) => `'${d.replace(/^\/+/, '')}'`).join(' ');
  sh(`tar -C / -cf '${tarball}' ${relative}`);
  const entries = Number(sh(`tar -tf '${tarball}' | wc -l`).trim());
  return { tarball, entries, dirs };
}
