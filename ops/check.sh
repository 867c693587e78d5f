#!/usr/bin/env bash
# Validates the Prometheus files in ops/ with promtool (Debian's `prometheus` package), installing
# it when missing and allowed (CI runs as root). Also checks the Grafana dashboard is valid JSON.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing and cannot be installed here (not root or no apt-get)" >&2
    exit 1
  fi
fi
promtool check rules prometheus/alerts.yml
promtool check config prometheus/prometheus.yml
promtool test rules prometheus/alerts_test.yml
python3 -m json.tool grafana/dashboards/roomlog.json >/dev/null && echo "grafana/dashboards/roomlog.json: valid JSON"
