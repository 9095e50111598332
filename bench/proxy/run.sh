#!/usr/bin/env bash
# Proxy benchmark: abgate beside HAProxy, nginx and fastify + @fastify/reply-from. See bench/README.md.
# Everything listens on 127.0.0.1 (ports 21000-21999); every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in wrk haproxy nginx taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y wrk haproxy nginx-light util-linux)" >&2; exit 1; }
done
# 64 client connections plus pooled upstream connections per proxy; abgate's launcher raises it again for itself.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
driver_pid=""
cleanup() { [ -n "$driver_pid" ] && kill "$driver_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
# The driver itself stops what it started (its exit handler); the trap covers a kill of this shell.
timeout 200 node --import tsx bench/proxy/run.ts "$@" &
driver_pid=$!
wait "$driver_pid"
