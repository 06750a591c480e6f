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
