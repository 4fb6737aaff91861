#!/usr/bin/env bash
# Turns a bare Debian 12 root into the server's runtime: the GStreamer packages listed in
# packages-runtime.txt (with --no-install-recommends: recommends would add X11, GTK and hundreds
# of MB the server never loads), a non-root user `mcu`, and its recordings directory.
# The Dockerfile's runtime stage runs this, and so does .ci/rootfs-check.sh in the debootstrap
# root that `make test` checks: what the test proves is what the image gets.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/install-packages.sh" "$here/packages-runtime.txt"
if ! id mcu >/dev/null 2>&1; then
  # A fixed uid, so a host directory mounted for recordings can be given to it (chown 10001).
  useradd --system --uid 10001 --user-group --home-dir /var/lib/mcu --shell /usr/sbin/nologin mcu
fi
install -d -o mcu -g mcu /var/lib/mcu /var/lib/mcu/recordings
apt-get clean
rm -rf /var/lib/apt/lists/*
