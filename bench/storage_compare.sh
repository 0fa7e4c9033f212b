#!/usr/bin/env bash
# Side-by-side storage benchmark (issue 4): installs Debian's victoria-metrics, prometheus
# and postgresql if missing (one apt-get update), then runs bench/storage_compare.py with the
# project's venv. Arguments pass through, e.g.:
#   bench/storage_compare.sh --racks 8 --seconds 3600 --pg-seconds 3600
#   BENCH_TIMEOUT_S=4500 nice -n 10 bench/storage_compare.sh --racks 64 --seconds 86400 \
#     --pg-seconds 3600 --repeats 3 --systems vm,pg --vm-metrics temp_gpu_c,energy_mj
# (the full sizes of issue 4; see the docstring of bench/storage_compare.py).
# The servers listen on 127.0.0.1 only, keep their data in a temp dir and are stopped when
# the Python script exits; this script bounds the whole run with timeout(1).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing Debian packages: ${need[*]} (run as root to install them)" >&2
    exit 1
  fi
  # The packaged services would start on install and listen on all interfaces (9090, 8428,
  # 5432): a temporary policy-rc.d keeps them down; this benchmark runs its own on 127.0.0.1.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
PY=${PYTHON:-.venv/bin/python}
timeout --signal=TERM --kill-after=60 "${BENCH_TIMEOUT_S:-7200}" "$PY" bench/storage_compare.py "$@"
