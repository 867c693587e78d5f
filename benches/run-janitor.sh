#!/usr/bin/env bash
# A janitor run over 1,000,000 messages (20 rooms, retention keeping half), 100,000 sessions
# (half paid) and 100,000 file keys plus 100,000 orphan files: its duration, and chat delivery
# latency while it runs against the same load without it. Then space amplification: bytes on
# disk of the log over the live message bytes, after the fill and after the purge + compaction.
#
#   bash benches/run-janitor.sh          # MESSAGES=1000000 SESSIONS=100000 FILES=100000 SECS=20
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000} SESSIONS=${SESSIONS:-100000} FILES=${FILES:-100000} SECS=${SECS:-20}
source benches/common.sh

$bin/roomlog-load --fill "$MESSAGES" --data "$work/data" --room bulk --text zipf --sessions "$SESSIONS" --files "$FILES"
# Retention keeps half of each filled room (the chat rooms of the load keep everything); the
# issue's example lifecycle policy makes the janitor walk every key.
cat > "$work/lifecycle.json" <<'JSON'
{"Rules": [
  {"ID": "DeleteTempFiles", "Status": "Enabled", "Filter": {"Prefix": "temp_"}, "Expiration": {"Days": 7}},
  {"ID": "ExpireTts", "Status": "Enabled", "Filter": {"Prefix": "tts/"}, "Expiration": {"Days": 30}}
]}
JSON
{
  printf '[files]\nlifecycle = "%s"\n[janitor]\norphan_min_age = "0s"\n' "$work/lifecycle.json"
  for i in $(seq 0 19); do printf '[retention.rooms.bulk-%d]\nmax_messages = %d\n' "$i" $((MESSAGES / 40)); done
} > "$work/roomlog.toml"
live_bytes() { curl -s 127.0.0.1:7710/api/storage | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(r["bytes"] for r in s["messages"].values()))'; }
amplification() { echo "$1: log $(du -sb "$work/data/log" | cut -f1) bytes on disk, live message text $2 bytes: $(echo "scale=2; $(du -sb "$work/data/log" | cut -f1) / $2" | bc)x"; }

serve() { ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 $bin/roomlog serve --config "$work/roomlog.toml" --data "$work/data" --listen 127.0.0.1:7710 & server=$!; pids+=($server); wait_port 7710; }
serve
live=$(live_bytes)
amplification "after the fill" "$live"
$bin/roomlog-load --addr 127.0.0.1:7710 --clients 100 --senders 5 --rate 2000 --secs "$SECS" --room chat-a --label "chat, no janitor"

$bin/roomlog-load --addr 127.0.0.1:7710 --clients 100 --senders 5 --rate 2000 --secs "$SECS" --room chat-b --label "chat, janitor running" &
load=$!
sleep 1
$bin/roomlog janitor run --addr 127.0.0.1:7710 --data "$work/data"
wait "$load"
live=$(live_bytes)
kill "$server"; wait "$server" 2>/dev/null || true
amplification "after the purge (before compaction)" "$live"
$bin/roomlog compact --data "$work/data"
amplification "after the purge and compaction" "$live"
