"""Every command pointed at a closed port says so in one line, exits 1, within seconds."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.writer import write_file
from streams.brokers.ports import free_port
from streams.kafka_reach import REACH_WAIT_S, _OncePerMinute, quiet_client_logs, require_reachable
from twin.errors import BrokerError

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_789_999_200_000  # 2026-09-21T14:00Z


def test_every_command_fails_in_one_line_on_a_closed_port(tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens there
    broker = f"kafka://127.0.0.1:{port}"
    store = tmp_path / "data"
    write_file(
        default_tables()["gpu"],
        synth.gpu_table(1, 2, 3, start_ms=START_MS, seed=1),
        date_dir(store, "gpu", day_of_ms(START_MS)),
    )
    commands = {
        "sink": ["sink", "--broker", broker, "--data-dir", str(tmp_path / "sunk")],
        "sim": ["sim", "--broker", broker, "--racks", "1", "--duration", "5"],
        "replay": ["replay", "--broker", broker, "--data-dir", str(store),
                   "--from", "2026-09-21T00:00", "--to", "2026-09-22T00:00"],
        "worker": ["worker", "--broker", broker, "--racks", "1", "--web-port", str(free_port()),
                   "--state-dir", str(tmp_path / "state"), "--data-dir", str(store)],
        "collect nvml": ["collect", "nvml", "--broker", broker, "--rack", "R0001"],
        "collect dcgm": ["collect", "dcgm", "--broker", broker, "--rack", "R0001",
                         "--url", f"http://127.0.0.1:{port}/metrics"],
        "whatif": ["whatif", "--from-url", f"http://127.0.0.1:{port}",
                   "--scenario", "pump_trip:CDU01", "--no-progress"],
    }  # fmt: skip
    t0 = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "streams", *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in commands.items()
    }
    results = {name: (*p.communicate(timeout=120), p.returncode) for name, p in procs.items()}
    wall_s = time.monotonic() - t0
    for name, (out, err, rc) in results.items():
        lines = err.splitlines()
        assert rc == 1, (name, rc, err)
        assert len(lines) == 1, (name, err)
        assert "Traceback" not in err and out == "", (name, out, err)
        if name == "whatif":
            assert "Connection refused" in lines[0] and "twin worker" in lines[0], lines[0]
        elif name == "collect nvml" and "NVIDIA" in lines[0]:
            pass  # no GPU here: said first, in one line, before the broker is tried
        else:
            assert f"cannot reach Kafka at 127.0.0.1:{port} (connection refused)" in lines[0]
            assert "--broker" in lines[0], lines[0]  # what to do
    # seven interpreters starting at once on a busy machine: only a hang fails this; the
    # wait itself is timed in-process below
    assert wall_s < 120.0, wall_s


def test_the_reach_check_gives_up_within_its_wait() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{port} \(connection refused\)"):
        asyncio.run(require_reachable(f"127.0.0.1:{port}"))
    took = time.monotonic() - t0
    assert REACH_WAIT_S <= took < REACH_WAIT_S + 2.0, took
    # one server of several answering is enough
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        up = sock.getsockname()[1]
        t0 = time.monotonic()
        asyncio.run(require_reachable(f"127.0.0.1:{port},127.0.0.1:{up}"))
        assert time.monotonic() - t0 < 1.0


def test_aiokafka_lines_once_a_minute_unless_debug() -> None:
    f = _OncePerMinute(every_s=60.0)

    def rec(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("h:1",), None)

    flood = [rec("aiokafka.conn", 'Unable connect to "%s"') for _ in range(50)]
    assert sum(f.filter(r) for r in flood) == 1
    assert f.filter(rec("aiokafka.consumer", "another message %s"))
    assert all(f.filter(rec("storage.sink", "ours %s")) for _ in range(5))  # ours: all
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    try:
        quiet_client_logs("warning")
        assert any(isinstance(x, _OncePerMinute) for x in handler.filters)
        quiet_client_logs("warning")  # idempotent
        assert sum(isinstance(x, _OncePerMinute) for x in handler.filters) == 1
        quiet_client_logs("debug")
        assert not any(isinstance(x, _OncePerMinute) for x in handler.filters)
    finally:
        root.removeHandler(handler)
