#!/usr/bin/env bash
# Install dc-twin into .venv and run `twin demo` on the embedded broker.
# Extra arguments go to `twin demo` (e.g. --duration 60 --racks 16).
set -euo pipefail
# the embedded broker, and matplotlib for `twin whatif --out` (pyproject's extras)
SETUP_EXTRAS=broker,plots . "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec twin demo "$@"
