#!/usr/bin/env bash
# p99 latency added by keyward at a fixed offered rate (issue 7), without the
# rest of the side-by-side harness: the same pacing as its latency run
# (200 connections, exponential think time, ~5,000 req/s), the same plans and
# cache settings, but runs long enough (RUN_S, default 12 s) that each one
# includes a last-used/usage flush (every 10 s), alternating direct and
# keyward so both see the same machine. Each line also gives the share of
# the server cpu that keyward, redis and the upstream used (user+sys), and
# what the hypervisor took from it (steal).
# RATE=100000 CONNS=64 makes it a closed-loop throughput run instead.
#
#   cargo build --release && bench/latency.sh [KEYWARD_BIN]
#
# Servers (redis, the nginx upstream, keyward) on SERVER_CPU, wrk on WRK_CPU,
# as in the harness. Prints one line per run and the medians.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
BIN=${1:-${KEYWARD_BIN:-$HERE/../target/release/keyward}}
N=${N:-10000} RUNS=${RUNS:-4} RUN_S=${RUN_S:-12} RATE=${RATE:-5000} CONNS=${CONNS:-200}
WRK_CPU=${WRK_CPU:-0} SERVER_CPU=${SERVER_CPU:-1}
need_bin "$BIN"
need redis-server redis-cli nginx wrk python3 taskset

bench_init latency $(( 120 + 2 * RUNS * (RUN_S + 5) ))
taskset -pc "$SERVER_CPU" $$ >/dev/null   # servers inherit it; wrk is re-pinned
start_redis --appendonly no
seed "$N"
start_upstream
write_config "timeout: 500ms" <<YAML
keys: {require_checksum: true, cache: {ttl: 30s, negative_ttl: 5s, max_entries: 100000}}
$BENCH_POLICY
YAML
start_keyward "$BIN"

DELAY=$(( (CONNS * 1000 + RATE / 2) / RATE ))
REDIS_SRV=$(pgrep -P "$REDIS_PID" redis-server || echo "$REDIS_PID")
UP_WORKER=$(for w in $(pgrep -f "nginx: worker process"); do
  grep -qa "$TMP/up" "/proc/$(awk '{ print $4 }' "/proc/$w/stat")/cmdline" 2>/dev/null && echo "$w"
done | head -1)
ticks() { # ticks PID... -> "utime stime" per PID, in clock ticks
  for p in "$@"; do awk '{ printf "%s %s ", $14, $15 }' "/proc/$p/stat"; done; echo
}
load() { # load PORT SECONDS DELAY_MS -> "p50_us p99_us requests non2xx"
  KW_KEYS_FILE=$TMP/keys.txt KW_DELAY_MS=$3 taskset -c "$WRK_CPU" timeout $(( $2 + 20 )) \
    wrk -t1 -c"$CONNS" -d"$2s" --timeout 2s -s "$HERE/keys.lua" "http://127.0.0.1:$1/v1/jobs/42" \
    | awk '/^KWRSS/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                      print v["p50_us"], v["p99_us"], v["requests"], v["non2xx"] }'
}
# Warm: every key into the cache, then keyward's pools.
load "$P_KW" 4 0 >/dev/null
printf '%-4s %-8s %10s %10s %10s %8s  %s\n' run target req/s p50_ms p99_ms non2xx "cpu user+sys"
for r in $(seq 1 "$RUNS"); do
  for t in direct keyward; do
    port=$P_UP; [[ $t == keyward ]] && port=$P_KW
    steal0=$(awk -v c="cpu$SERVER_CPU" '$1 == c { print $9 }' /proc/stat)
    before=$(ticks "$KW_PID" "$REDIS_SRV" ${UP_WORKER:+"$UP_WORKER"})
    read -r p50 p99 n bad < <(load "$port" "$RUN_S" "$DELAY")
    after=$(ticks "$KW_PID" "$REDIS_SRV" ${UP_WORKER:+"$UP_WORKER"})
    steal=$(( ($(awk -v c="cpu$SERVER_CPU" '$1 == c { print $9 }' /proc/stat) - steal0) * 100 / $(getconf CLK_TCK) / RUN_S ))
    # Share of the server cpu each process used during the run, user+sys.
    cpu=$(echo "$before $after" | awk -v s="$RUN_S" -v hz="$(getconf CLK_TCK)" '{
      n = NF / 2; split("keyward redis upstream", name, " ")
      for (i = 1; i <= n; i += 2) printf "%s %d+%d%% ", name[(i + 1) / 2],
        ($(n + i) - $i) * 100 / hz / s, ($(n + i + 1) - $(i + 1)) * 100 / hz / s }')
    printf '%-4s %-8s %10.0f %10.3f %10.3f %8s  %s\n' "$r" "$t" "$(( n / RUN_S ))" \
      "$(awk "BEGIN{print $p50/1000}")" "$(awk "BEGIN{print $p99/1000}")" "$bad" "${cpu}steal ${steal}%"
    echo "$t $p50 $p99" >>"$TMP/runs"
  done
done
python3 - "$TMP/runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {t: [statistics.median(int(r[i]) for r in rows if r[0] == t) / 1000 for i in (1, 2)]
       for t in ("direct", "keyward")}
print(f"median p50 added {med['keyward'][0] - med['direct'][0]:.3f} ms, "
      f"p99 added {med['keyward'][1] - med['direct'][1]:.3f} ms "
      f"(direct p99 {med['direct'][1]:.3f}, keyward p99 {med['keyward'][1]:.3f})")
PY
# KEYWARD_LOG_LEVEL=warn,keyward::app=debug shows each flush's size and time.
[[ ${KEYWARD_LOG_LEVEL:-warn} == warn ]] || grep -h 'flush' "$TMP/keyward.out" | tail -20 || true
