#!/bin/bash
# Instructions per request, counted by valgrind's callgrind: the user-space
# work a server does for one request, the same from run to run whatever
# else the machine is doing (rates on a shared 2-core VM vary by 20-50%).
# It does not count the kernel's share (syscalls, copies): make bench
# measures that. `make bench-instr`; settings: INSTR_REQUESTS [20000],
# INSTR_SERVERS [c sockrun luv redis], INSTR_ONLY [W1 W2 W3 W4], SOCKRUN and
# SOCKRUN_SCRIPTS [bench/sockrun]; INSTR_BASE (an earlier sockrun build,
# measured as server "base") and INSTR_BASE_SCRIPTS [bench/sockrun] (its
# scripts); INSTR_OUT [bench/instructions.md].
#
# Each server runs under callgrind on 127.0.0.1, gets a warm-up load, has
# its counters zeroed, serves a fixed load, has them dumped, and is stopped
# by its PID. Prints a markdown table and writes it to INSTR_OUT.
set -u
cd "$(dirname "$0")/.."
BIN=${BENCH_BIN:-build/bench}
SOCKRUN=${SOCKRUN:-build/sockrun}
SCRIPTS=${SOCKRUN_SCRIPTS:-bench/sockrun}
OUT=${INSTR_OUT:-bench/instructions.md}
N=${INSTR_REQUESTS:-20000}
BASE=${INSTR_BASE:-}
BASE_SCRIPTS=${INSTR_BASE_SCRIPTS:-bench/sockrun}
SERVERS=${INSTR_SERVERS:-c sockrun${BASE:+ base} luv redis}
ONLY=${INSTR_ONLY:-W1 W2 W3 W4}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

port() { echo $((20000 + RANDOM % 20000)); }

# The command line of server $1 for kind $2 (http, echo, resp) on port $3.
server_cmd() {
  case $1 in
    c) echo "$BIN/cserver $2 $3" ;;
    sockrun) echo "$SOCKRUN $SCRIPTS/$2.lua $3" ;;
    base) [ -n "$BASE" ] && echo "$BASE $BASE_SCRIPTS/$2.lua $3" ;;
    luv) echo "lua5.4 bench/luv/$2.lua $3" ;;
    redis) [ "$2" = resp ] && echo "redis-server --port $3 --bind 127.0.0.1 --save '' --appendonly no" ;;
  esac
}

# Run load $1 ("warm" or "measure") of workload $2 against port $3; prints
# the number of requests served.
load() {
  local n=$N
  [ "$1" = warm ] && n=$((N / 10))
  case $2 in
    W1)
      printf 'local n, max = 0, %d\nfunction response() n = n + 1; if n >= max then wrk.thread:stop() end end\n' \
        "$n" > "$TMP/stop.lua"
      timeout 120 wrk -t1 -c64 -d60s -s "$TMP/stop.lua" "http://127.0.0.1:$3/" \
        | awk '/requests in/ {print $1}' ;;
    W2)
      printf 'local n, max = 0, %d\nfunction response() n = n + 1; if n >= max then wrk.thread:stop() end end\n' \
        "$n" > "$TMP/stop.lua"
      timeout 120 wrk -t1 -c64 -d60s -H "Connection: close" -s "$TMP/stop.lua" \
        "http://127.0.0.1:$3/" | awk '/requests in/ {print $1}' ;;
    W3)
      timeout 120 "$BIN/echoload" -p "$3" -c 64 -s 64 -n "$n" -d 60 -w 0 \
        | sed -n 's/.*roundtrips=\([0-9]*\).*/\1/p' ;;
    W4)
      timeout 120 redis-benchmark -p "$3" -t ping,set,get -n "$n" -c 50 -P 16 -q \
        > /dev/null 2>&1 && echo $((n * 4)) ;;
  esac
}

kind_of() { case $1 in W1|W2) echo http ;; W3) echo echo ;; W4) echo resp ;; esac; }

# Instructions per request of server $1 on workload $2, or "-".
measure() {
  local kind p cmd vpid out reqs total i
  kind=$(kind_of "$2")
  cmd=$(server_cmd "$1" "$kind" "$(port)") || true
  [ -n "$cmd" ] || { echo "-"; return; }
  p=${cmd##* }
  [ "$1" = redis ] && p=$(echo "$cmd" | awk '{print $3}')
  out="$TMP/cg.$1.$2"
  eval "exec valgrind --tool=callgrind --callgrind-out-file=$out.%p $cmd" \
    > "$TMP/log.$1.$2" 2>&1 &
  vpid=$!
  for i in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
    sleep 0.2
  done
  load warm "$2" "$p" > /dev/null
  callgrind_control -z "$vpid" > /dev/null 2>&1
  reqs=$(load measure "$2" "$p")
  callgrind_control -d "$vpid" > /dev/null 2>&1
  sleep 0.5
  kill "$vpid" 2>/dev/null
  wait "$vpid" 2>/dev/null
  total=$(awk '/^(summary|totals):/ {print $2; exit}' "$out.$vpid.1" 2>/dev/null)
  if [ -z "$total" ] || [ -z "$reqs" ] || [ "$reqs" -eq 0 ]; then
    echo "-"
  else
    echo $((total / reqs))
  fi
}

{
echo "# Instructions per request (callgrind)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- sockrun: $("$SOCKRUN" -v 2>&1 | head -1), commit $(git rev-parse --short HEAD 2>/dev/null)"
echo "- $(valgrind --version), $N requests per measurement after $((N / 10)) of warm-up"
echo "- W1: wrk -t1 -c64, HTTP keep-alive; W2: the same with Connection: close (a"
echo "  connection per request); W3: echoload -c 64 -s 64 (round trips);"
echo "  W4: redis-benchmark -t ping,set,get -c 50 -P 16 (commands)"
echo
echo "| workload | server | instructions per request | x C |"
echo "|---|---|---:|---:|"
for w in $ONLY; do
  base=
  for s in $SERVERS; do
    v=$(measure "$s" "$w")
    [ "$v" = - ] && v=$(measure "$s" "$w") # once more: a port taken, say
    [ "$s" = c ] && base=$v
    ratio=-
    if [ "$v" != - ] && [ -n "$base" ] && [ "$base" != - ]; then
      ratio=$(awk -v a="$v" -v b="$base" 'BEGIN {printf "%.2fx", a / b}')
    fi
    [ "$v" = - ] || echo "| $w | $s | $v | $ratio |"
  done
done
} | tee "$OUT"
