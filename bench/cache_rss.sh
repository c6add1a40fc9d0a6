#!/usr/bin/env bash
# Memory with a full key cache (issue 7): resident set size of keyward with
# N keys (default 100,000) cached, and whether it stays flat under load.
#
#   cargo build --release && bench/cache_rss.sh [KEYWARD_BIN]
#
# Starts, on free 127.0.0.1 ports in a temp dir: redis-server seeded with N
# keys (bench/seed_keys.py), an nginx upstream answering 200, and keyward with
# the Redis store and `keys.cache.max_entries: N`. Then wrk sends every key
# through keyward (fills the cache: one HGETALL each), and keeps the load up
# for ROUNDS more passes, printing VmRSS/VmHWM from /proc after each. Every
# process is stopped on exit. Needs redis-server, redis-cli, nginx, wrk,
# python3, curl. Knobs: N, ROUNDS (3), PASS_S (seconds per pass, 12), CONNS (64).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-${KEYWARD_BIN:-$HERE/../target/release/keyward}}
N=${N:-100000} ROUNDS=${ROUNDS:-3} PASS_S=${PASS_S:-12} CONNS=${CONNS:-64}
[[ -x $BIN ]] || { echo "no keyward binary at $BIN (cargo build --release first)" >&2; exit 1; }
for c in redis-server redis-cli nginx wrk python3 curl; do
  command -v "$c" >/dev/null || { echo "cache_rss.sh needs $c" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/keyward-rss.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

read -r P_REDIS P_UP P_KW P_ADMIN < <(python3 -c '
import socket; s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]; print(*[x.getsockname()[1] for x in s])')

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
              echo "nothing listening on $1" >&2; return 1; }

mkdir -p "$TMP/redis" "$TMP/up/tmp"
timeout 900 redis-server --bind 127.0.0.1 --port "$P_REDIS" --dir "$TMP/redis" --save '' \
  --appendonly no --loglevel warning >"$TMP/redis.out" 2>&1 &
PIDS+=($!)
wait_port "$P_REDIS"
python3 "$HERE/seed_keys.py" "$N" keyward: "$TMP/keys.txt" | redis-cli -p "$P_REDIS" --pipe >"$TMP/seed.out"
grep -q 'errors: 0' "$TMP/seed.out" || { cat "$TMP/seed.out" >&2; exit 1; }

cat >"$TMP/up/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $TMP/up/nginx.pid; error_log $TMP/up/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $TMP/up/tmp; proxy_temp_path $TMP/up/tmp;
  fastcgi_temp_path $TMP/up/tmp; uwsgi_temp_path $TMP/up/tmp; scgi_temp_path $TMP/up/tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UP; location / { return 200 '{"ok":true}\n'; } } }
NGINX
timeout 900 nginx -p "$TMP/up/" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$P_UP"

cat >"$TMP/keyward.yaml" <<YAML
listen: "127.0.0.1:$P_KW"
admin: {listen: "127.0.0.1:$P_ADMIN"}
upstream: {url: "http://127.0.0.1:$P_UP"}
store: {kind: redis, redis: {url: "redis://127.0.0.1:$P_REDIS/0", key_prefix: "keyward:"}}
keys:
  require_checksum: true
  cache: {ttl: 10m, negative_ttl: 5s, max_entries: $N}
plans:
  bench: {limits: [{window: 1m, max: 1000000000}, {window: 1s, max: 100000000}]}
rate_limit: {default_plan: bench, anonymous_plan: bench}
routes:
  - {path: /v1/jobs/**, methods: [GET], scopes: [jobs:read]}
YAML
KEYWARD_LOG_LEVEL=warn timeout 900 "$BIN" serve --config "$TMP/keyward.yaml" >"$TMP/keyward.out" 2>&1 &
PIDS+=($!)
wait_port "$P_KW" || { cat "$TMP/keyward.out" >&2; exit 1; }
KW_PID=$(pgrep -P "${PIDS[-1]}" || echo "${PIDS[-1]}")

rss() { awk '/^VmRSS|^VmHWM/ { printf "%s %.1f MB  ", $1, $2 / 1024 }' "/proc/$KW_PID/status"; }
metric() { curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
pass() {
  local out
  out=$(KW_KEYS_FILE=$TMP/keys.txt timeout $((PASS_S + 20)) wrk -t1 -c"$CONNS" -d"${PASS_S}s" \
        --timeout 2s -s "$HERE/keys.lua" "http://127.0.0.1:$P_KW/v1/jobs/42" | grep '^KWRSS')
  echo "$out" | sed 's/^KWRSS //'
}

echo "# keyward cache RSS  $(date -u +%FT%TZ)  N=$N  $("$BIN" --version 2>/dev/null || true)"
echo "idle after start:        $(rss)"
echo "fill pass (${PASS_S}s):      $(pass)"
misses=$(metric 'keyward_key_cache_total{result="miss"}')
echo "after fill:              $(rss) cache misses (= records loaded) ${misses:-?}"
for r in $(seq 1 "$ROUNDS"); do
  p=$(pass)
  echo "sustained pass $r:        $(rss) $p"
done
echo "cache hits $(metric 'keyward_key_cache_total{result="hit"}'), misses $(metric 'keyward_key_cache_total{result="miss"}')"
