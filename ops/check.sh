#!/usr/bin/env bash
# Validates the Prometheus files in ops/ with promtool (Debian's `prometheus` package) and the
# systemd unit with `systemd-analyze verify` (Debian's `systemd`), installing them when missing
# and allowed (CI runs as root). Also checks the Grafana dashboard is valid JSON.
set -euo pipefail
cd "$(dirname "$0")"
bash ../.ci/need-deb promtool prometheus
promtool check rules prometheus/alerts.yml
# The scrape config names the token file Prometheus reads (/etc/prometheus/roomlog.token), which
# promtool checks exists: check a copy that names a stand-in token beside the rules.
prom_dir=$(mktemp -d)
echo "stand-in" >"$prom_dir/roomlog.token"
cp prometheus/alerts.yml "$prom_dir/"
sed "s|/etc/prometheus/roomlog.token|$prom_dir/roomlog.token|" prometheus/prometheus.yml >"$prom_dir/prometheus.yml"
promtool check config "$prom_dir/prometheus.yml"
rm -rf "$prom_dir"
promtool test rules prometheus/alerts_test.yml
python3 -m json.tool grafana/dashboards/roomlog.json >/dev/null && echo "grafana/dashboards/roomlog.json: valid JSON"

# The unit: systemd-analyze verify must say nothing (it warns of a key in the wrong section, which
# systemd then ignores). It checks that ExecStart's binary exists, so it verifies a copy whose
# ExecStart names a stand-in, and roomlog need not be installed here.
bash ../.ci/need-deb systemd-analyze systemd
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
printf '#!/bin/sh\n' >"$unit_dir/roomlog" && chmod +x "$unit_dir/roomlog"
sed "s|/usr/local/bin/roomlog|$unit_dir/roomlog|" roomlog.service >"$unit_dir/roomlog.service"
if ! verified=$(systemd-analyze verify "$unit_dir/roomlog.service" 2>&1) || [ -n "$verified" ]; then
  echo "roomlog.service: systemd-analyze verify is not clean:" >&2
  echo "$verified" >&2
  exit 1
fi
# ProtectSystem=strict leaves only the listed folders writable: a cold tier or backup folder
# outside the data folder needs its ReadWritePaths= (ops/README.md says where).
if ! grep -q '^ReadWritePaths=' roomlog.service; then
  echo "roomlog.service: no ReadWritePaths= for the cold tier and backups outside the data folder" >&2
  exit 1
fi
echo "roomlog.service: systemd-analyze verify clean"

# The cluster's files: every nats-server config parses (`nats-server -t`, the pinned 2.15.1 that
# .ci/need-nats installs) and asks for an fsync before each acknowledgement; the unit verifies
# as roomlog's does. The roomlog node configs are loaded by tests/cluster.rs.
nats_server=$(bash ../.ci/need-nats)
for conf in cluster/nats-*.conf; do
  "$nats_server" -t -c "$conf"
  grep -q 'sync_interval: always' "$conf" || { echo "$conf: no sync_interval: always" >&2; exit 1; }
done
printf '#!/bin/sh\n' >"$unit_dir/nats-server" && chmod +x "$unit_dir/nats-server"
sed "s|/usr/local/bin/nats-server|$unit_dir/nats-server|" cluster/nats-server.service >"$unit_dir/nats-server.service"
if ! verified=$(systemd-analyze verify "$unit_dir/nats-server.service" 2>&1) || [ -n "$verified" ]; then
  echo "cluster/nats-server.service: systemd-analyze verify is not clean:" >&2
  echo "$verified" >&2
  exit 1
fi
echo "cluster/nats-server.service: systemd-analyze verify clean"
