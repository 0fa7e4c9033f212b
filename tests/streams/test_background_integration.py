"""A failing background timer degrades a real worker instead of ending it: /healthz says
degraded and names the task, /metrics counts it, frames are still applied, and the worker
is ok again once the timer succeeds (real broker, worker subprocess)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from streams.background import TEST_FAIL_TASK_ENV
from streams.brokers import Broker
from streams.codec import encode_frame
from streams.httpclient import http_get
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.frames import known_gpu_batch
from tests.streams.test_spine_integration import now_ms, publish
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Injected failures of the checkpoint timer: at the worker's 0.3 s interval about 30 s of
#: failing, long enough to span the worker's start and the checks made while degraded.
FAILURES = 100


def _metric(text: str, name: str, task: str) -> float | None:
    m = re.search(rf'^{name}\{{task="{task}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def _health(worker: WorkerProcess) -> tuple[int, Any]:
    return worker.get_json("/healthz")


def _wait(pred: Any, timeout_s: float, what: str, worker: WorkerProcess) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        assert worker.proc.poll() is None, f"worker exited\n{worker.log_tail()}"
        last = pred()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last {last}\n{worker.log_tail()}")


def test_failing_checkpoint_timer_degrades_then_recovers(
    broker: Broker, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    monkeypatch.setenv(TEST_FAIL_TASK_ENV, f"checkpoint:{FAILURES}")
    t = now_ms()
    publish(broker, [(topics.gpu, "R0001", encode_frame(known_gpu_batch("R0001", t, seed=1)))])
    worker = WorkerProcess(broker.url, topics.prefix, tmp_path)
    try:

        def degraded() -> Any:
            status, body = _health(worker)
            ok = status == 200 and body["status"] == "degraded"
            return body if ok and "checkpoint" in body["degraded_tasks"] else None

        body = _wait(degraded, 60, "/healthz degraded", worker)
        task = body["degraded_tasks"]["checkpoint"]
        assert task["failing"] and 1 <= task["failures"] <= FAILURES
        assert "InjectedFailure" in task["last_error"] and "test-only" in task["last_error"]
        assert set(body["degraded_tasks"]) == {"checkpoint"}  # the other timers are fine
        _, text = http_get(worker.url + "/metrics")
        metrics = text.decode()
        assert _metric(metrics, "twin_background_degraded", "checkpoint") == 1.0
        assert (_metric(metrics, "twin_background_failures_total", "checkpoint") or 0) >= 1
        assert _metric(metrics, "twin_background_failures_total", "publish_state") == 0.0

        # still applying frames while degraded
        publish(
            broker, [(topics.gpu, "R0002", encode_frame(known_gpu_batch("R0002", t + 1, seed=2)))]
        )
        _wait(
            lambda: worker.get_json("/api/racks/R0002")[0] == 200,
            30,
            "R0002 applied while degraded",
            worker,
        )
        assert _health(worker)[1]["status"] == "degraded"

        # the injected failures run out: the next tick succeeds and the worker is ok again
        def ok_again() -> Any:
            status, body = _health(worker)
            return body if status == 200 and body["status"] == "ok" else None

        body = _wait(ok_again, FAILURES * 0.3 + 30, "/healthz ok again", worker)
        assert body["degraded_tasks"] == {}
        _, text = http_get(worker.url + "/metrics")
        metrics = text.decode()
        assert _metric(metrics, "twin_background_failures_total", "checkpoint") == FAILURES
        assert _metric(metrics, "twin_background_degraded", "checkpoint") == 0.0
        log = worker.log_tail(200_000)
        # the cause once with its traceback, not once per failure
        assert log.count("background task checkpoint failed") == 1
        assert log.count("InjectedFailure: test-only") == 2  # its line and its traceback
        assert "background task checkpoint ok again" in log
    finally:
        worker.stop()
