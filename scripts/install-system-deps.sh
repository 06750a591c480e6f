#!/usr/bin/env bash
# Installs what pogfs needs from Debian/Ubuntu packages: FUSE 3 (the kernel helper and
# the library the binding builds against) and the programs the end-to-end tests drive
# (PostgreSQL: the tests of the PostgreSQL metadata engine start a server of their own).
set -euo pipefail
need=(fuse3 libfuse3-dev libzstd-dev pkg-config rsync git sqlite3 python3 postgresql)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
