#!/usr/bin/env bash
# The online purge (janitor rule `log_purge`, issue 15): chat latency while the janitor removes
# 500,000 superseded message events from the log of a serving server (and then rewrites the
# log's files online, janitor.rewrite_log), against the same load without it, how long the
# purge takes, and the log's bytes on disk before and after.
#
#   bash benches/run-purge.sh          # MESSAGES=1000000 (retention keeps half) SECS=20
#
# The retention cut is made first by a server with the purge off, so that the measured run is
# the purge alone: the first janitor run after the restart purges what the cut superseded.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000} SECS=${SECS:-20}
source benches/common.sh

$bin/roomlog-load --fill "$MESSAGES" --data "$work/data" --room bulk --text zipf
{
  printf '[janitor]\nevery = "1000d"\n'
  for i in $(seq 0 19); do printf '[retention.rooms.bulk-%d]\nmax_messages = %d\n' "$i" $((MESSAGES / 40)); done
} > "$work/roomlog.toml"
serve() {
  ROOMLOG_LOG=${ROOMLOG_LOG:-warn} ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 ROOMLOG_JANITOR__PURGE_LOG="$1" \
    $bin/roomlog serve --config "$work/roomlog.toml" --data "$work/data" --listen 127.0.0.1:7720 & server=$!
  pids+=($server)
  wait_port 7720
}
serve false
$bin/roomlog janitor run --addr 127.0.0.1:7720 --data "$work/data" >/dev/null
kill "$server"; wait "$server" 2>/dev/null || true
echo "log on disk after the cut: $(du -sB1 "$work/data/log" | cut -f1) bytes allocated"

serve true
$bin/roomlog-load --addr 127.0.0.1:7720 --clients 100 --senders 5 --rate 2000 --secs "$SECS" --room chat-a --label "chat, no purge"
$bin/roomlog-load --addr 127.0.0.1:7720 --clients 100 --senders 5 --rate 2000 --secs "$SECS" --room chat-b --label "chat, purge running" &
load=$!
sleep 1
started=$(date +%s.%N)
$bin/roomlog janitor run --addr 127.0.0.1:7720 --data "$work/data"
echo "janitor run with the purge: $(echo "$(date +%s.%N) - $started" | bc) s"
echo "log on disk after the purge and its rewrite: $(du -sB1 "$work/data/log" | cut -f1) bytes allocated"
wait "$load"
kill "$server"; wait "$server" 2>/dev/null || true
echo "log on disk after the load and the server's stop: $(du -sB1 "$work/data/log" | cut -f1) bytes allocated"
