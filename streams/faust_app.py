"""A Faust App whose consumer hands each fetched message to its stream without four tasks.

Faust's fetch loop (``Consumer._drain_messages``) delivers every message through
``await self.wait_first(callback(message), self.suspend_flow.wait())``, and ``wait_first``
wraps both coroutines and the service's ``stopped``/``crashed`` events in tasks, waits on all
four and cancels three: about 100 us a message, half of what a minimal agent costs
(5,300 -> 11,500 messages/s with the fast path on this 2-core machine). At the campus rate
of 1,250 frames a second that alone was a fifth of a core.

The fast path runs the delivery by hand until it first has to wait. Usually it never does
(the stream's buffer has room) and no task is made. When it does wait (the buffer is full,
the agent is behind), the rest of the delivery becomes a task raced, exactly as Faust does,
against flow suspension (rebalance) and the service stopping, so neither can hang behind a
full buffer.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TransportT


class FastDeliveryConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with the per-message delivery fast path."""

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109
        """``Service.wait_first``, short-circuited for the fetch loop's delivery call."""
        if (
            len(coros) == 2
            and timeout is None
            and inspect.iscoroutine(coros[0])
            and inspect.iscoroutine(coros[1])
            and coros[1].cr_code is _EVENT_WAIT_CODE
            and not self.suspend_flow.is_set()
        ):
            delivery, flow_wait = coros
            try:
                waiting_on = delivery.send(None)
            except StopIteration:
                flow_wait.close()
                return None  # delivered without waiting; _drain_messages ignores the result
            rest = asyncio.ensure_future(finish_started(delivery, waiting_on))
            return await super().wait_first(rest, flow_wait)
        return await super().wait_first(*coros, timeout=timeout)


async def finish_started(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Any:
    """Run ``coro`` to its end as a task would, after it was started by hand with
    ``send(None)`` and yielded ``waiting_on`` (a future it awaits, or None: a bare yield).

    Cancelling this cancels the future ``coro`` waits on, so it unwinds as a cancelled task.
    """
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # What Task.__step does with a yielded future: take it over from coro.
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except asyncio.CancelledError:
            if waiting_on is None or not waiting_on.cancelled():
                try:
                    waiting_on = coro.throw(asyncio.CancelledError())
                except StopIteration as stop:
                    return stop.value
                continue
        except Exception:
            pass  # the future failed: coro gets the same error from result() when resumed
        try:
            waiting_on = coro.send(None)
        except StopIteration as stop:
            return stop.value


_EVENT_WAIT_CODE = asyncio.Event.wait.__code__


class FastDeliveryTransport(aiokafka_driver.Transport):
    """The aiokafka transport with :class:`FastDeliveryConsumer`."""

    Consumer = FastDeliveryConsumer


class TwinFaustApp(faust.App):
    """``faust.App`` that consumes through :class:`FastDeliveryTransport` when
    ``TWIN_FAST_DELIVERY=1`` is in the environment, else through Faust's own transport.

    Opt-in: in 2 of 4 backlog benchmarks of 30,000-40,000 frames with it, a worker stopped
    taking frames near the end of the backlog or could not finish its stop (a producer
    flush that never returned), while 2 runs without it were clean; the cause is not found.
    """

    #: "stream": Faust's delivery; "batch": streams/faust_batch.py, with ``batch_handlers``
    #: (topic name -> async handler of a list of messages) and ``batch_max``.
    delivery: str = "stream"
    batch_max: int = 4096
    batch_handlers: dict[str, Callable[[list[Any]], Awaitable[None]]]

    def _new_transport(self) -> TransportT:
        if self.delivery == "batch":
            from streams.faust_batch import BatchDeliveryTransport

            return BatchDeliveryTransport(self.conf.broker_consumer, self)
        if os.environ.get("TWIN_FAST_DELIVERY", "0") == "1":
            return FastDeliveryTransport(self.conf.broker_consumer, self)
        return super()._new_transport()


def exit_after(seconds: float, reason: str) -> threading.Timer:
    """Exit the process with status 1 after ``seconds`` unless the returned timer is cancelled.

    A watchdog for shutdowns: a graceful stop that cannot finish (a producer flush that
    waits on an unreachable broker, a stuck commit) must not keep a worker alive forever.
    Exiting loses nothing a SIGKILL would not: offsets are committed only after processing,
    and state is restored from the changelogs.
    """

    def fire() -> None:
        logging.shutdown()
        # written directly: the process is about to end without flushing anything
        sys.stderr.write(f"ERROR {reason}: exiting after {seconds:.0f} s\n")
        sys.stderr.flush()
        os._exit(1)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


class TwinWorkerRunner(faust.Worker):
    """``faust.Worker`` whose shutdown on SIGTERM/SIGINT is bounded (:func:`exit_after`)."""

    #: Seconds a signalled stop may take before the process exits anyway.
    shutdown_timeout_s: float = 30.0

    def _schedule_shutdown(self, signal: Any) -> None:
        first = not self._signal_stop_time
        super()._schedule_shutdown(signal)
        if first:
            exit_after(self.shutdown_timeout_s, f"graceful stop on {signal!r} did not finish")
