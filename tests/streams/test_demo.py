"""`twin demo` end to end: embedded broker, worker, sink and simulator as a user runs them,
including a recycle of the embedded broker (snapshot, restart, restore)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.sql import SqlService
from streams.brokers.ports import free_port
from tests.streams.workerproc import http_get

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_recycles_its_broker_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "streams", "demo", "--duration", "75", "--racks", "8",
        "--web-port", str(port), "--state-dir", str(tmp_path / "state"),
        "--data-dir", str(tmp_path / "data"), "--recycle-mb", "32",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    racks_seen = 0
    deadline = time.monotonic() + 150
    while proc.poll() is None and time.monotonic() < deadline:
        status, body = http_get(f"http://127.0.0.1:{port}/api/state", timeout_s=2)
        if status == 200:
            racks_seen = max(racks_seen, body.count(b'"gpus":72'))
        time.sleep(1)
    proc.wait(60)
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "/api/state" in out  # the banner names the URLs
    assert racks_seen >= 8, out
    m = re.search(r"(\d+) GPU samples published, (\d+) broker recycles", out)
    assert m, out
    published, recycles = int(m.group(1)), int(m.group(2))
    assert recycles >= 1, out
    # Every published sample is in the history exactly once, across broker generations.
    svc = SqlService(tmp_path / "data")
    n, distinct = (
        svc.query("SELECT count(*), count(DISTINCT (rack, gpu, ts)) FROM gpu")
        .to_pylist()[0]
        .values()
    )
    assert n == distinct == published, (n, distinct, published, out)
