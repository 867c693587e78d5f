#!/usr/bin/env bash
# Restart to ready (issue 19): a data folder of MESSAGES messages of the zipf corpus in 20 rooms
# (default 10,000,000), then the server started on it three times, each stopped with SIGTERM:
#   1. first start: the projections and the search index are built from the log;
#   2. restart: seconds from the process start to /readyz answering 200, and to every
#      projection caught up with the log's head;
#   3. the same after dropping the page cache (as root; skipped where that is not allowed).
#
#   bash benches/run-restart.sh                 # MESSAGES=10000000; takes its time, outside CI
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-10000000}
source benches/common.sh
port=$((20000 + RANDOM % 20000))

$bin/roomlog-load --fill "$MESSAGES" --data "$work/data" --room corpus --text zipf
echo "data folder: $(du -sh "$work/data" | cut -f1)"

now() { date +%s.%N; }
# Starts the server, prints the seconds to ready and to caught up, then stops it by its pid.
start() {
  local what=$1 started ready="" caught="" body
  started=$(now)
  ROOMLOG_LOG=warn $bin/roomlog serve --data "$work/data" --listen "127.0.0.1:$port" &
  local pid=$!
  pids+=("$pid")
  # Bounded: at most an hour (a first start at 10M builds the search index).
  for _ in $(seq 1 360000); do
    if body=$(curl -sf "http://127.0.0.1:$port/readyz" 2>/dev/null); then
      [ -z "$ready" ] && ready=$(echo "$(now) - $started" | bc)
      if python3 -c 'import json,sys; p=json.loads(sys.argv[1])["projections"]; sys.exit(0 if p and all(v["lag_events"] == 0 for v in p.values()) else 1)' "$body"; then
        caught=$(echo "$(now) - $started" | bc)
        break
      fi
    fi
    sleep 0.01
  done
  kill -TERM "$pid"
  wait "$pid" || true
  printf '%s: ready after %.2f s, every projection caught up after %.2f s\n' "$what" "${ready:-nan}" "${caught:-nan}"
}

start "first start (projections built from the log)"
start "restart"
if sync && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
  start "restart after dropping the page cache"
else
  echo "restart after dropping the page cache: skipped (not allowed here)"
fi
