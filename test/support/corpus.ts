import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Regular files under `dir` in sorted order, each as (relative path, bytes), until `limit` bytes in all. */
export function realFiles(dir: string, limit: number, maxFileBytes = Infinity): { name: string; data: Buffer }[] {
  const out: { name: string; data: Buffer }[] = [];
  let total = 0;
  const walk = (d: string, rel: string) => {
    for (const name of readdirSync(d).sort()) {
      if (total >= limit) return;
      const p = join(d, name);
      const st = statSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      if (st.isDirectory()) walk(p, `${rel}${name}/`);
      else if (st.isFile() && st.size > 0 && st.size <= maxFileBytes) {
        const data = readFileSync(p);
        out.push({ name: `${rel}${name}`, data });
        total += data.length;
      }
    }
  };
  walk(dir, '');
  return out;
}

/** Text files from /usr/include, concatenated until `limit` bytes. */
export function textCorpus(limit: number): Buffer {
  return Buffer.concat(realFiles('/usr/include', limit).map((f) => f.data)).subarray(0, limit);
}

/** A small tree with the things archivers care about: modes, links, times, odd names. */
export function makeArchiverTree(root: string): void {
  execFileSync('/bin/sh', ['-c', `
    set -e
    mkdir -p '${root}/a/b/c' '${root}/empty'
    for i in $(seq 1 200); do head -c $((i * 97)) /dev/urandom > '${root}/a/f'$i; done
    head -c 1000000 /dev/urandom > '${root}/a/b/big'
    cp '${root}/a/b/big' '${root}/a/b/c/big-copy'
    printf 'exec\\n' > '${root}/a/run.sh' && chmod 755 '${root}/a/run.sh'
    chmod 600 '${root}/a/f1'
    ln -s ../a/f2 '${root}/empty/../link'
    ln -s /nonexistent '${root}/dangling'
    ln '${root}/a/f3' '${root}/a/b/hard'
    printf 'x' > "${root}/$(printf 'name with spaces \\001\\377')"
    touch -h -d '2001-02-03 04:05:06.123456789' '${root}/a/f4' '${root}/link'
  `]);
}
