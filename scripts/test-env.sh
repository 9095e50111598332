#!/usr/bin/env bash
# Set up everything the test suite uses on a Debian machine, then run the given command (default: npm test) with
# every "required" switch on, so that a missing Docker engine, PostgreSQL or Chromium fails the run instead of
# skipping tests. Idempotent; installs only what is missing. Needs root for apt-get (as CI has).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/.."

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v curl >/dev/null 2>&1 || need+=(curl)
# test/store-stall.test.ts: a loop-mounted ext4 it freezes
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v fsfreeze >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need[*]} and not root: install them with apt-get first" >&2
    exit 1
  fi
  echo "== installing ${need[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/tmp/abgate-apt.log 2>&1 || {
    tail -n 30 /tmp/abgate-apt.log >&2
    exit 1
  }
fi

if [ ! -d node_modules ] || [ ! -f dist/cli.js ]; then
  echo "== npm ci"
  npm ci --no-audit --no-fund
fi

echo "== docker engine"
bash scripts/start-dockerd.sh

export ABGATE_REQUIRE_DOCKER=1 ABGATE_REQUIRE_POSTGRES=1 ABGATE_REQUIRE_BROWSER=1 ABGATE_REQUIRE_UNPRIVILEGED=1 ABGATE_REQUIRE_FREEZE=1
if [ $# -eq 0 ]; then set -- npm test; fi
echo "== $*"
exec "$@"
