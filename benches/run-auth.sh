#!/usr/bin/env bash
# Authentication on vs off under the chat load of run-load.sh: a server that needs tokens
# (`auth.anonymous = "none"`: every client presents one, verified when it connects, its room
# patterns checked on every frame) against one that trusts the name a client gives
# (`auth.anonymous = "write"`). Same data folder, same load, alternated ROUNDS times.
#
#   bash benches/run-auth.sh               # 100 clients, 5 senders, 2000 msg/s, 10 s, 3 rounds
#   ROUNDS=5 SECS=20 bash benches/run-auth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-100} SENDERS=${SENDERS:-5} RATE=${RATE:-2000} SECS=${SECS:-10} ROUNDS=${ROUNDS:-3}
source benches/common.sh
load=$bin/roomlog-load
mkdir -p "$work/data"
# Three room patterns before the one that matches, so the per-frame check walks a list.
token=$($bin/roomlog token issue --data "$work/data" --user load --rooms 'team-*,ops-*,dev-*,load-*' --ttl 1h)
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    anonymous=write args=()
    if [ "$mode" = on ]; then anonymous=none args=(--token "$token"); fi
    ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=$anonymous ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 \
      $bin/roomlog serve --data "$work/data" --listen 127.0.0.1:7740 & pids+=($!)
    server=$!
    wait_port 7740
    $load --addr 127.0.0.1:7740 --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --secs "$SECS" \
      --room "load-$round-$mode" --label "auth-$mode-round-$round" "${args[@]}"
    kill "$server"; wait "$server" 2>/dev/null || true
  done
done
