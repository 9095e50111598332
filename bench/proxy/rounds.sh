#!/usr/bin/env bash
# Interleaved rounds: several abgate configurations run at once, all pinned to core 0, and wrk (-c64, core 1) loads
# one at a time, in an order rotated per round. Prints each one's median req/s, p99 and req per CPU-second.
# Where ab.sh loads two versions at once (which measures CPU cost well, but not a design that uses idle time on the
# core, such as a background thread), this loads each alone, so each sees the machine as bench/proxy/run.sh does;
# the interleaving spreads the host's slow spells over all of them.
#
#   bash bench/proxy/rounds.sh [-r ROUNDS] [-s SECONDS] SPEC...
#
# SPEC is NAME[:VAR=value,VAR=value...][:off]: environment for that abgate (NODEFLAGS=... adds node flags), and
# `off` for exposure logging off. Example: what --single-threaded-gc does, beside logging on and off:
#   bash bench/proxy/rounds.sh on gc:NODEFLAGS=--single-threaded-gc off::off
# abgate runs as the tsup bundle that the other benchmarks use (bench/memory/harness.ts), over two nginx backends
# (`return 200`), with exposures in a fresh SQLite file, under bench/proxy/users.lua (10,000 users).
set -euo pipefail
ROUNDS=6; SECONDS_PER_ROUND=4
while getopts "r:s:" o; do case $o in r) ROUNDS=$OPTARG;; s) SECONDS_PER_ROUND=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,15p' "$0"; exit 2; }
for tool in wrk nginx taskset curl python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/proxy/lib.sh
. "$REPO/bench/proxy/lib.sh"
BIN=$(cd "$REPO" && node --import tsx -e 'import("./bench/memory/harness.ts").then((m) => { const b = m.abgateBin(); console.error(`abgate: ${b.note}`); console.log(b.path); })')
D=$(mktemp -d "${TMPDIR:-/tmp}/abgate-rounds-XXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$D"; }
trap cleanup EXIT INT TERM
ulimit -n 20000

start_backends "$D" 21831 21832

names=(); ports=(); pids=()
port=21840
for spec in "$@"; do
  IFS=: read -r name envs mode <<<"$spec"
  dir="$D/$name"; mkdir -p "$dir"
  write_abgate_config "$dir/abgate.yaml" "$port" "$dir/abgate.db" 21831 21832
  (
    cd "$REPO"
    NODEFLAGS=""
    IFS=, read -ra assignments <<<"${envs:-}"
    for a in "${assignments[@]}"; do [ -n "$a" ] && export "${a?}"; done
    [ "${mode:-on}" = off ] && export ABGATE_EXPOSURES=off
    # shellcheck disable=SC2086 # NODEFLAGS is a list of flags
    exec taskset -c 0 node $NODEFLAGS "$BIN" serve -c "$dir/abgate.yaml" >"$dir/out.log" 2>&1
  ) &
  PIDS+=($!); pids+=($!); names+=("$name"); ports+=("$port")
  port=$((port + 10))
done
for i in "${!ports[@]}"; do
  p=${ports[$i]}
  for _ in $(seq 100); do curl -s -o /dev/null -H 'x-user-id: w' "http://127.0.0.1:$p/" && break; sleep 0.2; done
  # (two spells on fresh connections, as bench/proxy/run.ts warms up: why there)
  for _ in 1 2; do taskset -c 1 wrk -t1 -c64 -d1s -s "$REPO/bench/proxy/users.lua" "http://127.0.0.1:$p/" >/dev/null; done
done
echo "$ROUNDS rounds of ${SECONDS_PER_ROUND} s per configuration: ${names[*]}"
for r in $(seq "$ROUNDS"); do
  n=${#names[@]}
  for k in $(seq 0 $((n - 1))); do
    i=$(( (k + r) % n ))
    t0=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat")
    taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_ROUND}s" --latency -s "$REPO/bench/proxy/users.lua" "http://127.0.0.1:${ports[$i]}/" > "$D/wrk.txt"
    t1=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat")
    echo "${names[$i]} $t0 $t1" >> "$D/ticks"
    cat "$D/wrk.txt" >> "$D/wrk-${names[$i]}.txt"
    python3 - "$D/wrk.txt" "${names[$i]}" "$t0" "$t1" "$SECONDS_PER_ROUND" "$D/results" <<'P'
import re, sys
text, name, t0, t1, secs, out = open(sys.argv[1]).read(), *sys.argv[2:]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
v, unit = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", text).groups()
p99 = float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
cpu = (float(t1) - float(t0)) / 100
open(out, "a").write(f"{name} {rps} {p99} {rps * float(secs) / cpu}\n")
print(f"  {name:14s} {rps:8.0f} req/s  p99 {p99:6.2f} ms  {rps * float(secs) / cpu:8.0f} req/CPU-s")
P
  done
done
python3 - "$D/results" <<'P'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, *v = line.split()
    rows[name].append(tuple(map(float, v)))
print(f"{'medians':14s} {'req/s':>8s} {'p99 ms':>7s} {'req/CPU-s':>10s}")
for name, v in rows.items():
    print(f"{name:14s} {statistics.median(x[0] for x in v):8.0f} {statistics.median(x[1] for x in v):7.2f} {statistics.median(x[2] for x in v):10.0f}")
P
