"""Background task guard: failures are counted, logged, shown degraded and retried."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.background import (
    DEGRADED_INTERVALS,
    BackgroundHealth,
    InjectedFailure,
    guarded,
    parse_fail_plan,
    run_restarting,
)
from streams.metrics import render_metrics
from streams.runtime import TwinRuntime


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _series(text: bytes, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name:
                out[s.labels["task"]] = s.value
    return out


def test_a_body_that_raises_twice_then_succeeds_is_counted_degraded_then_ok(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    health = BackgroundHealth(clock=clock)
    calls = {"n": 0}

    @guarded("checkpoint", health, 1.0)
    async def body() -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("disk full")

    async def ticks(n: int) -> None:
        for _ in range(n):
            await body()  # never raises: the timer goes on
            clock.t += 1.0

    assert health.degraded() == {}
    with caplog.at_level(logging.ERROR, logger="streams.background"):
        asyncio.run(ticks(2))
    assert health.tasks["checkpoint"].failures == 2
    bad = health.degraded()["checkpoint"]
    assert bad["failures"] == 2 and bad["last_error"] == "OSError: disk full" and bad["failing"]
    # the cause is logged once with its traceback, the repeat within a minute is not
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "disk full" in tracebacks[0].getMessage()
    asyncio.run(ticks(1))  # succeeds: still degraded for a few intervals after the failure
    assert calls["n"] == 3 and not health.tasks["checkpoint"].failing
    assert "checkpoint" in health.degraded()
    clock.t += DEGRADED_INTERVALS * 1.0
    assert health.degraded() == {}
    assert health.tasks["checkpoint"].failures == 2 and health.tasks["checkpoint"].runs == 1


def test_a_new_cause_gets_its_own_traceback(caplog: pytest.LogCaptureFixture) -> None:
    health = BackgroundHealth(clock=FakeClock())
    errors = [ValueError("a"), ValueError("a"), KeyError("b"), ValueError("a")]

    @guarded("publish_state", health, 1.0)
    async def body() -> None:
        raise errors.pop(0)

    async def run() -> None:
        for _ in range(4):
            await body()

    with caplog.at_level(logging.ERROR, logger="streams.background"):
        asyncio.run(run())
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["a", "'b'"]
    assert health.tasks["publish_state"].failures == 4


def test_cancellation_is_not_a_failure() -> None:
    health = BackgroundHealth()

    @guarded("sync_tables", health, 0.5)
    async def body() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(body())
    assert health.tasks["sync_tables"].failures == 0


def test_injected_failures_then_the_body_runs() -> None:
    health = BackgroundHealth(inject=parse_fail_plan("checkpoint:2,bad,x:y"))
    assert health.inject == {"checkpoint": 2}
    ran = []

    @guarded("checkpoint", health, 1.0)
    async def body() -> None:
        ran.append(1)

    async def run() -> None:
        for _ in range(3):
            await body()

    asyncio.run(run())
    assert ran == [1] and health.tasks["checkpoint"].failures == 2
    assert InjectedFailure.__name__ in str(health.tasks["checkpoint"].last_error)


def test_metrics_have_every_registered_task_and_its_failures() -> None:
    rt = TwinRuntime(partitions=1)
    health = rt.counters.background
    health.register("checkpoint", 1.0)
    health.register("publish_state", 1.0)
    health.failed("checkpoint", RuntimeError("boom"))
    text = render_metrics(rt, {})
    assert _series(text, "twin_background_failures_total") == {
        "checkpoint": 1.0,
        "publish_state": 0.0,
    }
    assert _series(text, "twin_background_degraded") == {"checkpoint": 1.0, "publish_state": 0.0}


def test_a_long_task_that_dies_is_restarted_with_backoff_and_then_counts_as_healthy() -> None:
    health = BackgroundHealth()
    starts: list[float] = []
    third = asyncio.Event()

    async def follower() -> None:
        starts.append(asyncio.get_running_loop().time())
        if len(starts) == 3:
            third.set()
        if len(starts) <= 2:
            raise ConnectionError("broker down")
        await asyncio.sleep(3600)

    async def run() -> dict[str, dict[str, object]]:
        task = asyncio.ensure_future(
            run_restarting(
                "state_view", health, follower, backoff_s=(0.05, 1.0), healthy_after_s=0.2
            )
        )
        await third.wait()
        during = health.degraded()
        await asyncio.sleep(0.3)  # the third run lives past healthy_after_s
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return during

    during = asyncio.run(run())
    assert during["state_view"]["failures"] == 2
    assert during["state_view"]["last_error"] == "ConnectionError: broker down"
    assert starts[1] - starts[0] >= 0.05 and starts[2] - starts[1] >= 0.1  # backoff doubled
    t = health.tasks["state_view"]
    assert t.failures == 2 and not t.failing and t.runs == 1
