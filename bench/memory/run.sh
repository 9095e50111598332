#!/usr/bin/env bash
# Memory benchmarks: 5,000 idle keep-alive connections, a 1 GiB upload and download through abgate, then
# connection churn (one request per connection, round after round).
# Everything listens on 127.0.0.1 (ports 21000-21999); every process started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
# 5,000 client sockets live in this process, and 5,000 (plus upstream ones) in abgate, whose launcher raises it too.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
driver_pid=""
cleanup() { [ -n "$driver_pid" ] && kill "$driver_pid" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
status=0
for script in idle-connections upload churn; do
  timeout 250 node --import tsx "bench/memory/$script.ts" &
  driver_pid=$!
  wait "$driver_pid" || status=$?
  driver_pid=""
  echo
done
exit "$status"
