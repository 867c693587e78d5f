#!/usr/bin/env bash
# The chat load benchmark: roomlog and the Python architecture it replaces, same load, same run.
#
#   bash benches/run-load.sh            # 100 clients, 5 senders, 2000 msg/s, 10 s each
#   SECS=30 RATE=1000 bash benches/run-load.sh
#   BASELINE=0 BIN=folder bash benches/run-load.sh   # roomlog alone, a given build's binaries
#
# Everything runs on this machine over loopback; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-100} SENDERS=${SENDERS:-5} RATE=${RATE:-2000} SECS=${SECS:-10} IDLE=${IDLE:-10000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
source benches/common.sh
load=$bin/roomlog-load

echo "== roomlog"
ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 ROOMLOG_LIMITS__CONNECTIONS_PER_ADDRESS_MAX=100000 $bin/roomlog serve --data "$work/data" --listen 127.0.0.1:7700 & pids+=($!)
server=$!
wait_port 7700
$load --addr 127.0.0.1:7700 --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --secs "$SECS" --room "load-$RANDOM" --label roomlog
$load --addr 127.0.0.1:7700 --idle "$IDLE" --server-pid "$server" --label roomlog-idle
kill "$server"; wait "$server" 2>/dev/null || true
if [ "${BASELINE:-1}" = 0 ]; then exit 0; fi

echo "== Python baseline (FastAPI + uvicorn, last 100 in a list)"
if [ ! -x benches/baseline/.venv/bin/uvicorn ]; then
  python3 -m venv benches/baseline/.venv
  benches/baseline/.venv/bin/pip install --quiet fastapi uvicorn websockets
fi
uv=benches/baseline/.venv/bin/uvicorn
$uv --app-dir benches/baseline chat_fastapi:app --host 127.0.0.1 --port 7800 --log-level warning & pids+=($!)
py=$!
wait_port 7800
$load --addr 127.0.0.1:7800 --protocol baseline --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --secs "$SECS" --drain-secs 20 --label python-list
kill "$py"; wait "$py" 2>/dev/null || true

echo "== Python baseline + SQLite commit per message"
ROOMLOG_BASELINE_SQLITE="$work/baseline.sqlite" $uv --app-dir benches/baseline chat_fastapi:app --host 127.0.0.1 --port 7801 --log-level warning & pids+=($!)
py=$!
wait_port 7801
$load --addr 127.0.0.1:7801 --protocol baseline --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --secs "$SECS" --drain-secs 20 --label python-sqlite
