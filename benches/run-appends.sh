#!/usr/bin/env bash
# Durable appends: roomlog's log (`cargo bench --bench log`) against redis-server with
# `appendfsync always` (Debian's package, on loopback, its data in a scratch folder), in the
# same run: batched (redis-benchmark XADD, 50 clients, pipeline 16, 100-byte values) and one
# client alone (no pipeline), as issue 19 compares them.
#
#   bash benches/run-appends.sh          # REDIS_N=400000
set -euo pipefail
cd "$(dirname "$0")/.."
REDIS_N=${REDIS_N:-400000}
bash .ci/need-deb redis-server redis-server
bash .ci/need-deb redis-benchmark redis-tools
work=$(mktemp -d)
redis=""
cleanup() { [ -n "$redis" ] && kill "$redis" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
redis-server --port 7731 --bind 127.0.0.1 --dir "$work" --appendonly yes --appendfsync always \
  --save '' --protected-mode yes --logfile "$work/redis.log" & redis=$!
for _ in $(seq 1 200); do redis-cli -p 7731 ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), appendfsync $(redis-cli -p 7731 config get appendfsync | tail -1)"
echo "== redis: XADD, 50 clients, pipeline 16"
value=$(printf 'v%.0s' $(seq 1 100))
redis-benchmark -p 7731 -n "$REDIS_N" -c 50 -P 16 -q XADD stream '*' body "$value" | tr '\r' '\n' | tail -1
echo "== redis: XADD, one client, no pipeline"
redis-benchmark -p 7731 -n 5000 -c 1 -P 1 -q XADD stream '*' body "$value" | tr '\r' '\n' | tail -1
kill "$redis"; wait "$redis" 2>/dev/null || true; redis=""
echo "== roomlog: cargo bench --bench log"
cargo bench --bench log 2>&1 | grep -E "^(log|projection)/|time:|thrpt:"
