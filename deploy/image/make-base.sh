#!/usr/bin/env bash
# Make a Debian bookworm base image from Debian's packages alone (no container registry needed):
#   debootstrap --variant=minbase  ->  a root filesystem  ->  buildah image $1 (default localhost/debian:bookworm).
# The Dockerfile's default BASE, debian:bookworm-slim, is the same distribution; this script is for machines
# that reach Debian's archive but no container registry (the project's own test machine). Needs root,
# debootstrap and buildah. Does nothing when the image exists already.
set -euo pipefail
image=${1:-localhost/debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if buildah inspect --type image "$image" >/dev/null 2>&1; then
  echo "make-base: $image exists"
  exit 0
fi
start=$(date +%s)
rootfs=$(mktemp -d /var/tmp/vp-rootfs-XXXXXX)
ctr=
cleanup() { [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1; rm -rf "$rootfs"; }
trap cleanup EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
# the same apt sources a debian:bookworm image has (security updates included)
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
tar -C "$rootfs" -c . | tar -C "$mnt" -x
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
buildah commit --quiet "$ctr" "$image" >/dev/null
echo "make-base: $image made in $(( $(date +%s) - start )) s"
