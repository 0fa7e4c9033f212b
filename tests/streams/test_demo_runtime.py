"""`twin demo` at run time, as a new user meets it: a busy port, a dying worker, its logs,
and the documented SQL examples within the demo's first minute."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from streams.brokers.ports import can_bind, free_port
from streams.demo import Demo
from streams.httpclient import http_post
from twin.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, int(sock.getsockname()[1])


def test_a_busy_port_asked_for_fails_before_anything_starts(tmp_path: Path) -> None:
    sock, port = _listening_socket()
    with sock:
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "streams", "demo", "--web-port", str(port), "--racks", "1",
             "--duration", "5", "--state-dir", str(tmp_path / "state"),
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert f"--web-port {port}" in lines[0] and "already in use" in lines[0], lines[0]
    assert "http://" not in r.stdout and "Ctrl-C" not in r.stdout, r.stdout  # no banner
    assert time.monotonic() - t0 < 45  # a generous bound: it stops before any broker starts


def _demo(tmp_path: Path, web_port: int, source: str) -> Demo:
    args = argparse.Namespace(
        state_dir=tmp_path / "state", web_host="127.0.0.1", web_port=web_port, broker=None,
        setting_sources={"web_port": source},
    )  # fmt: skip
    return Demo(args, console=Console(file=io.StringIO(), highlight=False, soft_wrap=True))


def test_a_busy_default_port_gives_way_in_one_line(tmp_path: Path) -> None:
    sock, port = _listening_socket()
    with sock:
        demo = _demo(tmp_path, port, "default")
        with demo.console.capture() as cap:
            demo._choose_port()
        moved = demo.args.web_port
        assert moved != port and can_bind(moved)
        assert demo.api == f"http://127.0.0.1:{moved}"
        said = cap.get().splitlines()
        assert said == [
            f"port {port} is in use (another twin demo or worker?); "
            f"the API is on port {moved} instead"
        ]
        for source in ("command line", "env TWIN_WEB_PORT"):
            with pytest.raises(ConfigError, match=f"--web-port {port}: .* already in use"):
                _demo(tmp_path, port, source)._choose_port()
    free = free_port()
    demo = _demo(tmp_path, free, "default")
    demo._choose_port()
    assert demo.args.web_port == free  # a free port is kept


def _documented_sql() -> list[str]:
    doc = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "sql-examples.md").read_text(), re.S)
    readme = re.findall(r"curl -d '(SELECT [^']*)'", (ROOT / "README.md").read_text())
    return [*readme, *doc]


@pytest.mark.integration
@pytest.mark.slow
def test_demo_first_minute_answers_sql_and_a_dead_worker_shows_its_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    (state / "logs" / "worker.log").write_text("OLD RUN: some error of yesterday\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "demo", "--duration", "150", "--racks", "2",
         "--web-port", str(port), "--state-dir", str(state), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True),
        threading.Thread(target=lambda: err.extend(proc.stderr or []), daemon=True),
    ]
    for t in readers:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Runs 150 s" in line for line in out):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(out + err)
            time.sleep(0.5)
        banner_at = time.monotonic()
        # this run's log starts afresh, the previous run's is kept beside it
        log = (state / "logs" / "worker.log").read_text()
        assert log.startswith("=== twin demo ") and "OLD RUN" not in log, log[:500]
        assert "OLD RUN" in (state / "logs" / "worker.log.1").read_text()
        # every documented SQL example answers within the demo's first minute
        pending = _documented_sql()
        while pending and time.monotonic() - banner_at < 60:
            sql = pending[0]
            status, body = http_post(f"http://127.0.0.1:{port}/api/sql", sql.encode())
            if status == 200 and json.loads(body)["row_count"] > 0:
                pending.pop(0)
            else:
                time.sleep(1)
        answered_s = time.monotonic() - banner_at
        assert not pending, f"no rows after {answered_s:.0f} s: {pending[0]}"
        # the worker dies: the demo says so on the terminal, with the worker's last lines
        worker = next(
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
            ).stdout.split()
            if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(worker, signal.SIGKILL)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in readers:
        t.join(10)
    stderr = "".join(err)
    assert rc == 1, "".join(out) + stderr
    assert "worker exited; the last lines of" in stderr, stderr
    assert "=== twin demo " in stderr  # a line of the worker's log, shown on the terminal
    assert stderr.splitlines()[-1].startswith("twin demo: error: worker exited with status -9")
    print(f"documented SQL answered {answered_s:.0f} s after the banner")
