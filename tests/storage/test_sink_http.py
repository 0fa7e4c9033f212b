"""`twin sink --http-port`: /healthz and /metrics of a real sink process whose maintenance
fails and then recovers (real broker); health states of a sink that is paused or stalled."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage import synth
from storage.rollup import STATE_FILE
from storage.sink import ParquetSink
from storage.sink_http import render_sink_metrics, sink_health
from streams.brokers import Broker
from streams.brokers.ports import free_port
from streams.httpclient import http_get

from .storage_kafka_util import create_topic, produce, recent_ms, unique

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _metric(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_health_states_of_a_sink(tmp_path: Path) -> None:
    clock = FakeClock()
    sink = ParquetSink("127.0.0.1:1", tmp_path, clock=clock)
    code, body = sink_health(sink)
    assert code == 503 and body["status"] == "starting"
    sink._last_step = clock()
    assert sink_health(sink)[0] == 200 and sink_health(sink)[1]["status"] == "ok"
    sink._paused_since = clock()  # the store refused a write
    clock.t += 5
    sink._last_step = clock()
    code, body = sink_health(sink)
    assert code == 200 and body["status"] == "degraded" and body["paused_s"] == 5
    text = render_sink_metrics(sink).decode()
    assert _metric(text, "twin_sink_paused") == 1.0
    assert _metric(text, "twin_sink_paused_seconds") == 5.0
    sink._paused_since = None
    sink.maintenance_error = "MaintenanceError: rollups: OSError: boom"
    assert sink_health(sink)[1]["status"] == "degraded"
    clock.t += 61  # the loop has not turned for a minute
    code, body = sink_health(sink)
    assert code == 503 and body["status"] == "stalled"
    # refusals by reason: the fixed set, a foreign code counted as invalid
    sink.refused["corrupt"] += 2
    sink.refused["made-up"] += 1
    text = render_sink_metrics(sink).decode()
    assert _metric(text, "twin_sink_refused_total", '{reason="corrupt"}') == 2.0
    assert _metric(text, "twin_sink_refused_total", '{reason="invalid"}') == 1.0
    assert "made-up" not in text


def _start(
    bootstrap: str, data_dir: Path, topic: str, port: int, log: Any
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "storage.cli_sink",
        "--broker", f"kafka://{bootstrap}",
        "--data-dir", str(data_dir),
        "--topics", topic,
        "--table-topics", f"gpu={topic}",
        "--group", unique("g"),
        "--flush-seconds", "0.3",
        "--maintenance-seconds", "0.5",
        "--http-port", str(port),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env)


async def _wait(
    proc: subprocess.Popen[bytes], url: str, pred: Any, what: str, timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sink exited {proc.returncode}"
        status, body = http_get(url + "/healthz", timeout_s=2)
        if status:
            last = (status, json.loads(body))
            if pred(*last):
                return dict(last[1])
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last {last}")


@pytest.mark.slow
async def test_sink_http_shows_failing_maintenance_then_recovery(
    broker: Broker, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    topic = unique("gpu")
    await create_topic(bootstrap, topic, 2)
    rows = synth.gpu_table(2, 72, 10, seed=3, start_ms=recent_ms(10))
    await produce(bootstrap, topic, [*synth.frames(rows, "rack"), (b"R0001", b"not arrow")])
    # a directory where the rollup state file belongs: every rollup step fails
    (tmp_path / STATE_FILE).mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path.parent / f"{tmp_path.name}-sink.log"
    log = log_path.open("wb")
    proc = _start(bootstrap, tmp_path, topic, port, log)
    try:
        body = await _wait(
            proc,
            url,
            lambda s, b: s == 200 and b["status"] == "degraded" and b["rows"] == rows.num_rows,
            "degraded with every row stored",
        )
        assert "IsADirectoryError" in body["maintenance_error"]
        assert "rollups" in body["maintenance_error"] and not body["paused"]
        assert body["maintenance_failures"] >= 1 and body["refused"] == 1
        _, raw = http_get(url + "/metrics")
        text = raw.decode()
        assert (_metric(text, "twin_sink_maintenance_failures_total") or 0) >= 1
        assert _metric(text, "twin_sink_maintenance_degraded") == 1.0
        assert _metric(text, "twin_sink_rows_total") == rows.num_rows
        assert _metric(text, "twin_sink_paused") == 0.0
        refused = re.findall(r'^twin_sink_refused_total\{reason="([^"]+)"\} (\S+)$', text, re.M)
        assert sum(float(n) for _, n in refused) == 1.0 and len(refused) > 5

        (tmp_path / STATE_FILE).rmdir()  # the cause goes: the next pass succeeds
        body = await _wait(proc, url, lambda s, b: s == 200 and b["status"] == "ok", "ok again")
        assert body["maintenance_error"] is None
        _, raw = http_get(url + "/metrics")
        text = raw.decode()
        assert (_metric(text, "twin_sink_maintenance_runs_total") or 0) >= 1
        assert _metric(text, "twin_sink_maintenance_degraded") == 0.0
        assert (tmp_path / STATE_FILE).is_file()  # the rollups did run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "maintenance failed (retried next pass)" in text
