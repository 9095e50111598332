#!/usr/bin/env bash
# A private, throwaway PostgreSQL cluster for tests and benchmarks.
#
#   scripts/pg-cluster.sh start <dir>   initialise <dir> (created if missing), start on 127.0.0.1 and a free port
#                                       with trust auth, print the URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   scripts/pg-cluster.sh stop <dir>    stop it and delete <dir>
#   scripts/pg-cluster.sh crash-restart <dir>
#                                       kill the server without a shutdown checkpoint (pg_ctl -m immediate), then
#                                       start it again on the same port: it recovers from its WAL (durability tests)
#
# Debian's PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (runuser) in a
# directory that user owns. The socket goes in <dir> too, so nothing touches /var/run/postgresql.
# initdb skips its own fsyncs (--no-sync: the cluster is throwaway); the running server keeps fsync on, so commits
# are as durable as in production.
set -euo pipefail

die() { echo "pg-cluster: $*" >&2; exit 1; }

bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n "$d" && -x "$d/initdb" ]] || die "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); apt-get install postgresql"
  echo "$d"
}

as_owner() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || die "usage: $0 start|stop <dir>"

case "$cmd" in
  start)
    bin=$(bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ $(id -u) -eq 0 ]]; then chown postgres:postgres "$dir"; chmod 700 "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync >"$dir/initdb.log" 2>&1 \
      || die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
    # A port can be taken between choosing and binding it; try a few.
    for _ in 1 2 3 4 5; do
      port=$(free_port)
      if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
          -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null 2>&1; then
        echo "$port" >"$dir/port"
        echo "postgres://postgres@127.0.0.1:$port/postgres"
        exit 0
      fi
    done
    die "pg_ctl start failed: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
    ;;
  crash-restart)
    [[ -f "$dir/port" ]] || die "$dir is not a cluster started by this script"
    bin=$(bindir)
    port=$(cat "$dir/port")
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || die "immediate stop failed"
    # After a crash the server fsyncs its whole data directory before recovery; one syncfs() is much faster.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c recovery_init_sync_method=syncfs" start >/dev/null 2>&1 \
      || die "restart failed: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    [[ -d "$dir/data" ]] || die "$dir is not a cluster started by this script"
    bin=$(bindir)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *) die "usage: $0 start|stop|crash-restart <dir>" ;;
esac
