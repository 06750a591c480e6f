#!/usr/bin/env node
// Runs before the binding is built (npm's install step): says plainly which system
// package is missing, instead of a page of compiler errors.
'use strict';
// A plain script: npm runs it before anything is built, so no TypeScript and no imports.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { spawnSync } = require('node:child_process');

const has = (cmd, args) => {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
};
const missing = [];
if (!has('pkg-config', ['--version'])) missing.push('pkg-config');
else {
  if (!has('pkg-config', ['--exists', 'fuse3'])) missing.push('libfuse3-dev');
  if (!has('pkg-config', ['--exists', 'libzstd'])) missing.push('libzstd-dev');
}
if (!has('cc', ['--version']) && !has('gcc', ['--version'])) missing.push('gcc');
if (!has('make', ['--version'])) missing.push('make');
if (!has('g++', ['--version'])) missing.push('g++');
if (!has('fusermount3', ['-V'])) missing.push('fuse3');
if (missing.length > 0) {
  console.error(`pogfs: cannot build the FUSE binding: missing ${missing.join(', ')}; install with: sudo apt-get install ${missing.join(' ')}`);
  process.exit(1);
}
