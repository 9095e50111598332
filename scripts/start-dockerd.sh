#!/usr/bin/env bash
# Start a local Docker engine for abgate on a machine without one (CI, sandboxes). Idempotent: if the socket
# already answers, nothing happens. The daemon runs without a bridge or iptables rules because containers use
# host networking and such machines often lack the kernel modules (or the permissions) for NAT.
set -euo pipefail

SOCK="${DOCKER_SOCK:-/var/run/docker.sock}"
LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
WAIT_S="${DOCKERD_WAIT_S:-60}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

answers() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 3 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
  else
    docker -H "unix://$SOCK" version >/dev/null 2>&1
  fi
}

if answers; then
  echo "docker engine already answers on $SOCK"
else
  if ! command -v dockerd >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
      echo "dockerd is not installed and this is not root: install docker.io (or Docker Engine) first" >&2
      exit 1
    fi
    echo "installing docker.io (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >>"$LOG.apt" 2>&1 || {
      apt-get update >>"$LOG.apt" 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >>"$LOG.apt" 2>&1
    }
  fi
  echo "starting dockerd (log: $LOG)"
  # setsid detaches it from this shell's process group so that it outlives the caller.
  setsid dockerd --host "unix://$SOCK" --bridge=none --iptables=false --ip6tables=false >>"$LOG" 2>&1 < /dev/null &
  for ((i = 0; i < WAIT_S * 4; i++)); do
    answers && break
    sleep 0.25
  done
  if ! answers; then
    echo "dockerd did not answer on $SOCK within ${WAIT_S}s; last log lines:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  echo "docker engine ready on $SOCK"
fi

if [ "${ABGATE_SKIP_BASE_IMAGE:-0}" != 1 ]; then
  "$HERE/make-base-image.sh"
fi
