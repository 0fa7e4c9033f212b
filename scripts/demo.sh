#!/usr/bin/env bash
# Install dc-twin into .venv and run `twin demo` on the embedded broker.
# Extra arguments go to `twin demo` (e.g. --duration 60 --racks 16).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec twin demo "$@"
