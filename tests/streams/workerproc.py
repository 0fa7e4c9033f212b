"""Run `twin worker` as a real subprocess for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from streams.brokers.ports import free_port
from streams.httpclient import http_get
from streams.schema import DEFAULT_PARTITIONS


class WorkerProcess:
    """One `twin worker` subprocess with its own web port and log file."""

    def __init__(
        self,
        broker_url: str,
        prefix: str,
        data_dir: Path,
        *,
        app_id: str | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        extra: tuple[str, ...] = (),
    ):
        """partitions: as the test created its topics (a worker refuses another count)."""
        self.port = free_port()
        self.log_path = data_dir / f"worker-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "streams",
            "worker",
            "--broker",
            broker_url,
            "--web-port",
            str(self.port),
            "--topic-prefix",
            prefix,
            "--app-id",
            app_id or f"{prefix}-twin",
            "--state-dir",
            str(data_dir / "state"),
            "--data-dir",
            str(data_dir / "history"),
            "--checkpoint-interval",
            "0.3",
            "--max-message-bytes",
            str(256 * 1024),
            "--log-level",
            "warning",
            "--partitions",
            str(partitions),
            *extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get_json(self, path: str) -> tuple[int, Any]:
        status, body = http_get(self.url + path)
        return status, (json.loads(body) if body else None)

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            status, _ = http_get(self.url + "/healthz", timeout_s=2)
            if status == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy in {timeout_s}s:\n{self.log_tail()}")

    def wait_for(self, predicate: Any, timeout_s: float = 60.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            status, doc = self.get_json("/api/state")
            if status == 200:
                last = doc
                if predicate(doc):
                    return doc
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last state {last}\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
