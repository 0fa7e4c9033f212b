"""`twin demo` end to end: embedded broker, worker, sink and simulator as a user runs them,
including a recycle of the embedded broker (snapshot, restart, restore)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.sql import SqlService
from streams.brokers import Broker
from streams.brokers.ports import free_port
from streams.httpclient import http_get

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_recycles_its_broker_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "streams", "demo", "--duration", "75", "--racks", "8",
        "--web-port", str(port), "--state-dir", str(tmp_path / "state"),
        "--data-dir", str(tmp_path / "data"), "--recycle-mb", "27",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    racks_seen = 0
    api = f"http://127.0.0.1:{port}"
    checked: dict[str, object] = {}
    deadline = time.monotonic() + 150
    while proc.poll() is None and time.monotonic() < deadline:
        status, body = http_get(api + "/api/state", timeout_s=2)
        if status == 200:
            doc = json.loads(body)
            full = [r for r in doc["racks"].values() if isinstance(r, dict) and r.get("gpus") == 72]
            racks_seen = max(racks_seen, len(full))
            if "model" in doc and "pue" not in checked:
                # the facility model runs beside the measurements
                checked["pue"] = (doc["facility"].get("pue"), doc["model"]["kpis"]["pue"])
                checked["headroom"] = doc["model"]["headroom"]["R0001"]["headroom_k"]
        if "pue" in checked and "whatif" not in checked:
            status, body = http_get(api + "/api/racks/R0003", timeout_s=2)
            gpus = json.loads(body)["gpus"] if status == 200 else []
            model = gpus[0]["model"] if gpus else None  # the fit of R0003/G00
            if model and model["r_k_w"] is not None:
                checked["r_k_w"] = model["r_k_w"]
                png = tmp_path / "whatif.png"
                wi = subprocess.run(
                    [sys.executable, "-m", "streams", "whatif", "--from-url", api,
                     "--scenario", "pump_trip:CDU01", "--horizon", "10m", "--out", str(png),
                     "--no-progress"],
                    capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                checked["whatif"] = (wi.returncode, wi.stdout + wi.stderr, png.exists())
        time.sleep(1)
    proc.wait(60)
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "/api/state" in out  # the banner names the URLs
    assert racks_seen >= 8, out
    measured_pue, model_pue = checked["pue"]  # type: ignore[misc]
    assert measured_pue is not None and abs(model_pue - measured_pue) < 0.02 * measured_pue
    assert isinstance(checked["headroom"], float)
    assert 0.005 < checked["r_k_w"] < 0.05  # type: ignore[operator]
    rc, text, png_written = checked["whatif"]  # type: ignore[misc]
    assert rc == 0 and png_written, text
    assert "R0001" in text or "slowdown" in text, text
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
    # ... and without a gap: the simulator catches up after each recycle.
    span_sql = "(epoch_ms(max(ts)) - epoch_ms(min(ts))) // 1000 + 1"
    row = svc.query(f"SELECT count(DISTINCT ts) AS n, {span_sql} AS span FROM gpu").to_pylist()[0]
    instants, span = row["n"], row["span"]
    assert instants == span, (instants, span)


def test_demo_on_an_existing_broker(broker: Broker, topic_prefix: str, tmp_path: Path) -> None:
    argv = [
        sys.executable, "-m", "streams", "demo", "--broker", broker.url, "--duration", "25",
        "--racks", "4", "--web-port", str(free_port()), "--topic-prefix", topic_prefix,
        "--app-id", f"{topic_prefix}-twin", "--state-dir", str(tmp_path / "state"),
        "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"broker     {broker.url} (external)" in r.stdout
    m = re.search(r"(\d+) GPU samples published, 0 broker recycles", r.stdout)
    assert m, r.stdout
    n = SqlService(tmp_path / "data").query("SELECT count(*) AS n FROM gpu").column("n")[0]
    assert n.as_py() == int(m.group(1)) > 0
