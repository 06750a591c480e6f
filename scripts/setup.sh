#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine: system packages, npm dependencies,
# the build, `pogfs` on the PATH, and a demo mount of the default volume.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-system-deps.sh
# `npm install`, not `npm ci`: the registry reachable here lacks some other platforms'
# optional binaries (e.g. @napi-rs/blake-hash for darwin), which `npm ci` refuses.
npm install --no-audit --no-fund
npm run build
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO npm link --no-audit --no-fund >/dev/null
# mount(8) runs /sbin/mount.TYPE for `mount -t pogfs` (and mount.fuse3, for
# `-t fuse.pogfs`, finds `pogfs` where npm link put it): see "fstab and systemd" in the README.
chmod +x dist/src/cli/main.js
$SUDO ln -sf "$PWD/dist/src/cli/main.js" /sbin/mount.pogfs
mnt="${POGFS_DEMO_MOUNT:-$HOME/pogfs}"
mkdir -p "$mnt"
if grep -q " $mnt fuse.pogfs " /proc/mounts; then
  echo "pogfs is already mounted at $mnt"
else
  pogfs mount "$mnt"
fi
echo "pogfs is mounted at $mnt (default volume). Try: cp -a /usr/share/doc $mnt/ && pogfs stats $mnt"
echo "Unmount with: pogfs umount $mnt"
