"""A Faust App whose consumer hands each fetched message to its stream without four tasks.

Faust's fetch loop (``Consumer._drain_messages``) delivers every message through
``await self.wait_first(callback(message), self.suspend_flow.wait())``, and ``wait_first``
wraps both coroutines and the service's ``stopped``/``crashed`` events in tasks, waits on all
four and cancels three: about 100 us a message, half of what a minimal agent costs
(``bench/bench_pipeline.py``; 5,300 -> 11,500 messages/s with the fast path on this 2-core
machine). At the campus rate of 1,250 frames a second that alone was a fifth of a core.

The fast path awaits the delivery directly while flow is not suspended. Delivery normally
finishes at once (the stream's buffer has room); when the buffer is full it waits for the
agent to take events, which it keeps doing during a rebalance, and the fetch task is
cancelled as before on stop. Anything else goes through Faust's ``wait_first`` unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
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
            coros[1].close()
            await coros[0]
            return None  # _drain_messages ignores the result
        return await super().wait_first(*coros, timeout=timeout)


_EVENT_WAIT_CODE = asyncio.Event.wait.__code__


class FastDeliveryTransport(aiokafka_driver.Transport):
    """The aiokafka transport with :class:`FastDeliveryConsumer`."""

    Consumer = FastDeliveryConsumer


class TwinFaustApp(faust.App):
    """``faust.App`` that consumes through :class:`FastDeliveryTransport`."""

    def _new_transport(self) -> TransportT:
        return FastDeliveryTransport(self.conf.broker_consumer, self)
