# Shared by ab.sh and rounds.sh (sourced): the two nginx backends and the abgate config they measure.

# start_backends DIR PORT_A PORT_B: one nginx, two servers that `return 200 "ok"`, its files under DIR/nginx;
# its pid is appended to PIDS.
start_backends() {
  local d=$1/nginx
  mkdir -p "$d"
  cat > "$d/be.conf" <<C
worker_processes 1; daemon off; pid $d/be.pid; error_log $d/be.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 10000000; client_body_temp_path $d/cb; proxy_temp_path $d/p;
  fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  server { listen 127.0.0.1:$2; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$3; location / { return 200 "ok"; } } }
C
  nginx -p "$d" -c "$d/be.conf" &
  PIDS+=($!)
}

# write_abgate_config FILE PORT DB PORT_A PORT_B: a sticky experiment over the two backends, proxy on PORT and
# admin on PORT + 1, exposures in the SQLite file DB.
write_abgate_config() {
  cat > "$1" <<C
experiment: bench
engine: static
listen: 127.0.0.1:$2
admin:
  listen: 127.0.0.1:$(($2 + 1))
  token: bench-token
store: sqlite:$3
strategy:
  kind: sticky
logLevel: warn
variants:
  - name: v0
    weight: 1
    url: http://127.0.0.1:$4
  - name: v1
    weight: 1
    url: http://127.0.0.1:$5
C
}
