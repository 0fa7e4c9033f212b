"""Notification sinks (streams/alert_sinks.py) against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from streams.alert_sinks import AlertmanagerSink, WebhookSink, firing, iso, sinks_from_urls
from streams.brokers.ports import free_port


def doc(aid: str = "R0001.margin.abc", state: str = "UNACK", **kw: Any) -> dict[str, Any]:
    d = {
        "id": aid,
        "rule": "margin",
        "entity": "R0001/g1",
        "owner": "R0001",
        "group": "R0001",
        "severity": "major",
        "message": "GPU R0001/g1: 3.0 K to thermal slowdown",
        "action": "cool it",
        "state": state,
        "active": state in ("UNACK", "ACKED", "SHLVD", "DSUPR"),
        "raised_s": 1_800_000_000.0,
        "blast": [],
    }
    return d | kw


class Receiver:
    """A real HTTP server that records what it is sent; it can be slow or refuse."""

    def __init__(self, port: int, *, status: int = 200, delay_s: float = 0.0) -> None:
        self.port, self.status, self.delay_s = port, status, delay_s
        self.bodies: list[Any] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(self.delay_s)
        self.bodies.append(body)
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.handle)
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    await r.start()
    yield r
    await r.stop()


async def until(cond: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_alertmanager_body_has_labels_annotations_times_and_generator_url() -> None:
    s = AlertmanagerSink("am", "http://am:9093/", generator_base="http://w:6066", twin="t1")
    assert s.url == "http://am:9093/api/v2/alerts"
    now = 1_800_000_100.0
    (a,) = json.loads(s.body([doc(ack_by="op", ack_comment="hi", state="ACKED")], now))
    assert a["labels"] == {
        "alertname": "margin",
        "entity": "R0001/g1",
        "owner": "R0001",
        "group": "R0001",
        "severity": "major",
        "twin": "t1",
    }
    assert a["annotations"]["action"] == "cool it"
    assert a["annotations"]["acknowledged_by"] == "op"
    assert a["startsAt"] == "2027-01-15T08:00:00.000Z"
    assert a["endsAt"] == iso(now + 240)  # firing: 4 resend intervals ahead
    assert a["generatorURL"] == "http://w:6066/api/alerts/R0001.margin.abc"
    # the severity rose: Alertmanager sees a new label set, so the old one is resolved
    out = json.loads(s.body([doc(severity="critical")], now + 1))
    assert [x["labels"]["severity"] for x in out] == ["major", "critical"]
    assert out[0]["endsAt"] == iso(now + 1) and out[1]["endsAt"] == iso(now + 1 + 240)
    # returned to normal, shelved, suppressed: resolved at the sink
    for state in ("RTNUN", "SHLVD", "DSUPR", "NORM"):
        (r,) = json.loads(s.body([doc(state=state, severity="critical")], now + 2))
        assert r["endsAt"] == iso(now + 2), state


def test_firing_states() -> None:
    assert firing(doc(state="UNACK")) and firing(doc(state="ACKED"))
    assert not firing(doc(state="SHLVD")) and not firing(doc(state="RTNUN"))


def test_offer_is_bounded_and_coalesces() -> None:
    s = WebhookSink("hook", "http://127.0.0.1:1/hook", max_queue=3)
    s.offer([doc(f"R0001.margin.{i}") for i in range(5)])
    assert s.depth == 3 and s.stats.dropped_total == 2
    s.offer([doc("R0001.margin.4", state="ACKED")])  # coalesced: still one per id
    assert s.depth == 3 and s.queue["R0001.margin.4"]["state"] == "ACKED"


def test_sinks_from_urls() -> None:
    sinks = sinks_from_urls("http://am:9093", "http://h/x", generator_base="g", twin="t")
    assert [s.name for s in sinks] == ["alertmanager", "webhook"]
    assert sinks_from_urls(None, "", generator_base="g", twin="t") == []


async def test_alertmanager_sink_delivers_and_resends(receiver: Receiver) -> None:
    s = AlertmanagerSink(
        "am", f"http://127.0.0.1:{receiver.port}", generator_base="g", resend_interval_s=0.3
    )
    task = asyncio.create_task(s.run())
    try:
        s.offer([doc()])
        await until(lambda: len(receiver.bodies) >= 3)  # first post, then resends
        assert all(b[0]["labels"]["alertname"] == "margin" for b in receiver.bodies)
        s.offer([doc(state="RTNUN", active=False)])
        await until(lambda: receiver.bodies[-1][0]["annotations"]["state"] == "RTNUN")
        n = len(receiver.bodies)
        await asyncio.sleep(0.8)
        assert len(receiver.bodies) == n  # nothing firing: no resends
        assert s.stats.failures_total == 0 and s.depth == 0
    finally:
        task.cancel()


async def test_a_sink_that_is_down_gets_the_alerts_when_it_comes_back() -> None:
    port = free_port()
    s = WebhookSink(
        "hook",
        f"http://127.0.0.1:{port}/hook",
        backoff_min_s=0.05,
        backoff_max_s=0.2,
        resend_interval_s=3600,
    )
    task = asyncio.create_task(s.run())
    r = Receiver(port)
    try:
        s.offer([doc("R0001.margin.a"), doc("R0002.margin.b")])
        await until(lambda: s.stats.failures_total >= 2)
        assert s.depth == 2  # kept while the sink is down
        s.offer([doc("R0001.margin.a", state="ACKED")])  # a newer version meanwhile
        await r.start()
        await until(lambda: s.depth == 0 and bool(r.bodies))
        got = {a["id"]: a for body in r.bodies for a in body["alerts"]}
        assert got["R0001.margin.a"]["state"] == "ACKED" and "R0002.margin.b" in got
        assert got["R0001.margin.a"]["firing"] is True
    finally:
        task.cancel()
        await r.stop()


async def test_a_slow_sink_times_out_and_retries_without_losing_alerts() -> None:
    r = Receiver(free_port(), delay_s=1.0)
    await r.start()
    s = WebhookSink(
        "hook",
        f"http://127.0.0.1:{r.port}/hook",
        timeout_s=0.2,
        backoff_min_s=0.05,
        resend_interval_s=3600,
    )
    task = asyncio.create_task(s.run())
    try:
        s.offer([doc()])
        await until(lambda: s.stats.failures_total >= 1)
        assert s.depth == 1
        r.delay_s = 0.0
        await until(lambda: s.stats.sent_total >= 1 and s.depth == 0)
    finally:
        task.cancel()
        await r.stop()


async def test_a_refused_batch_is_not_retried_forever() -> None:
    r = Receiver(free_port(), status=400)
    await r.start()
    s = WebhookSink("hook", f"http://127.0.0.1:{r.port}/hook", resend_interval_s=3600)
    task = asyncio.create_task(s.run())
    try:
        s.offer([doc()])
        await until(lambda: s.stats.rejected_total == 1)
        await asyncio.sleep(0.3)
        assert len(r.bodies) == 1 and s.depth == 0 and s.stats.failures_total == 0
    finally:
        task.cancel()
        await r.stop()
