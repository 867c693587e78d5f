#!/usr/bin/env bash
# Backup and restore rates over a log of 1,000,000 messages, and chat delivery latency while a
# backup runs, against the same load without one.
#
#   bash benches/run-backup.sh          # MESSAGES=1000000 SECS=10
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000} SECS=${SECS:-10}
source benches/common.sh

$bin/roomlog-load --fill "$MESSAGES" --data "$work/data" --room bulk --body-bytes 100
echo "log on disk: $(du -sh "$work/data/log" | cut -f1)"

ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 $bin/roomlog serve --data "$work/data" --listen 127.0.0.1:7710 & pids+=($!)
wait_port 7710
$bin/roomlog-load --addr 127.0.0.1:7710 --clients 100 --senders 5 --rate 2000 --secs "$SECS" --room chat-a --label "chat, no backup"

# The same load with a full backup of the whole log taken while it runs.
$bin/roomlog-load --addr 127.0.0.1:7710 --clients 100 --senders 5 --rate 2000 --secs "$SECS" --room chat-b --label "chat, backup running" &
load=$!
sleep 1
$bin/roomlog backup --data "$work/data" --out "$work/full.tar"
wait "$load"

$bin/roomlog backup verify "$work/full.tar" --data "$work/data"
start=$(date +%s.%N)
$bin/roomlog restore "$work/full.tar" --data "$work/restored" 2>&1 | tail -2
echo "restore including rebuild: $(echo "$(date +%s.%N) - $start" | bc) s"
