#!/usr/bin/env bash
# Install dc-twin with its dev tools into .venv, fetch the Apache Kafka jars, then run the
# checks every contributor runs: ruff (lint, format), mypy and the whole pytest suite,
# with Debian's prometheus-alertmanager installed for the alerting integration test (root),
# Debian's prometheus for the dashboard test against a live worker (root; scripts/prometheus.sh)
# and Debian's chromium for the control room's browser tests (root; tests/ui/),
# integration tests on the embedded broker and on Apache Kafka.
set -euo pipefail
SETUP_EXTRAS=dev,all . "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
bash scripts/kafka.sh fetch
bash scripts/alertmanager.sh
bash scripts/prometheus.sh
bash scripts/chromium.sh
ruff check .
ruff format --check .
mypy
# pytest exits 5 when it collected no test: that is a failure here too.
set +e
pytest -q --durations=25 "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests" >&2
fi
exit $rc
