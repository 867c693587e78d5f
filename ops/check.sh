#!/usr/bin/env bash
# Validates the Prometheus files in ops/ with promtool (Debian's `prometheus` package), installing
# it when missing and allowed (CI runs as root). Also checks the Grafana dashboard is valid JSON.
set -euo pipefail
cd "$(dirname "$0")"
bash ../.ci/need-deb promtool prometheus
promtool check rules prometheus/alerts.yml
promtool check config prometheus/prometheus.yml
promtool test rules prometheus/alerts_test.yml
python3 -m json.tool grafana/dashboards/roomlog.json >/dev/null && echo "grafana/dashboards/roomlog.json: valid JSON"
