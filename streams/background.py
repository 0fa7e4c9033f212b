"""Background tasks that fail are logged, counted, shown as degraded and retried.

Faust runs a timer body inside one task; an exception escaping it reaches mode's
``Service._execute_task``, which crashes the whole app (the worker exits). A task started
with ``app.task`` ends the same way. So every timer body is wrapped in :func:`guarded` (the
exception is caught, the next tick retries) and every long-running task in
:func:`run_restarting` (restarted with exponential backoff). :class:`BackgroundHealth` keeps,
per task name, the failure count (``/metrics``), the last error and whether the task is
degraded (``/healthz``).

A task is degraded while its last run failed and for ``DEGRADED_INTERVALS`` of its intervals
after its last failure, so a task that fails every other tick does not look healthy between
failures.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: A task is shown degraded for this many of its intervals after its last failure [-].
DEGRADED_INTERVALS = 3
#: Seconds between two log lines of a task failing again with an error already logged.
REPEAT_LOG_EVERY_S = 60.0
#: Distinct errors remembered per task (beyond: the oldest is forgotten, logged again).
MAX_SIGNATURES = 16
#: Test only: ``<task>:<count>[,<task>:<count>]`` makes the named guarded tasks raise that
#: many times before running (tests/streams/test_background_integration.py). Not a TWIN_*
#: setting: nothing but tests sets it.
TEST_FAIL_TASK_ENV = "DC_TWIN_TEST_FAIL_TASK"

Body = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class TaskHealth:
    """What one background task did lately."""

    interval_s: float
    failures: int = 0
    runs: int = 0
    #: ``"<type>: <message>"`` of the last failure
    last_error: str | None = None
    #: wall time of the last failure [s since epoch]
    last_failure_s: float | None = None
    #: monotonic time of the last failure [s]
    last_failure_mono: float | None = None
    #: True while the latest run failed
    failing: bool = False
    seen: list[str] = field(default_factory=list)
    last_log_mono: float = float("-inf")
    suppressed: int = 0


@dataclass
class BackgroundHealth:
    """Failures of a worker's background tasks, by task name (a bounded label set)."""

    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    tasks: dict[str, TaskHealth] = field(default_factory=dict)
    #: test only (TEST_FAIL_TASK_ENV): task -> failures still to inject
    inject: dict[str, int] = field(default_factory=dict)

    def register(self, name: str, interval_s: float) -> None:
        """Declare a task (its /metrics series exist from the start, at 0)."""
        if name not in self.tasks:
            self.tasks[name] = TaskHealth(interval_s=max(float(interval_s), 0.0))

    def failed(self, name: str, exc: BaseException) -> None:
        """Count and log one failure of ``name`` (registered on first use)."""
        self.register(name, 1.0)
        t = self.tasks[name]
        now = self.clock()
        t.failures += 1
        t.failing = True
        t.last_error = f"{type(exc).__name__}: {exc}"[:500]
        t.last_failure_s = self.wall()
        t.last_failure_mono = now
        sig = t.last_error[:200]
        if sig not in t.seen:
            # a new cause: the whole traceback, once
            t.seen.append(sig)
            del t.seen[:-MAX_SIGNATURES]
            t.last_log_mono = now
            log.error(
                "background task %s failed (retried) failures=%d: %s",
                name,
                t.failures,
                t.last_error,
                exc_info=exc,
            )
        elif now - t.last_log_mono >= REPEAT_LOG_EVERY_S:
            t.last_log_mono = now
            log.error(
                "background task %s still failing failures=%d (%d not logged): %s",
                name,
                t.failures,
                t.suppressed,
                t.last_error,
            )
            t.suppressed = 0
        else:
            t.suppressed += 1

    def succeeded(self, name: str) -> None:
        """Note one run of ``name`` that ended without an exception."""
        self.register(name, 1.0)
        t = self.tasks[name]
        t.runs += 1
        if t.failing:
            log.warning("background task %s ok again after %d failures", name, t.failures)
            t.failing = False

    def degraded(self) -> dict[str, dict[str, object]]:
        """Tasks degraded now: name -> failures, last error, last failure [s since epoch]."""
        now = self.clock()
        out: dict[str, dict[str, object]] = {}
        for name, t in sorted(self.tasks.items()):
            if t.last_failure_mono is None:
                continue
            recent = now - t.last_failure_mono < DEGRADED_INTERVALS * t.interval_s
            if t.failing or recent:
                out[name] = {
                    "failures": t.failures,
                    "last_error": t.last_error,
                    "last_failure_s": t.last_failure_s,
                    "failing": t.failing,
                }
        return out

    def take_injected(self, name: str) -> bool:
        """Test only: True (and one fewer left) when a failure of ``name`` is to be injected."""
        left = self.inject.get(name, 0)
        if left <= 0:
            return False
        self.inject[name] = left - 1
        return True


def parse_fail_plan(spec: str) -> dict[str, int]:
    """``"checkpoint:3,publish_state:1"`` -> {"checkpoint": 3, "publish_state": 1}.

    Malformed items are ignored (it is a test hook, never a setting).
    """
    plan: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.rpartition(":")
        if name and count.isdigit():
            plan[name] = int(count)
    return plan


class InjectedFailure(RuntimeError):
    """Test only: a failure injected through TEST_FAIL_TASK_ENV."""


def guarded(name: str, health: BackgroundHealth, interval_s: float) -> Callable[[Body], Body]:
    """Decorator for an async timer body: any Exception (not cancellation) is counted and
    logged by ``health`` and swallowed, so the timer's next tick runs it again.

    Put it below ``@app.timer``; the wrapper keeps the body's name (Faust names timers by it).
    """
    health.register(name, interval_s)

    def wrap(fun: Body) -> Body:
        @functools.wraps(fun)
        async def run() -> None:
            try:
                if health.take_injected(name):
                    raise InjectedFailure(f"test-only failure of {name} ({TEST_FAIL_TASK_ENV})")
                await fun()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                health.failed(name, exc)
            else:
                health.succeeded(name)

        return run

    return wrap


async def run_restarting(
    name: str,
    health: BackgroundHealth,
    start: Body,
    *,
    backoff_s: tuple[float, float] = (1.0, 30.0),
    healthy_after_s: float = 10.0,
) -> None:
    """Run the long-lived coroutine ``start()`` until cancelled, restarting it after it
    raises or returns, with exponential backoff from ``backoff_s[0]`` to ``backoff_s[1]`` [s].

    A run that lasts ``healthy_after_s`` [s] counts as a success (degraded no more, backoff
    reset). Cancellation cancels the running coroutine and ends this.
    """
    first, most = backoff_s
    health.register(name, max(first, healthy_after_s / DEGRADED_INTERVALS))
    delay = first
    while True:
        task = asyncio.ensure_future(_injected_then(name, health, start))
        try:
            done, _ = await asyncio.wait({task}, timeout=healthy_after_s)
            if not done:
                health.succeeded(name)
                delay = first
                await task
            else:
                task.result()
            error: BaseException = RuntimeError(f"{name} ended on its own")
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        except Exception as exc:
            error = exc
        health.failed(name, error)
        await asyncio.sleep(delay)
        delay = min(delay * 2, most)


async def _injected_then(name: str, health: BackgroundHealth, start: Body) -> None:
    if health.take_injected(name):
        raise InjectedFailure(f"test-only failure of {name} ({TEST_FAIL_TASK_ENV})")
    await start()
