#!/usr/bin/env bash
# Cluster mode against one node, same load, same run (issue 16):
#   - the chat load (100 clients, 5 senders, 2,000 msg/s) on one sled node, then spread over
#     3 roomlog nodes on a 3-node NATS JetStream cluster (sync_interval: always);
#   - acknowledgement latency for one sender, one message at a time, on each.
# All six processes (and the load generator) share this machine's cores: the cluster's figures
# are a lower bound for three machines.
#
#   bash benches/run-cluster.sh
#   SECS=20 RATE=1000 ACKS=2000 bash benches/run-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-100} SENDERS=${SENDERS:-5} RATE=${RATE:-2000} SECS=${SECS:-10} ACKS=${ACKS:-1000}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
source benches/common.sh
load=$bin/roomlog-load
nats=$(bash .ci/need-nats)
env_common=(ROOMLOG_LOG=warn ROOMLOG_AUTH__ANONYMOUS=write ROOMLOG_LIMITS__FRAMES_PER_SECOND=0 ROOMLOG_LIMITS__CONNECTIONS_PER_ADDRESS_MAX=100000)

echo "== one node, sled"
env "${env_common[@]}" target/release/roomlog serve --data "$work/single" --listen 127.0.0.1:7710 & pids+=($!)
single=$!
wait_port 7710
$load --addr 127.0.0.1:7710 --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --secs "$SECS" --room "load-$RANDOM" --label single-sled
$load --addr 127.0.0.1:7710 --acks "$ACKS" --room "acks-$RANDOM" --label single-sled
kill "$single"; wait "$single" 2>/dev/null || true

echo "== 3 nats-servers (JetStream, sync_interval: always) and 3 roomlog nodes"
routes="nats-route://127.0.0.1:16231, nats-route://127.0.0.1:16232, nats-route://127.0.0.1:16233"
for i in 1 2 3; do
  mkdir -p "$work/nats-n$i"
  cat >"$work/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:1623$((i + 3))
jetstream { store_dir: "$work/nats-n$i", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:1623$i, routes: [$routes] }
CONF
  "$nats" -c "$work/n$i.conf" >"$work/nats-n$i.log" 2>&1 & pids+=($!)
done
cat >"$work/node.toml" <<CONF
[log]
backend = "jetstream"
[jetstream]
servers = ["nats://127.0.0.1:16234", "nats://127.0.0.1:16235", "nats://127.0.0.1:16236"]
replicas = 3
CONF
addrs=()
for i in 1 2 3; do
  env "${env_common[@]}" ROOMLOG_CHAT__NODE_ID="node$i" target/release/roomlog serve --config "$work/node.toml" \
    --data "$work/node$i" --listen "127.0.0.1:772$i" & pids+=($!)
  addrs+=("127.0.0.1:772$i")
done
for i in 1 2 3; do wait_port "772$i"; done
all=$(IFS=,; echo "${addrs[*]}")
$load --addr "$all" --clients "$CLIENTS" --senders "$SENDERS" --rate "$RATE" --secs "$SECS" --room "load-$RANDOM" --label cluster-3-nodes
$load --addr "${addrs[0]}" --acks "$ACKS" --room "acks-$RANDOM" --label cluster-3-nodes
