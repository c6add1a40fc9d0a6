# Shared by bench/cache_rss.sh and bench/soak.sh (sourced, not run):
# a temp dir cleaned up on exit, free loopback ports, and the two servers
# every bench needs besides keyward: redis-server and an nginx upstream that
# answers 200 `{"ok":true}`. Every process started is stopped on exit and
# runs under `timeout`, so nothing outlives the script by long.

# bench_init NAME LIFETIME_S: temp dir, cleanup trap, ports P_REDIS P_UP
# P_KW P_ADMIN.
bench_init() {
  TMP=$(mktemp -d "/tmp/keyward-$1.XXXXXX")
  LIFETIME=$2
  PIDS=()
  trap bench_cleanup EXIT INT TERM
  read -r P_REDIS P_UP P_KW P_ADMIN < <(python3 -c '
import socket; s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]; print(*[x.getsockname()[1] for x in s])')
  mkdir -p "$TMP/redis" "$TMP/up/tmp"
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}

# need CMD...: exits naming the first command that is missing.
need() {
  for c in "$@"; do
    command -v "$c" >/dev/null || { echo "$(basename "$0") needs $c" >&2; exit 1; }
  done
}

# need_bin PATH: the keyward binary.
need_bin() {
  [[ -x $1 ]] || { echo "no keyward binary at $1 (cargo build --release first)" >&2; exit 1; }
}

wait_port() {
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listening on $1" >&2; return 1
}

# start_redis [EXTRA ARGS...]: on P_REDIS in $TMP/redis; REDIS_PID is the
# `timeout` wrapping it (its child is the server).
start_redis() {
  timeout "$LIFETIME" redis-server --bind 127.0.0.1 --port "$P_REDIS" --dir "$TMP/redis" \
    --save '' --loglevel warning "$@" >>"$TMP/redis.out" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$P_REDIS"
}

# seed N: N keys in keyward's layout (seed_keys.py); plaintexts in $TMP/keys.txt.
seed() {
  python3 "$BENCH_LIB_DIR/seed_keys.py" "$1" keyward: "$TMP/keys.txt" \
    | redis-cli -p "$P_REDIS" --pipe >"$TMP/seed.out"
  grep -q 'errors: 0' "$TMP/seed.out" || { cat "$TMP/seed.out" >&2; exit 1; }
}

# start_upstream: nginx on P_UP answering 200 to everything.
start_upstream() {
  cat >"$TMP/up/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $TMP/up/tmp; proxy_temp_path $TMP/up/tmp;
  fastcgi_temp_path $TMP/up/tmp; uwsgi_temp_path $TMP/up/tmp; scgi_temp_path $TMP/up/tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UP; location / { return 200 '{"ok":true}\n'; } } }
NGINX
  timeout "$LIFETIME" nginx -p "$TMP/up/" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$P_UP"
}

# write_config [STORE_OPTIONS]: $TMP/keyward.yaml with the listeners, the
# upstream and the Redis store on this run's ports (STORE_OPTIONS, e.g.
# "timeout: 500ms", go into store.redis), then what stdin holds (keys,
# plans, routes).
write_config() {
  {
    cat <<YAML
listen: "127.0.0.1:$P_KW"
admin: {listen: "127.0.0.1:$P_ADMIN"}
upstream: {url: "http://127.0.0.1:$P_UP"}
store: {kind: redis, redis: {url: "redis://127.0.0.1:$P_REDIS/0", key_prefix: "keyward:"${1:+, $1}}}
YAML
    cat
  } >"$TMP/keyward.yaml"
}

# The policy most benches use: the harness's two-window `bench` plan (so
# every request costs the full script, never hit) and one route,
# GET /v1/jobs/** needing jobs:read.
BENCH_POLICY='plans:
  bench: {limits: [{window: 1m, max: 1000000000}, {window: 1s, max: 100000000}]}
rate_limit: {default_plan: bench, anonymous_plan: bench}
routes:
  - {path: /v1/jobs/**, methods: [GET], scopes: [jobs:read]}'

# start_keyward BIN: `serve` with $TMP/keyward.yaml; KW_PID is the server.
start_keyward() {
  KEYWARD_LOG_LEVEL=${KEYWARD_LOG_LEVEL:-warn} timeout "$LIFETIME" "$1" serve --config "$TMP/keyward.yaml" >"$TMP/keyward.out" 2>&1 &
  PIDS+=($!)
  wait_port "$P_KW" || { cat "$TMP/keyward.out" >&2; exit 1; }
  KW_PID=$(pgrep -P "${PIDS[-1]}" || echo "${PIDS[-1]}")
}

BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
