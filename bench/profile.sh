#!/usr/bin/env bash
# Instructions per request on keyward's request path (issue 7), counted by
# callgrind: repeatable for the same binary and inputs whatever else the
# machine is doing, unlike wall-clock throughput.
#
#   cargo build --release && bench/profile.sh [KEYWARD_BIN]
#
# Starts, on free 127.0.0.1 ports in a temp dir: redis-server seeded with N
# keys (default 1,000), the nginx upstream of lib.sh, and keyward under
# `valgrind --tool=callgrind --instr-atstart=no` (Redis store, cache warm).
# Warms up with wrk (instrumentation off), then switches instrumentation on
# for exactly REQS requests (wrk `-s keys.lua`, one connection, bounded by
# count), off again, and prints the total and per-request instructions and
# the top functions (inclusive). The callgrind output is kept as
# $OUT (default /tmp/keyward-callgrind.out) for callgrind_annotate.
# Needs valgrind (callgrind_control, callgrind_annotate), redis-server,
# redis-cli, nginx, wrk, python3.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
BIN=${1:-${KEYWARD_BIN:-$HERE/../target/release/keyward}}
N=${N:-1000} REQS=${REQS:-20000} OUT=${OUT:-/tmp/keyward-callgrind.out}
need_bin "$BIN"
need valgrind callgrind_control callgrind_annotate redis-server redis-cli nginx wrk python3

bench_init profile 900
start_redis --appendonly no
seed "$N"
start_upstream
write_config "timeout: 2s" <<YAML
keys: {require_checksum: true, cache: {ttl: 10m, max_entries: 100000}}
$BENCH_POLICY
YAML
KEYWARD_LOG_LEVEL=warn timeout 900 valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$OUT" "$BIN" serve --config "$TMP/keyward.yaml" >"$TMP/keyward.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$P_KW") 2>/dev/null && break; sleep 0.2; done
wait_port "$P_KW" || { cat "$TMP/keyward.out" >&2; exit 1; }
# The newest match: valgrind itself, not the `timeout` around it.
VG_PID=$(pgrep -n -f "callgrind-out-file=$OUT")

# Warm: every key once (cache fill), then a little steady state.
KW_KEYS_FILE=$TMP/keys.txt timeout 120 wrk -t1 -c4 -d15s --timeout 5s -s "$HERE/keys.lua" \
  "http://127.0.0.1:$P_KW/v1/jobs/42" >/dev/null
callgrind_control -z "$VG_PID" >/dev/null
callgrind_control -i on "$VG_PID" >/dev/null
# Exactly REQS requests: wrk can't stop at a count, so a Lua counter
# closes each connection's stream after its share (one thread, one conn).
cat >"$TMP/count.lua" <<LUA
dofile("$HERE/keys.lua")
local sent, limit = 0, $REQS
local base_request = request
request = function()
  sent = sent + 1
  if sent > limit then wrk.thread:stop() end
  return base_request()
end
LUA
KW_KEYS_FILE=$TMP/keys.txt timeout 300 wrk -t1 -c1 -d240s --timeout 5s -s "$TMP/count.lua" \
  "http://127.0.0.1:$P_KW/v1/jobs/42" >"$TMP/wrk.out" || true
callgrind_control -i off "$VG_PID" >/dev/null
callgrind_control -d "$VG_PID" >/dev/null
sleep 1
sent=$(awk '/requests in/ { print $1 }' "$TMP/wrk.out")
latest=$(ls -t "$OUT"* | head -1)
total=$(callgrind_annotate "$latest" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "# keyward callgrind  $(date -u +%FT%TZ)  $("$BIN" --version 2>/dev/null || true)"
echo "requests: ${sent:-?}  instructions: ${total:-?}  per request: $(( ${total:-0} / ${sent:-1} ))"
callgrind_annotate --inclusive=yes "$latest" 2>/dev/null | sed -n '/^Ir/,$p' | head -45
