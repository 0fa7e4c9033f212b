#!/usr/bin/env bash
# Make sure Debian's prometheus (the server and promtool) is installed: tests/
# test_prometheus_grafana.py runs compose/prometheus/prometheus.yml on loopback against a live
# worker and sink, and tests/test_compose.py checks that file with promtool.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/debian_package.sh" prometheus \
    /usr/bin/prometheus /usr/bin/promtool
