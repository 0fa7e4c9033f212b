"""A fault injected through the simulator reaches a real Alertmanager, and resolves there.

`twin sim` (4 racks on one CDU, real time) trips the CDU's pump (``pump_trip:CDU01@T``); a
worker with the shipped rules (shorter for/clear durations) raises the CDU flow alert, sends it
to Debian's prometheus-alertmanager on loopback, and the test reads it back from
Alertmanager's own API (labels, the recommended action, generatorURL at the worker's
/api/alerts/{id}). The GPUs of the CDU's racks heat past their thermal-margin threshold
meanwhile: their alerts are suppressed by the CDU alert (DSUPR), so the CDU alert is the one
alert Alertmanager fires. The simulator is then restarted without the fault (the pump runs
again): the twin clears the alert and Alertmanager notifies it resolved (webhook receiver of
the test) and drops it from its active alerts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from models.rules import DEFAULT_RULES_FILE
from streams.brokers import Broker
from streams.brokers.ports import free_port
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.alertmanager_util import (
    Alertmanager,
    WebhookReceiver,
    request,
    require_alertmanager,
)
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 8
CDU = "CDU01"  # feeds the 4 racks of the test
TRIP_AT_S = 8  # seconds after the simulator starts: the worker has seen normal frames first
T = TypeVar("T")


def rules_file(tmp: Path) -> Path:
    """The shipped rules with for/clear durations of seconds, so the test runs in a minute."""
    text = DEFAULT_RULES_FILE.read_text()
    for old, new in (
        ("for_s = 10\nclear_for_s = 10", "for_s = 1\nclear_for_s = 1"),  # GPU thermal margin
        ("for_s = 5\nclear_for_s = 10", "for_s = 1\nclear_for_s = 3"),  # CDU flow
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "rules.toml"
    path.write_text(text)
    return path


def start_sim(
    broker: Broker, prefix: str, log: Path, faults: tuple[str, ...]
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "streams", "sim",
        "--broker", broker.url,
        "--topic-prefix", prefix,
        "--partitions", str(PARTITIONS),
        "--racks", "4",
        "--plant-dt", "1",  # CDU readings every second
        "--duration", "600",
        "--log-level", "warning",
    ]  # fmt: skip
    for f in faults:
        argv += ["--fault", f]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}  # flags only
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for(
    done: Callable[[], T | None], what: str, timeout_s: float, why: Callable[[], str]
) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = done()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{why()}")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.stop()


def test_a_pump_trip_in_the_simulator_fires_one_alert_in_alertmanager_and_resolves(
    broker: Broker, topic_prefix: str, tmp_path: Path, receiver: WebhookReceiver
) -> None:
    require_alertmanager()
    asyncio.run(ensure_topics(broker.bootstrap, Topics(topic_prefix), PARTITIONS))
    am_port = free_port()  # Alertmanager starts once the worker is in its group
    extra = (
        *("--racks", "4"),  # the simulated site: the CDU's design flow is that of 4 racks
        *("--alert-rules", str(rules_file(tmp_path))),
        *("--alertmanager-url", f"http://127.0.0.1:{am_port}"),
    )
    worker = WorkerProcess(broker.url, topic_prefix, tmp_path / "w", extra=extra)
    sim_log = tmp_path / "sim.log"
    sim: subprocess.Popen[bytes] | None = None
    am: Alertmanager | None = None

    def why() -> str:
        _, listing = worker.get_json("/api/alerts")
        alerts = [(a["rule"], a["entity"], a["state"]) for a in (listing or {}).get("alerts", [])]
        return (
            f"worker alerts: {alerts[:20]}\nalertmanager: {am.alerts() if am else None}\n"
            f"sim log: {sim_log.read_text(errors='replace')[-1500:] if sim_log.exists() else ''}\n"
            f"worker log: {worker.log_tail(3000)}"
        )

    def firing(rule: str | None = None) -> list[dict[str, Any]]:
        assert am is not None
        return [
            a
            for a in am.alerts()
            if a["status"]["state"] == "active"
            and (rule is None or a["labels"].get("alertname") == rule)
        ]

    try:
        worker.wait_healthy()

        def assigned() -> int:
            _, doc = worker.get_json("/healthz")
            return int((doc or {}).get("assigned_partitions", 0))

        # in the consumer group before the fault (a fresh Kafka broker can take a while)
        wait_for(lambda: assigned() >= PARTITIONS, "the worker's partitions", 120, why)
        am = Alertmanager(tmp_path, am_port, webhook_url=receiver.url)
        started_s = time.time()
        sim = start_sim(broker, topic_prefix, sim_log, (f"pump_trip:{CDU}@{TRIP_AT_S}",))

        # the CDU flow alert, read back from Alertmanager's own API
        (am_alert,) = wait_for(lambda: firing("cdu_flow_low"), "the CDU alert", 90, why)
        labels, notes = am_alert["labels"], am_alert["annotations"]
        assert (labels["entity"], labels["owner"], labels["severity"]) == (CDU, CDU, "critical")
        assert "standby pump" in notes["action"]
        aid = notes["alert_id"]
        gen = urllib.parse.urlsplit(am_alert["generatorURL"])
        assert gen.path == f"/api/alerts/{aid}"
        status, doc = request(am_alert["generatorURL"])  # the worker's own API answers there
        assert status == 200 and doc["id"] == aid and doc["state"] == "UNACK", doc
        assert doc["blast"] == ["R0001", "R0002", "R0003", "R0004"]  # the racks it feeds
        assert doc["raised_s"] >= started_s + TRIP_AT_S - 1.0  # by the trip, not before it

        # the GPUs of its racks heat up: their thermal alerts are suppressed by the CDU alert
        def suppressed() -> list[dict[str, Any]]:
            _, listing = worker.get_json("/api/alerts?state=DSUPR")
            return [
                a
                for a in (listing or {}).get("alerts", [])
                if a["rule"] == "gpu_thermal_margin" and a["suppressed_by"] == aid
            ]

        hot = wait_for(suppressed, "suppressed GPU thermal alerts", 40, why)
        assert hot, why()
        # the one alert the operator sees: nothing else fires in Alertmanager
        others = [a["labels"] for a in firing() if a["labels"].get("alertname") != "cdu_flow_low"]
        assert others == [], why()
        _, listing = worker.get_json("/api/alerts?state=UNACK")
        assert [a["rule"] for a in listing["alerts"]] == ["cdu_flow_low"], why()

        # the pump runs again (the simulator restarts without the fault): the twin clears the
        # alert and Alertmanager resolves it
        stop(sim)
        sim = start_sim(broker, topic_prefix, sim_log, ())

        def resolved_notified() -> list[dict[str, Any]]:
            return [
                a
                for a in receiver.notified()
                if a["status"] == "resolved" and a["labels"].get("alertname") == "cdu_flow_low"
            ]

        (note,) = wait_for(resolved_notified, "the resolved notification", 60, why)[:1]
        assert note["labels"]["entity"] == CDU and note["annotations"]["alert_id"] == aid
        assert note["endsAt"] >= note["startsAt"]
        assert not firing("cdu_flow_low"), why()  # gone from Alertmanager's active alerts
        # it fired before it resolved, and Alertmanager was told of it only once as firing
        fired = [
            a
            for a in receiver.notified()
            if a["status"] == "firing" and a["labels"].get("alertname") == "cdu_flow_low"
        ]
        assert fired and fired[0]["annotations"]["alert_id"] == aid
        status, doc = worker.get_json(f"/api/alerts/{aid}")
        assert status == 200 and not doc["active"] and doc["state"] == "RTNUN", doc
    finally:
        if sim is not None:
            stop(sim)
        worker.stop()
        if am is not None:
            am.stop()
