#!/usr/bin/env bash
# Apache Kafka 4.x for tests, CI and humans, from Maven Central jars (no tarball, no Docker).
#
#   scripts/kafka.sh fetch          resolve the broker jars once into
#                                   ${TWIN_CACHE_DIR:-~/.cache/dc-twin}/kafka-<version>/lib
#   scripts/kafka.sh start [opts]   start a single-node KRaft broker in the background on
#                                   127.0.0.1:9092 (controller 9093), data in ./var/kafka
#   scripts/kafka.sh stop  [opts]   stop it (SIGTERM, SIGKILL after 30 s)
#   scripts/kafka.sh run   [opts]   run it in the foreground until Ctrl-C
#
# Options: --port N, --controller-port N, --state-dir DIR, --version V
# (or TWIN_KAFKA_VERSION). Needs Java 17+ and, for fetch, Maven. The logic lives in
# streams/brokers/apache.py, which the tests use too.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi

case "${1:-}" in
    fetch|start|stop|run) ;;
    *) echo "usage: $0 fetch|start|stop|run [--port N] [--controller-port N] [--state-dir DIR] [--version V]" >&2
       exit 2 ;;
esac
exec "$python" -m streams.brokers.apache "$@"
