#!/usr/bin/env bash
# Make sure Debian's prometheus-alertmanager is installed (tests/streams/
# test_alerts_integration.py starts it on loopback). Idempotent; installing needs root
# (scripts/debian_package.sh says what to run otherwise and fails, so that the test command
# does not go on to skip the Alertmanager test silently).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/debian_package.sh" prometheus-alertmanager \
    /usr/bin/prometheus-alertmanager
