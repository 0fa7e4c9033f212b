#!/usr/bin/env bash
# Make sure the control room's browser tests (tests/ui/) can run: Debian's chromium package
# (Playwright's own browser download cannot run here) and Playwright for Python in the active
# environment. Idempotent: does nothing when both are there. Installing chromium needs root
# (apt-get); without it, says what to run and fails, so that the test command does not go on
# to skip the browser tests silently.
set -euo pipefail
bin=/usr/bin/chromium
# Playwright for Python comes with the dev extra (scripts/setup.sh installs it into .venv)
if ! python -c "import playwright" >/dev/null 2>&1; then
    echo "chromium.sh: playwright missing in $(command -v python); run: pip install -e '.[dev]'" >&2
    exit 1
fi
if [[ -x "$bin" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: $bin missing and no apt-get here; install Chromium at $bin" >&2
    exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "chromium.sh: $bin missing; run as root: apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
# the package lists may be missing or stale on a fresh machine: update once, then retry
if ! apt-get install -y --no-install-recommends chromium >"$log" 2>&1; then
    if ! { apt-get update && apt-get install -y --no-install-recommends chromium; } >>"$log" 2>&1; then
        cat "$log" >&2
        echo "chromium.sh: installing chromium failed (log above)" >&2
        exit 1
    fi
fi
rm -f "$log"
"$bin" --version 2>&1 | head -1
