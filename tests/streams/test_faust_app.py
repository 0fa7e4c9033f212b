"""finish_started runs a hand-started coroutine to its end exactly as a task would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from streams.faust_app import finish_started


def _started(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Start ``coro`` by hand as the fast path does: (done, its value or what it waits on)."""
    try:
        return False, coro.send(None)
    except StopIteration as stop:
        return True, stop.value


async def test_delivery_into_a_full_queue_finishes_after_room_is_made() -> None:
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    q.put_nowait(0)

    async def deliver() -> str:
        await q.put(1)
        await asyncio.sleep(0)  # a bare yield on the way
        return "delivered"

    coro = deliver()
    done, waiting_on = _started(coro)
    assert not done
    task = asyncio.ensure_future(finish_started(coro, waiting_on))
    await asyncio.sleep(0.01)
    assert not task.done()
    assert q.get_nowait() == 0
    assert await asyncio.wait_for(task, 1) == "delivered"
    assert q.get_nowait() == 1


async def test_cancelling_unwinds_the_delivery() -> None:
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
    q.put_nowait(0)
    unwound: list[str] = []

    async def deliver() -> None:
        try:
            await q.put(1)
        finally:
            unwound.append("finally")

    coro = deliver()
    _, waiting_on = _started(coro)
    task = asyncio.ensure_future(finish_started(coro, waiting_on))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == ["finally"] and q.qsize() == 1


async def test_errors_of_awaited_futures_reach_the_delivery() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def deliver() -> str:
        try:
            await fut
        except ValueError as exc:
            return f"saw {exc}"
        return "no error"

    coro = deliver()
    _, waiting_on = _started(coro)
    task = asyncio.ensure_future(finish_started(coro, waiting_on))
    fut.set_exception(ValueError("boom"))
    assert await task == "saw boom"


def test_a_delivery_that_never_waits_needs_no_task() -> None:
    async def deliver() -> int:
        return 7

    assert _started(deliver()) == (True, 7)


def test_exit_after_ends_a_process_that_cannot_stop() -> None:
    code = (
        "import time\n"
        "from streams.faust_app import exit_after\n"
        "exit_after(0.3, 'stuck stop')\n"
        "time.sleep(30)\n"
    )
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1 and time.monotonic() - t0 < 15
    assert "stuck stop: exiting after 0 s" in proc.stderr


def test_a_cancelled_watchdog_does_nothing() -> None:
    code = (
        "import time\n"
        "from streams.faust_app import exit_after\n"
        "exit_after(0.3, 'stuck stop').cancel()\n"
        "time.sleep(0.6)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0
