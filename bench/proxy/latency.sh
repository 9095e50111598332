#!/usr/bin/env bash
# Proxy latency at a pace every proxy keeps up with (about 10,000 req/s: 64 connections, each waiting 6 ms after
# a response), instead of run.sh's closed loop at saturation, whose percentiles are mostly queueing. Same proxies,
# backends, pinning and users as run.sh; prints p50, p99, p99.9 and their ratios. About 2 minutes. See bench/README.md.
set -euo pipefail
export BENCH_DELAY_MS="${BENCH_DELAY_MS:-6}" BENCH_DURATION="${BENCH_DURATION:-6}" BENCH_ROUNDS="${BENCH_ROUNDS:-3}"
exec bash "$(dirname "$0")/run.sh" "$@"
