#!/usr/bin/env bash
# Same-core A/B of two abgate versions: both run AT ONCE, pinned to core 0, each loaded by its own wrk (-c64, both
# on core 1), so that every slowdown of this shared machine hits both alike. The kernel shares core 0 between them;
# each one's req/s and req per CPU-second then compare their costs per request. Rounds alternate which version
# gets which port. Prints every round and the median of the per-round ratios A/B.
#
#   bash bench/proxy/ab.sh [-r ROUNDS] [-s SECONDS] A B
#
# A and B are each `work` (this work tree) or a git revision (extracted with `git archive` into
# $TMPDIR/abgate-ab-<sha>/), optionally followed by `:off` for exposure logging off. Examples:
#   bash bench/proxy/ab.sh work HEAD~1          # what the uncommitted change is worth
#   bash bench/proxy/ab.sh work work:off        # what exposure logging costs
# A_NODEFLAGS / B_NODEFLAGS add node flags to one side, e.g. A_NODEFLAGS=--max-semi-space-size=64 ... work work
# Both run from their sources through tsx (the same loader for both). Each is a sticky experiment over two nginx
# backends (`return 200`), with exposures in a fresh SQLite file, under bench/proxy/users.lua (10,000 users).
set -euo pipefail
ROUNDS=6; SECONDS_PER_ROUND=5
while getopts "r:s:" o; do case $o in r) ROUNDS=$OPTARG;; s) SECONDS_PER_ROUND=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
[ $# -eq 2 ] || { sed -n '2,15p' "$0"; exit 2; }
for tool in wrk nginx taskset curl python3; do command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }; done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=bench/proxy/lib.sh
. "$REPO/bench/proxy/lib.sh"
TSX="$REPO/node_modules/tsx/dist/esm/index.mjs"
D=$(mktemp -d "${TMPDIR:-/tmp}/abgate-ab-run-XXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT INT TERM
ulimit -n 20000

# version spec -> source dir and logging switch
src_of() {
  local rev=${1%%:*}
  if [ "$rev" = work ]; then echo "$REPO"; return; fi
  local sha; sha=$(git -C "$REPO" rev-parse "$rev")
  local dir="${TMPDIR:-/tmp}/abgate-ab-${sha:0:12}"
  if [ ! -d "$dir/src" ]; then
    mkdir -p "$dir"; ln -sfn "$REPO/node_modules" "$dir/node_modules"
    git -C "$REPO" archive "$sha" src package.json | tar -x -C "$dir"
  fi
  echo "$dir"
}
logging_of() { case $1 in *:off) echo off;; *) echo on;; esac; }

start_backends "$D" 21801 21802

start_abgate() { # name spec port nodeflags
  local dir="$D/$1"; mkdir -p "$dir"
  rm -f "$dir"/abgate.db*
  write_abgate_config "$dir/abgate.yaml" "$3" "$dir/abgate.db" 21801 21802
  local src; src=$(src_of "$2")
  (cd "$src" && ABGATE_EXPOSURES=$(logging_of "$2") exec taskset -c 0 node $4 --import "$TSX" src/cli/main.ts serve -c "$dir/abgate.yaml" >"$dir/out.log" 2>&1) &
  echo $!
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null -H 'x-user-id: w' "http://127.0.0.1:$1/" && return 0; sleep 0.2; done; echo "abgate on port $1 did not start" >&2; exit 1; }

A=$1; B=$2
echo "same-core A/B: A = $A, B = $B; $ROUNDS rounds of ${SECONDS_PER_ROUND} s (+2 × 1 s warm-up), both on core 0, two wrk -c64 on core 1"
ratios="$D/ratios"; : > "$ratios"
for r in $(seq "$ROUNDS"); do
  # Alternate ports and start order between the two.
  if [ $((r % 2)) -eq 1 ]; then
    pa=21810; pb=21820; PA=$(start_abgate a "$A" $pa "${A_NODEFLAGS:-}"); PB=$(start_abgate b "$B" $pb "${B_NODEFLAGS:-}")
  else
    pa=21820; pb=21810; PB=$(start_abgate b "$B" $pb "${B_NODEFLAGS:-}"); PA=$(start_abgate a "$A" $pa "${A_NODEFLAGS:-}")
  fi
  PIDS+=("$PA" "$PB")
  wait_up $pa; wait_up $pb
  # (the subshell execs taskset, which execs node: $! is node's pid)
  NA=$PA; NB=$PB
  # Warm-up in two spells on fresh connections, as bench/proxy/run.ts does (why: there).
  for _ in 1 2; do
    taskset -c 1 wrk -t1 -c64 -d1s -s "$REPO/bench/proxy/users.lua" "http://127.0.0.1:$pa/" >/dev/null &
    WA=$!
    taskset -c 1 wrk -t1 -c64 -d1s -s "$REPO/bench/proxy/users.lua" "http://127.0.0.1:$pb/" >/dev/null; wait $WA
  done
  a0=$(cpu_ticks "$NA"); b0=$(cpu_ticks "$NB")
  taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_ROUND}s" -s "$REPO/bench/proxy/users.lua" "http://127.0.0.1:$pa/" > "$D/wa" &
  WA=$!
  taskset -c 1 wrk -t1 -c64 -d"${SECONDS_PER_ROUND}s" -s "$REPO/bench/proxy/users.lua" "http://127.0.0.1:$pb/" > "$D/wb"
  wait $WA
  a1=$(cpu_ticks "$NA"); b1=$(cpu_ticks "$NB")
  # Not children of this shell (started in command substitutions): wait for them through /proc, bounded.
  kill "$PA" "$PB" 2>/dev/null || true
  for _ in $(seq 100); do [ -e "/proc/$PA" ] || [ -e "/proc/$PB" ] || break; sleep 0.1; done
  kill -9 "$PA" "$PB" 2>/dev/null || true
  python3 - "$r" "$D/wa" "$D/wb" "$a0" "$a1" "$b0" "$b1" "$SECONDS_PER_ROUND" "$ratios" <<'P'
import re, sys
r, wa, wb, a0, a1, b0, b1, secs, out = sys.argv[1:]
rps = lambda f: float(re.search(r"Requests/sec:\s+([\d.]+)", open(f).read()).group(1))
ra, rb = rps(wa), rps(wb)
ca, cb = (float(a1) - float(a0)) / 100, (float(b1) - float(b0)) / 100
pa, pb = ra * float(secs) / ca, rb * float(secs) / cb
print(f"round {r}: A {ra:8.0f} req/s {pa:8.0f} req/CPU-s | B {rb:8.0f} req/s {pb:8.0f} req/CPU-s | A/B req/s {ra/rb:.3f} req/CPU-s {pa/pb:.3f}")
open(out, "a").write(f"{ra/rb} {pa/pb}\n")
P
done
python3 - "$ratios" <<'P'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
print(f"median A/B: req/s {statistics.median(r[0] for r in rows):.3f}, req per CPU-s {statistics.median(r[1] for r in rows):.3f}")
P
