"""Alerts end to end: GPU frames on a real broker -> a worker -> a real Alertmanager.

Debian's prometheus-alertmanager runs on loopback (scripts/alertmanager.sh installs it). A GPU
whose die creeps up to its slowdown temperature raises the thermal-margin alert; the test reads
it from Alertmanager's own API, acknowledges it on the worker (401 without the token, 403 with
a wrong one), SIGKILLs and restarts the worker (the alert and its acknowledgement survive in
the Faust table), then cools the GPU and sees the alert resolved in Alertmanager.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer

from models.rules import DEFAULT_RULES_FILE
from storage.decode import decode_message
from storage.layout import default_tables
from streams.brokers import Broker
from streams.brokers.ports import free_port
from streams.codec import encode_frame, gpu_batch
from streams.producer import FramePublisher
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.alertmanager_util import Alertmanager, request, require_alertmanager
from tests.streams.frames import gpu_columns
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "alert-test-token-0123456789"
RACK = "R0003"
HOT_GPU = 5
SLOWDOWN_C = 89.0  # the shipped site's GPU slowdown temperature


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    require_alertmanager()
    am = Alertmanager(tmp_path)
    yield am
    am.stop()


def rules_file(tmp: Path) -> Path:
    """The shipped rules with short for/clear durations, so the test runs in seconds."""
    text = DEFAULT_RULES_FILE.read_text()
    text = text.replace("for_s = 10\nclear_for_s = 10", "for_s = 1\nclear_for_s = 1")
    assert "for_s = 1\nclear_for_s = 1" in text
    path = tmp / "rules.toml"
    path.write_text(text)
    return path


def gpu_frame(temp_hot_c: float) -> bytes:
    ts = time.time_ns() // 1_000_000
    cols = gpu_columns(8, seed=3)
    cols["temp_gpu_c"] = np.full(8, 50.0, dtype=np.float32)
    cols["temp_gpu_c"][HOT_GPU] = temp_hot_c
    cols["clock_event_reasons"] = np.zeros(8, dtype=np.uint64)
    return encode_frame(gpu_batch(ts, RACK, cols))


async def _publish(bootstrap: str, topic: str, frames: list[bytes]) -> None:
    async with FramePublisher(bootstrap) as pub:
        for f in frames:
            await (await pub.send(topic, RACK, f))


def send_until(
    broker: Broker, topics: Topics, temp_c: float, done: Any, what: str, timeout_s: float = 60
) -> Any:
    """Publish a frame of the rack every 0.5 s until ``done()`` returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        asyncio.run(_publish(broker.bootstrap, topics.gpu, [gpu_frame(temp_c)]))
        got = done()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


async def _read_alert_states(bootstrap: str, topic: str, aid: str) -> list[str]:
    """States of one alert on twin.alerts, each row decoded as the store decodes it, until
    the alert is back to NORM (or 30 s)."""
    tdef = default_tables()["alerts"]
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    states: list[str] = []
    seen_ids: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while "NORM" not in states and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for r in recs:
                    table = decode_message(tdef, r.key, r.value, 0)
                    rows = zip(
                        table["state"].to_pylist(), table["alert_id"].to_pylist(), strict=True
                    )
                    states += [s for s, i in rows if i == aid]
                    seen_ids.append(str(r.key))
    finally:
        await consumer.stop()
    assert states, f"no message of {aid} among {len(seen_ids)}: {seen_ids[:20]}"
    return states


def test_thermal_alert_reaches_alertmanager_is_acked_survives_a_restart_and_resolves(
    broker: Broker, topic_prefix: str, tmp_path: Path, alertmanager: Alertmanager
) -> None:
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    extra = (
        "--api-token-file",
        str(token_file),
        "--alert-rules",
        str(rules_file(tmp_path)),
        "--alertmanager-url",
        alertmanager.url,
    )
    worker = WorkerProcess(broker.url, topic_prefix, tmp_path / "w", extra=extra)
    try:
        worker.wait_healthy()

        def am_alert() -> dict[str, Any] | None:
            hits = [
                a
                for a in alertmanager.alerts()
                if a["labels"].get("alertname") == "gpu_thermal_margin"
                and a["labels"].get("entity") == f"{RACK}/g{HOT_GPU}"
            ]
            return hits[0] if hits else None

        # the die creeps towards slowdown: 2 K of margin left (< 5 K)
        am = send_until(broker, topics, SLOWDOWN_C - 2.0, am_alert, "the alert in Alertmanager")
        assert am["labels"]["severity"] == "major" and am["labels"]["owner"] == RACK
        assert am["status"]["state"] == "active"
        assert "coolant" in am["annotations"]["action"]
        aid = am["annotations"]["alert_id"]
        assert am["generatorURL"].endswith(f"/api/alerts/{aid}")

        status, listing = worker.get_json(f"/api/alerts?entity={RACK}&state=UNACK")
        assert status == 200 and [a["id"] for a in listing["alerts"]] == [aid]
        assert listing["flood"] is False

        ack_url = f"{worker.url}/api/alerts/{aid}/ack"
        body = {"comment": "moving the job", "by": "op-anna"}
        assert request(ack_url, body)[0] == 401
        assert request(ack_url, body, token="wrong-token-0123456789")[0] == 403
        status, acked = request(ack_url, body, token=TOKEN)
        assert status == 200, acked
        assert (acked["state"], acked["ack_by"], acked["ack_comment"]) == (
            "ACKED",
            "op-anna",
            "moving the job",
        )
        # Alertmanager learns of the acknowledgement (annotations of the same alert)
        send_until(
            broker,
            topics,
            SLOWDOWN_C - 2.0,
            lambda: (am_alert() or {}).get("annotations", {}).get("acknowledged_by") == "op-anna",
            "the ack in Alertmanager",
        )
        metrics = urllib.request.urlopen(worker.url + "/metrics", timeout=5).read().decode()
        assert 'twin_alerts{severity="major",state="ACKED"} 1.0' in metrics
        assert "twin_alert_flood 0.0" in metrics
        assert 'twin_alert_sink_queue{sink="alertmanager"}' in metrics
        assert TOKEN not in worker.log_tail(10**6)

        # another GPU of the rack out of service (ISA-18.2 OOSRV): kept across the restart
        oos_url = f"{worker.url}/api/entities/{RACK}/g0/out-of-service"
        assert request(oos_url, {"reason": "fan swap"})[0] == 401
        status, doc = request(oos_url, {"reason": "fan swap", "by": "op-anna"}, token=TOKEN)
        assert status == 200 and doc["out_of_service"] is True, doc

        # a worker killed and restarted keeps its alert and the acknowledgement
        time.sleep(1.0)  # the table write follows the ack within one evaluation interval
        worker.kill()
        worker = WorkerProcess(broker.url, topic_prefix, tmp_path / "w", extra=extra)
        worker.wait_healthy()

        def restored() -> dict[str, Any] | None:
            status, doc = worker.get_json(f"/api/alerts/{aid}")
            return doc if status == 200 else None

        doc = send_until(broker, topics, SLOWDOWN_C - 2.0, restored, "the restored alert")
        assert (doc["state"], doc["ack_by"]) == ("ACKED", "op-anna")
        oos = worker.get_json("/api/alerts")[1]["out_of_service"]
        assert [(n["entity"], n["by"], n["reason"]) for n in oos] == [
            (f"{RACK}/g0", "op-anna", "fan swap")
        ]

        # cooled down: the alert clears (acknowledged: NORM) and Alertmanager resolves it
        send_until(broker, topics, 50.0, lambda: am_alert() is None, "resolved in Alertmanager")
        status, doc = worker.get_json(f"/api/alerts/{aid}")
        assert status == 200 and doc["state"] == "NORM" and not doc["active"]

        # twin.alerts carries the lifecycle in the alerts table's schema
        states = asyncio.run(_read_alert_states(broker.bootstrap, topics.alerts, aid))
        assert states[0] == "UNACK" and "ACKED" in states and states[-1] == "NORM"
    finally:
        worker.stop()


def test_an_ack_on_any_worker_reaches_the_owner_of_the_alert(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    from models.alerting import alert_id

    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    extra = ("--api-token-file", str(token_file), "--alert-rules", str(rules_file(tmp_path)))
    workers = [
        WorkerProcess(broker.url, topic_prefix, tmp_path / f"w{i}", extra=extra) for i in (0, 1)
    ]
    aid = alert_id(RACK, "gpu_thermal_margin", f"{RACK}/g{HOT_GPU}")
    try:
        for w in workers:
            w.wait_healthy()

        def split() -> tuple[int, ...]:
            docs = [w.get_json("/healthz")[1] or {} for w in workers]
            return tuple(int(d.get("assigned_partitions", 0)) for d in docs)

        # both in the group and no rebalance under way: the same split for 2 s
        deadline = time.monotonic() + 90
        seen: list[tuple[int, ...]] = []
        while not (len(seen) >= 5 and len(set(seen[-5:])) == 1 and min(seen[-1]) > 0):
            assert time.monotonic() < deadline, f"workers never shared the partitions: {seen}"
            seen.append(split())
            time.sleep(0.5)

        def owner() -> WorkerProcess | None:
            for w in workers:
                status, doc = w.get_json(f"/api/alerts/{aid}")
                if status == 200 and doc["state"] == "UNACK" and doc["held_here"]:
                    return w
            return None

        # the worker owning the rack's partition raises the alert
        held = send_until(broker, topics, SLOWDOWN_C - 2.0, owner, "the alert on its owner")
        other = workers[1] if held is workers[0] else workers[0]

        def listed_elsewhere() -> dict[str, Any] | None:
            # the other worker lists it too, from twin.state
            status, doc = other.get_json(f"/api/alerts?entity={RACK}")
            alerts: list[dict[str, Any]] = (doc or {}).get("alerts", [])
            hits = [a for a in alerts if a["id"] == aid]
            return hits[0] if status == 200 and hits else None

        listed = send_until(broker, topics, SLOWDOWN_C - 2.0, listed_elsewhere, "the alert listed")
        assert listed["held_here"] is False and listed["state"] == "UNACK"
        url = f"{other.url}/api/alerts/{aid}/ack"
        assert request(url, {"comment": "x"})[0] == 401
        status, doc = request(url, {"comment": "from the other worker", "by": "op-ben"}, TOKEN)
        assert status == 202 and doc == {"forwarded": True, "owner": RACK, "id": aid}

        def acked() -> dict[str, Any] | None:
            status, doc = held.get_json(f"/api/alerts/{aid}")
            return doc if status == 200 and doc["state"] == "ACKED" else None

        doc = send_until(broker, topics, SLOWDOWN_C - 2.0, acked, "the forwarded ack")
        assert (doc["ack_by"], doc["ack_comment"]) == ("op-ben", "from the other worker")
        # shelving goes the same way; a shelve longer than the budget allows is refused
        shelve = f"{other.url}/api/alerts/{aid}/shelve"
        assert request(shelve, {"duration_s": 600})[0] == 401
        assert request(f"{held.url}/api/alerts/{aid}/shelve", {"duration_s": 1e9}, TOKEN)[0] == 400
        status, doc = request(shelve, {"duration_s": 600, "by": "op-ben"}, TOKEN)
        assert status == 202

        def shelved() -> dict[str, Any] | None:
            status, doc = held.get_json(f"/api/alerts/{aid}")
            return doc if status == 200 and doc["state"] == "SHLVD" else None

        doc = send_until(broker, topics, SLOWDOWN_C - 2.0, shelved, "the forwarded shelve")
        assert doc["shelved_by"] == "op-ben" and doc["shelved_until_s"] > time.time() + 500
        # out of service through the worker that does not own the GPU: forwarded like an ack
        gpu = f"{RACK}/g{HOT_GPU}"
        oos_url = f"{other.url}/api/entities/{gpu}/out-of-service"
        assert request(oos_url, {"reason": "x"})[0] == 401
        assert (
            request(f"{other.url}/api/entities/{RACK}/out-of-service", {"reason": 5}, TOKEN)[0]
            == 400
        )
        status, doc = request(oos_url, {"reason": "RMA", "by": "op-ben"}, TOKEN)
        assert status == 202 and doc == {"forwarded": True, "owner": RACK, "entity": gpu}

        def out_of_service() -> dict[str, Any] | None:
            status, doc = held.get_json(f"/api/alerts/{aid}")
            return doc if status == 200 and doc["state"] == "OOSRV" else None

        send_until(broker, topics, SLOWDOWN_C - 2.0, out_of_service, "the forwarded OOS")

        def oos_listed() -> list[dict[str, Any]] | None:
            _, doc = other.get_json("/api/alerts")
            return (doc or {}).get("out_of_service") or None

        listed_oos = send_until(broker, topics, SLOWDOWN_C - 2.0, oos_listed, "OOS on the other")
        assert [(n["entity"], n["by"], n["held_here"]) for n in listed_oos] == [
            (gpu, "op-ben", False)
        ]
        status, doc = request(f"{other.url}/api/entities/{gpu}/in-service", {}, TOKEN)
        assert status == 202
        send_until(broker, topics, SLOWDOWN_C - 2.0, shelved, "back in service (shelved)")
        # malformed actions are refused where they are posted
        assert request(url, {"comment": 5}, TOKEN)[0] == 400
        assert request(f"{other.url}/api/alerts/..%2Fx/ack", {}, TOKEN)[0] in (400, 404)
    finally:
        for w in workers:
            w.stop()


def test_an_alert_raised_while_alertmanager_is_down_arrives_when_it_starts(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    require_alertmanager()
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    port = free_port()  # nothing listens there yet
    extra = (
        "--alert-rules",
        str(rules_file(tmp_path)),
        "--alertmanager-url",
        f"http://127.0.0.1:{port}",
    )
    worker = WorkerProcess(broker.url, topic_prefix, tmp_path / "w", extra=extra)
    am: Alertmanager | None = None
    try:
        worker.wait_healthy()

        def raised() -> bool:
            status, doc = worker.get_json("/api/alerts?state=UNACK")
            return status == 200 and bool(doc["alerts"])

        send_until(broker, topics, SLOWDOWN_C - 2.0, raised, "the alert on the worker")

        def failing() -> bool:
            text = urllib.request.urlopen(worker.url + "/metrics", timeout=5).read().decode()
            line = [ln for ln in text.splitlines() if ln.startswith("twin_alert_sink_failures")]
            return bool(line) and float(line[0].split()[-1]) >= 1

        send_until(broker, topics, SLOWDOWN_C - 2.0, failing, "a failed delivery")
        am = Alertmanager(tmp_path, port)

        def delivered() -> bool:
            return any(a["labels"].get("alertname") == "gpu_thermal_margin" for a in am.alerts())

        # retried with backoff (at most 60 s apart); the alert is still firing when it lands
        send_until(broker, topics, SLOWDOWN_C - 2.0, delivered, "the late delivery", 90)
    finally:
        worker.stop()
        if am is not None:
            am.stop()
