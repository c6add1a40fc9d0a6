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
# shellcheck source=lib.sh
source "$HERE/lib.sh"
BIN=${1:-${KEYWARD_BIN:-$HERE/../target/release/keyward}}
N=${N:-100000} ROUNDS=${ROUNDS:-3} PASS_S=${PASS_S:-12} CONNS=${CONNS:-64}
need_bin "$BIN"
need redis-server redis-cli nginx wrk python3 curl

bench_init rss 900
start_redis --appendonly no
seed "$N"
start_upstream

write_config <<YAML
keys:
  require_checksum: true
  cache: {ttl: 10m, negative_ttl: 5s, max_entries: $N}
$BENCH_POLICY
YAML
start_keyward "$BIN"

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
