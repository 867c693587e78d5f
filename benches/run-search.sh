#!/usr/bin/env bash
# Search: rebuild throughput from a log of 1,000,000 messages of the generated corpus, and
# indexing while the server ingests (the chat load at a high rate; how far the index trails the
# log, and how long it takes to catch up once sending stops). Query latency against SQLite FTS5
# is `cargo bench --bench search`.
#
#   bash benches/run-search.sh          # MESSAGES=1000000 RATE=10000 SECS=10
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000} RATE=${RATE:-10000} SECS=${SECS:-10}
source benches/common.sh
lag() { curl -s "http://127.0.0.1:7720/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["projections"]["search"]["lag_events"])'; }

$bin/roomlog-load --fill "$MESSAGES" --data "$work/data" --room corpus --text zipf
$bin/roomlog rebuild history --data "$work/data" >/dev/null
$bin/roomlog rebuild search --data "$work/data"
echo "search index on disk: $(du -sh "$work/data/search" | cut -f1), log: $(du -sh "$work/data/log" | cut -f1), projections: $(du -sh "$work/data/state" | cut -f1)"

ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 $bin/roomlog serve --data "$work/data" --listen 127.0.0.1:7720 & pids+=($!)
wait_port 7720
$bin/roomlog-load --addr 127.0.0.1:7720 --clients 20 --senders 5 --rate "$RATE" --secs "$SECS" --room ingest --label "ingest at $RATE msg/s" &
load=$!
max=0
while kill -0 "$load" 2>/dev/null; do
  l=$(lag); [ "$l" -gt "$max" ] && max=$l
  sleep 0.2
done
wait "$load"
start=$(date +%s.%N)
for _ in $(seq 1 600); do [ "$(lag)" = 0 ] && break; sleep 0.05; done
echo "search index lag while ingesting: at most $max events; caught up $(echo "$(date +%s.%N) - $start" | bc) s after sending stopped"
$bin/roomlog search "kasa" --data "$work/data" --limit 3
