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
exec bash "$(dirname "${BASH_SOURCE[0]}")/debian_package.sh" chromium "$bin"
