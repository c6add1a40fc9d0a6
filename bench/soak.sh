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
# shellcheck source=lib.sh
source "$HERE/lib.sh"
BIN=${1:-${KEYWARD_BIN:-$HERE/../target/release/keyward}}
DURATION=${DURATION:-600} CONNS=${CONNS:-8} N=${N:-2000} DELAY_MS=${DELAY_MS:-2}
need_bin "$BIN"
need redis-server redis-cli nginx wrk python3

bench_init soak $((DURATION + 300))
# Append-only file on, so keys survive the restarts like a real Redis.
REDIS_ARGS=(--appendonly yes --appendfsync no)
start_redis "${REDIS_ARGS[@]}"
seed "$N"
start_upstream

write_config <<YAML
keys: {require_checksum: true, cache: {ttl: 5s, negative_ttl: 2s}}
plans:
  bench: {limits: [{window: 1m, max: 1000000000}]}
  tiny: {limits: [{window: 1m, max: 3}]}
  anonymous: {limits: [{window: 1s, max: 1000000}]}
rate_limit: {default_plan: bench, anonymous_plan: anonymous}
# All the traffic comes from 127.0.0.1, a fifth of it with bad keys: room
# for it, or the failed-attempt throttle would lock the soak out.
auth: {failed_attempts: {max: 100000000, window: 1m}}
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

start_keyward "$BIN"

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
    sleep 2; start_redis "${REDIS_ARGS[@]}"; restarts=$((restarts + 1)); note="redis killed and restarted"
  fi
  kill -0 "$KW_PID" 2>/dev/null || { echo "keyward died" >&2; tail -20 "$TMP/keyward.out" >&2; exit 1; }
  sample "$t" "$note"
done
grep SOAKDONE "$TMP/wrk.out" || cat "$TMP/wrk.out"
curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics" | grep -E '^keyward_(requests|key_cache)_total' | sort
echo "# Redis commands since its last restart:"
redis-cli -p "$P_REDIS" INFO commandstats | grep -E '^cmdstat_(hgetall|evalsha|eval):' | cut -d, -f1
