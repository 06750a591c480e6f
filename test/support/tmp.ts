import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

/**
 * A fresh directory removed after the current test file (or kept with POGFS_KEEP_TMP=1);
 * `beforeRemove` runs first (to unmount what lives inside).
 */
export function tempDir(prefix = 'pogfs-test-', beforeRemove?: () => void): string {
  const base = process.env.POGFS_TEST_TMP ?? tmpdir();
  const dir = mkdtempSync(join(base, prefix));
  after(() => {
    beforeRemove?.();
    if (!process.env.POGFS_KEEP_TMP) rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}
