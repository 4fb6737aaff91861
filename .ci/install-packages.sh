#!/usr/bin/env bash
# Installs whichever of the Debian packages listed in the given files are missing.
# Uses sudo when not root. Safe to run repeatedly: it does nothing when all are present.
set -euo pipefail
packages=()
for file in "$@"; do
  while read -r line; do
    name=${line%%#*}
    name=${name//[[:space:]]/}
    [ -n "$name" ] && packages+=("$name")
  done < "$file"
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing missing packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
