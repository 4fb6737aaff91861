#!/usr/bin/env bash
# Checks the container's runtime without a Docker engine (CI machines have only the client).
#
# Builds a Debian 12 (bookworm) root with debootstrap, provisions it with the very script the
# Dockerfile's runtime stage runs (.ci/provision-runtime.sh: the runtime package list, no
# recommends, the mcu user), copies the release binary in, and inside that root, as user mcu:
#   1. `mcu doctor` must pass;
#   2. for every plugin package of the runtime list, `mcu doctor` with that package's plugins
#      hidden must fail and name the package (so a package missing from the list fails here);
#   3. a server starts, `mcu health` says it is healthy, and two-participant `mcu probe`s
#      against it (a VP8 room, and an H.264 room with H.264 cameras) see and hear everyone.
#
# Cost: the first run builds the root (debootstrap --variant=minbase about 40 s, the packages
# about 50 s on a 2-core machine with a nearby mirror); it is kept in target/rootfs/, keyed by a
# hash of the provisioning files, so later runs take about 20 s. Needs root (sudo otherwise).
#
# Usage: .ci/rootfs-check.sh [path/to/release/mcu]
# MCU_DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
binary=${1:-target/release/mcu}
mirror=${MCU_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

if [ "$(id -u)" -ne 0 ]; then
  exec sudo --preserve-env=MCU_DEBIAN_MIRROR "$0" "$@"
fi
[ -x "$binary" ] || { echo "rootfs-check: no binary at $binary (run cargo build --release)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "rootfs-check: debootstrap is not installed" >&2; exit 2; }

provisioning=(.ci/provision-runtime.sh .ci/install-packages.sh .ci/packages-runtime.txt)
key=$(cat "${provisioning[@]}" | sha256sum | cut -c1-16)
base=$repo/target/rootfs
root=$base/$suite-$key
log=$base/check.log
mkdir -p "$base"

mounted=()
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT

# dpkg's scripts and GStreamer are happier with /proc; everything checked here also runs without
# it (tried), so a sandbox that forbids the mount does not fail the check.
mount_proc() {
  if mount -t proc proc "$1/proc" 2>/dev/null; then
    mounted+=("$1/proc")
  else
    echo "rootfs-check: could not mount /proc in the root; going on without it"
  fi
}

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

if [ ! -e "$root/.provisioned" ]; then
  started=$(date +%s)
  # Roots of older provisioning files go; nothing may still be mounted in them.
  for old in "$base"/$suite-*; do
    [ -d "$old" ] || continue
    umount -l "$old/proc" 2>/dev/null || true
    rm -rf --one-file-system "$old"
  done
  building=$root.building
  echo "rootfs-check: debootstrap --variant=minbase $suite from $mirror"
  debootstrap --variant=minbase "$suite" "$building" "$mirror" >"$base/debootstrap.log" 2>&1 \
    || { tail -20 "$base/debootstrap.log"; exit 1; }
  echo "rootfs-check: base root in $(elapsed "$started")"
  # The same suites as the debian:bookworm-slim image: security and point-release updates.
  cat >"$building/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
  mkdir -p "$building/tmp/mcu-setup"
  cp "${provisioning[@]}" "$building/tmp/mcu-setup/"
  mount_proc "$building"
  chroot "$building" /tmp/mcu-setup/provision-runtime.sh >"$base/provision.log" 2>&1 \
    || { tail -30 "$base/provision.log"; exit 1; }
  for m in "${mounted[@]}"; do umount -l "$m"; done
  mounted=()
  rm -rf "$building/tmp/mcu-setup"
  touch "$building/.provisioned"
  mv "$building" "$root"
  echo "rootfs-check: provisioned in $(elapsed "$started") ($(du -sh --one-file-system "$root" | cut -f1))"
fi

started=$(date +%s)
install -m 0755 "$binary" "$root/usr/local/bin/mcu"
mount_proc "$root"
# As the image runs it: user mcu, its home for GStreamer's registry cache.
in_root() {
  chroot --userspec=mcu:mcu "$root" /usr/bin/env -i HOME=/var/lib/mcu PATH=/usr/local/bin:/usr/bin:/bin \
    RUST_LOG=info,webrtc=error,webrtc_ice=error "$@"
}

echo "rootfs-check: mcu doctor"
in_root mcu doctor

echo "rootfs-check: each plugin package of the runtime list, hidden, must fail mcu doctor"
plugin_dir=$(dirname "$(chroot "$root" dpkg -L libgstreamer1.0-0 | grep '/gstreamer-1.0/libgstcoreelements.so$')")
while read -r line; do
  package=${line%%#*}; package=${package//[[:space:]]/}
  [ -n "$package" ] || continue
  hidden=$(chroot "$root" dpkg -L "$package" | grep -E "^$plugin_dir/[^/]+\.so$" || true)
  [ -n "$hidden" ] || continue
  [ "$package" != libgstreamer1.0-0 ] || continue
  partial=/tmp/plugins-without-$package
  rm -rf "$root$partial"
  mkdir -p "$root$partial"
  for so in "$root$plugin_dir"/*.so; do
    inside=${so#"$root"}
    grep -qxF "$inside" <<<"$hidden" || ln -s "$inside" "$root$partial/"
  done
  chmod -R a+rX "$root$partial"
  set +e
  out=$(in_root env GST_PLUGIN_SYSTEM_PATH_1_0="$partial" GST_REGISTRY_1_0="$partial.registry" mcu doctor)
  status=$?
  set -e
  rm -rf "$root$partial" "$root$partial.registry"
  if [ "$status" -eq 0 ] || ! grep -q "install .*$package" <<<"$out"; then
    echo "$out"
    echo "rootfs-check: FAILED: without $package, mcu doctor exited $status and did not name it" >&2
    exit 1
  fi
  echo "  without $package: doctor fails and names it ($(grep -c MISSING <<<"$out") elements missing)"
done < .ci/packages-runtime.txt

echo "rootfs-check: a server and a two-participant probe inside the root"
ready=$base/server.out
: >"$ready"
in_root mcu serve --listen 127.0.0.1:0 --recordings-dir /var/lib/mcu/recordings \
  --room-codec rootfs-h264=h264 >"$ready" 2>"$log" &
server_pid=$!
for _ in $(seq 100); do
  grep -q '^listening on' "$ready" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$log"; echo "rootfs-check: the server exited" >&2; exit 1; }
  sleep 0.1
done
url=$(sed -n 's/^listening on //p' "$ready" | head -1)
[ -n "$url" ] || { cat "$log"; echo "rootfs-check: the server did not start within 10 s" >&2; exit 1; }
in_root mcu health --url "$url/healthz"
in_root mcu probe --url "$url" --room rootfs --participants 2 --seconds 4
# The H.264 path too: x264enc for the room's composite, avdec_h264 for H.264 cameras.
in_root mcu probe --url "$url" --room rootfs-h264 --codec h264 --participants 2 --seconds 4
echo "rootfs-check: passed in $(elapsed "$started") (server log: $log)"
