#!/usr/bin/env bash
# Make sure Debian's prometheus (server and promtool) is installed: tests/
# test_prometheus_grafana.py checks compose/prometheus/prometheus.yml with promtool and runs
# it on loopback against a live worker and sink. Idempotent: does nothing when the binaries
# are there. Installing needs root (apt-get); without it, says what to run and fails, so that
# the test command does not go on to skip the Prometheus test silently.
set -euo pipefail
bin=/usr/bin/prometheus
if [[ -x "$bin" && -x /usr/bin/promtool ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "prometheus.sh: $bin missing and no apt-get here; install Prometheus 2.42+ (with" \
         "promtool) at $bin" >&2
    exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "prometheus.sh: $bin missing; run as root: apt-get install -y prometheus" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
# the package lists may be missing or stale on a fresh machine: update once, then retry
if ! apt-get install -y --no-install-recommends prometheus >"$log" 2>&1; then
    if ! { apt-get update && apt-get install -y --no-install-recommends prometheus; } \
           >>"$log" 2>&1; then
        cat "$log" >&2
        echo "prometheus.sh: installing prometheus failed (log above)" >&2
        exit 1
    fi
fi
rm -f "$log"
# the package enables a system service; the test starts its own instance on a free port
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
"$bin" --version 2>&1 | head -1
