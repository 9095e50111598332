#!/usr/bin/env bash
# Make a local Node base image without a registry: `docker import` of a tiny root filesystem holding the host's
# node binary and the shared libraries ldd names for it. Example Dockerfiles take it through
# `--build-arg BASE_IMAGE=abgate/node-base:20`; with a registry, leave BASE_IMAGE at node:20-slim instead.
# Skipped when the image exists (set ABGATE_REBUILD_BASE=1 to force).
set -euo pipefail

IMAGE="${ABGATE_BASE_IMAGE:-abgate/node-base:20}"
NODE_BIN="$(readlink -f "${NODE_BIN:-$(command -v node)}")"

if [ "${ABGATE_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE exists"
  exit 0
fi

ROOT="$(mktemp -d /tmp/abgate-rootfs.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT

copy() { # copy a file to the same path under $ROOT, following symlinks
  local src="$1"
  mkdir -p "$ROOT$(dirname "$src")"
  cp -L "$src" "$ROOT$src"
}

mkdir -p "$ROOT/usr/local/bin" "$ROOT/tmp" "$ROOT/etc" "$ROOT/app" "$ROOT/root"
chmod 1777 "$ROOT/tmp"
cp -L "$NODE_BIN" "$ROOT/usr/local/bin/node"
ln -s /usr/local/bin/node "$ROOT/usr/local/bin/nodejs"
# Every library the dynamic loader needs, at the path the binary expects it.
for lib in $(ldd "$NODE_BIN" | grep -oE '/[^ ]+' | sort -u); do
  copy "$lib"
  # the loader is also looked up by its canonical path on merged-/usr systems
  case "$lib" in /lib/*|/lib64/*) [ -e "$ROOT/usr$lib" ] || copy "$lib" ;; esac
done
# name resolution and users, so that os.userInfo() and localhost work
printf 'root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000:node:/home/node:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnode:x:1000:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
printf 'hosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$ROOT/etc/hosts"
for f in /etc/ssl/certs/ca-certificates.crt; do [ -e "$f" ] && copy "$f"; done
mkdir -p "$ROOT/home/node" && chown 1000:1000 "$ROOT/home/node"

echo "importing $IMAGE from $(du -sh "$ROOT" | cut -f1) rootfs (node $("$NODE_BIN" --version))"
tar -C "$ROOT" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV NODE_ENV=production' \
  --change 'WORKDIR /app' \
  --change 'CMD ["node"]' \
  - "$IMAGE" >/dev/null
echo "base image $IMAGE ready"
