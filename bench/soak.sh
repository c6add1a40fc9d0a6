#!/usr/bin/env bash
# Soak (issue 11): DURATION seconds (default 600) of mixed traffic through
# keyward — valid keys, unknown keys, a revoked key, an over-limit key and
# anonymous requests — with Redis restarted at 1/3 and 2/3 of the run.
# Every 10 s it records keyward's RSS and open file descriptors; flat is the
# goal. All on 127.0.0.1, in a temp dir; everything stops on exit.
#
#   cargo build --release && bench/soak.sh [KEYWARD_BIN]
#
# Needs redis-server, redis-cli, nginx, wrk, python3. Knobs: DURATION (600),
# CONNS (8), N (2000 valid keys), DELAY_MS (2: each connection pauses this
# long after each response, so the soak runs at a steady few thousand
# requests a second instead of saturating the machine).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-${KEYWARD_BIN:-$HERE/../target/release/keyward}}
DURATION=${DURATION:-600} CONNS=${CONNS:-8} N=${N:-2000} DELAY_MS=${DELAY_MS:-2}
[[ -x $BIN ]] || { echo "no keyward binary at $BIN (cargo build --release first)" >&2; exit 1; }
for c in redis-server redis-cli nginx wrk python3; do
  command -v "$c" >/dev/null || { echo "soak.sh needs $c" >&2; exit 1; }
done

TMP=$(mktemp -d /tmp/keyward-soak.XXXXXX)
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

REDIS_PID=
start_redis() {
  # Append-only file on, so keys survive the restarts like a real Redis.
  timeout $((DURATION + 300)) redis-server --bind 127.0.0.1 --port "$P_REDIS" --dir "$TMP/redis" \
    --save '' --appendonly yes --appendfsync no --loglevel warning >>"$TMP/redis.out" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  wait_port "$P_REDIS"
}
mkdir -p "$TMP/redis" "$TMP/up/tmp"
start_redis
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
timeout $((DURATION + 300)) nginx -p "$TMP/up/" -c "$TMP/up/nginx.conf" -e "$TMP/up/error.log" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$P_UP"

cat >"$TMP/keyward.yaml" <<YAML
listen: "127.0.0.1:$P_KW"
admin: {listen: "127.0.0.1:$P_ADMIN"}
upstream: {url: "http://127.0.0.1:$P_UP"}
store: {kind: redis, redis: {url: "redis://127.0.0.1:$P_REDIS/0", key_prefix: "keyward:"}}
keys: {require_checksum: true, cache: {ttl: 5s, negative_ttl: 2s}}
plans:
  bench: {limits: [{window: 1m, max: 1000000000}]}
  tiny: {limits: [{window: 1m, max: 3}]}
  anonymous: {limits: [{window: 1s, max: 1000000}]}
rate_limit: {default_plan: bench, anonymous_plan: anonymous}
routes:
  - {path: /public/**, auth: none}
  - {path: /v1/jobs/**, methods: [GET], scopes: [jobs:read]}
YAML
# A revoked key and an over-limit (tiny plan) key, through the CLI.
cli() { "$BIN" keys --config "$TMP/keyward.yaml" "$@"; }
revoked=$(cli create --owner soak --name revoked --scopes jobs:read --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["id"], v["key"])')
cli revoke "${revoked%% *}" >/dev/null
tiny=$(cli create --owner soak --name tiny --scopes jobs:read --plan tiny --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

# The request mix: 6 valid, 1 unknown, 1 revoked, 1 over-limit, 1 anonymous.
python3 - "$TMP/keys.txt" "${revoked#* }" "$tiny" >"$TMP/reqs.tsv" <<'PY'
import random, sys, zlib
keys = [k for k in open(sys.argv[1]).read().split() if k]
revoked, tiny = sys.argv[2], sys.argv[3]
A = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
def b62(n):
    s = ""
    while n: n, r = divmod(n, 62); s = A[r] + s
    return s.rjust(6, "0")
rng = random.Random(3)
for i in range(3000):
    body = "kw_live_" + "".join(rng.choice(A) for _ in range(32))
    unknown = body + b62(zlib.crc32(body.encode()))
    for path, auth in [("/v1/jobs/1", "Bearer " + rng.choice(keys))] * 6 + [
        ("/v1/jobs/2", "Bearer " + unknown), ("/v1/jobs/3", "Bearer " + revoked),
        ("/v1/jobs/4", "Bearer " + tiny), ("/public/x", "")]:
        print(f"{path}\t{auth}")
PY

KEYWARD_LOG_LEVEL=warn timeout $((DURATION + 300)) "$BIN" serve --config "$TMP/keyward.yaml" >"$TMP/keyward.out" 2>&1 &
PIDS+=($!)
wait_port "$P_KW" || { cat "$TMP/keyward.out" >&2; exit 1; }
KW_PID=$(pgrep -P "${PIDS[-1]}" || echo "${PIDS[-1]}")

SOAK_REQS=$TMP/reqs.tsv SOAK_DELAY_MS=$DELAY_MS timeout $((DURATION + 30)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 5s \
  -s "$HERE/soak.lua" "http://127.0.0.1:$P_KW/" >"$TMP/wrk.out" 2>&1 &
WRK=$!

sample() {
  local rss fds
  rss=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$KW_PID/status")
  fds=$(ls "/proc/$KW_PID/fd" | wc -l)
  printf '%6ds  rss %6s MB  fds %4s  %s\n' "$1" "$rss" "$fds" "$2"
}
echo "# keyward soak  $(date -u +%FT%TZ)  ${DURATION}s, $CONNS connections, $N keys; Redis restarted at 1/3 and 2/3"
start=$SECONDS
sample 0 start
restarts=0
while kill -0 "$WRK" 2>/dev/null; do
  sleep 10
  t=$((SECONDS - start))
  note=
  if (( restarts == 0 && t >= DURATION / 3 )) || (( restarts == 1 && t >= 2 * DURATION / 3 )); then
    # SIGKILL the server itself (its parent is `timeout`), wait for the
    # port to be free, start it again on the same port and data dir.
    pkill -9 -P "$REDIS_PID" redis-server || true
    wait "$REDIS_PID" 2>/dev/null || true
    sleep 2; start_redis; restarts=$((restarts + 1)); note="redis killed and restarted"
  fi
  kill -0 "$KW_PID" 2>/dev/null || { echo "keyward died" >&2; tail -20 "$TMP/keyward.out" >&2; exit 1; }
  sample "$t" "$note"
done
grep SOAKDONE "$TMP/wrk.out" || cat "$TMP/wrk.out"
curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics" | grep -E '^keyward_requests_total' | sort
