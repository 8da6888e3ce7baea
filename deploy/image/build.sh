#!/usr/bin/env bash
# Build the Tollgate image without a container registry: the same layout as the Dockerfile
# (Debian bookworm, ca-certificates and libssl3, the binary at /usr/local/bin/tollgate, the
# config at /etc/tollgate/tollgate.toml, user 10001, the same ports, health check, stop signal,
# entrypoint and command), assembled with buildah from a debootstrap root filesystem and a
# binary built on this (Debian bookworm) host.
#
#   deploy/image/build.sh [--binary PATH] [--tag NAME]
#
# Defaults: `cargo build --release` and localhost/tollgate:dev. Needs buildah and debootstrap
# (scripts/install-test-deps installs them) and root. The root filesystem is cached in
# $TOLLGATE_CACHE_DIR (default ~/.cache/tollgate). Storage is vfs (no overlay needed).
# Prints the image name on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
binary=""
tag="localhost/tollgate:dev"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
export STORAGE_DRIVER=vfs
# Docker format: OCI image configs carry no HEALTHCHECK.
export BUILDAH_FORMAT=docker
if [ -z "$binary" ]; then
  (cd "$root" && cargo build --release --locked --bin tollgate >&2)
  binary="$root/target/release/tollgate"
fi
cache="${TOLLGATE_CACHE_DIR:-$HOME/.cache/tollgate}"
rootfs="$cache/rootfs-bookworm"
if [ ! -f "$rootfs/.complete" ]; then
  echo "build.sh: debootstrap bookworm (minbase + ca-certificates, libssl3) into $rootfs" >&2
  rm -rf "$rootfs" && mkdir -p "$cache"
  debootstrap --variant=minbase --include=ca-certificates,libssl3 bookworm "$rootfs" \
    http://deb.debian.org/debian >&2
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  touch "$rootfs/.complete"
fi
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr")
cp -a "$rootfs"/. "$mnt"/
rm -f "$mnt/.complete"
install -D -s -m 0755 "$binary" "$mnt/usr/local/bin/tollgate"
install -D -m 0644 "$here/tollgate.toml" "$mnt/etc/tollgate/tollgate.toml"
echo "tollgate:x:10001:10001:Tollgate:/nonexistent:/usr/sbin/nologin" >> "$mnt/etc/passwd"
echo "tollgate:x:10001:" >> "$mnt/etc/group"
buildah umount "$ctr" >/dev/null
buildah config \
  --user 10001:10001 \
  --port 9092 --port 9100-9199 --port 9644 \
  --healthcheck 'CMD /usr/local/bin/tollgate health --admin 127.0.0.1:9644 --path /readyz' \
  --healthcheck-interval 10s --healthcheck-timeout 3s --healthcheck-start-period 30s \
  --stop-signal SIGTERM \
  --entrypoint '["/usr/local/bin/tollgate"]' \
  --cmd '["run", "--config", "/etc/tollgate/tollgate.toml"]' \
  --label org.opencontainers.image.title=tollgate \
  "$ctr"
buildah commit --format docker --quiet "$ctr" "$tag" >&2
buildah rmi --prune >/dev/null 2>&1 || true
echo "$tag"
