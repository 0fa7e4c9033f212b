#!/usr/bin/env bash
# Make sure Debian's prometheus-alertmanager is installed (tests/streams/
# test_alerts_integration.py starts it on loopback). Idempotent: does nothing when the binary
# is there. Installing needs root (apt-get); without it, says what to run and fails, so that
# the test command does not go on to skip the Alertmanager test silently.
set -euo pipefail
bin=/usr/bin/prometheus-alertmanager
if [[ -x "$bin" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "alertmanager.sh: $bin missing and no apt-get here; install Prometheus Alertmanager" \
         "0.25+ at $bin" >&2
    exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "alertmanager.sh: $bin missing; run as root: apt-get install -y prometheus-alertmanager" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
# the package lists may be missing or stale on a fresh machine: update once, then retry
if ! apt-get install -y --no-install-recommends prometheus-alertmanager >"$log" 2>&1; then
    if ! { apt-get update && apt-get install -y --no-install-recommends \
           prometheus-alertmanager; } >>"$log" 2>&1; then
        cat "$log" >&2
        echo "alertmanager.sh: installing prometheus-alertmanager failed (log above)" >&2
        exit 1
    fi
fi
rm -f "$log"
# the package enables a system service; the tests start their own instance on a free port
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    systemctl disable --now prometheus-alertmanager >/dev/null 2>&1 || true
fi
"$bin" --version 2>&1 | head -1
