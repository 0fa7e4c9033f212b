"""A real Prometheus Alertmanager for integration tests, and a webhook receiver for what it
notifies.

Debian's prometheus-alertmanager (scripts/alertmanager.sh installs it) runs on a free loopback
port with a minimal config and its storage in the test's temp dir.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from streams.brokers.ports import free_port
from tests.conftest import in_ci

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def request(
    url: str, body: Any = None, token: str | None = None, timeout_s: float = 5.0
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), _json(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), _json(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


class Alertmanager:
    """prometheus-alertmanager on a free loopback port, storage in a temp dir."""

    def __init__(self, tmp: Path, port: int | None = None, webhook_url: str | None = None) -> None:
        self.port = port or free_port()
        cfg = tmp / "alertmanager.yml"
        receiver = "  - name: twin\n"
        if webhook_url is not None:  # notifications, resolved ones too, go to the test
            receiver += (
                f"    webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n"
            )
        cfg.write_text(
            "route:\n  receiver: twin\n  group_wait: 1s\n  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n" + receiver
        )
        (tmp / "am-data").mkdir()
        self.log = (tmp / "alertmanager.log").open("wb")
        self.proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={cfg}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            deadline = time.monotonic() + 30
            while request(self.url + "/-/ready")[0] != 200:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (tmp / "alertmanager.log").read_text(errors="replace")[-2000:]
                    raise AssertionError(f"alertmanager did not start:\n{log}")
                time.sleep(0.2)
        except BaseException:
            self.stop()  # never leave it running behind a failed start
            raise

    def alerts(self) -> list[dict[str, Any]]:
        status, body = request(self.url + "/api/v2/alerts")
        assert status == 200, status
        return list(body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def require_alertmanager() -> None:
    if shutil.which(ALERTMANAGER) is None:
        msg = f"{ALERTMANAGER} missing: run scripts/alertmanager.sh (apt prometheus-alertmanager)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


class WebhookReceiver:
    """An HTTP server on loopback that keeps every JSON body posted to it (Alertmanager's
    webhook notifications)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = {"unparsable": raw.decode(errors="replace")}
                with lock:
                    bodies.append(doc)
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # quiet in test output
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def notified(self) -> list[dict[str, Any]]:
        """Every alert of every notification so far, in order of arrival."""
        return [a for b in list(self.bodies) for a in b.get("alerts", [])]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
