"""Batch delivery: the messages of a Faust consumer's fetch go to a handler a batch at a time.

Faust hands every fetched message to its stream one by one: a ``wait_first`` of four tasks
(``Consumer._drain_messages``), the conductor, the channel, an event, the stream's queue,
then an ack per event. That costs tens of microseconds a message: at the campus with
per-host GPU frames (18 a rack and second, 22,500 a second) several cores, however cheap
the twin's own work on a frame is (bench/bench_pipeline.py --gpus-per-frame 4).

Here the consumer's fetch loop keeps Faust's offset bookkeeping (read offsets, gaps, acks,
commits every ``broker_commit_every`` acks and on Faust's commit timer), but the messages
of a topic that has a batch handler are collected for the whole fetch (up to ``batch_max``)
and handed over as one list; when the handler returns, each message is acked, so its
offset is committed only after the state it fed was updated, as with the stream path.
Nothing waits on a stream's buffer, so nothing can hang behind a full one. Other topics
go through Faust's own delivery unchanged. The topic's agent still exists: it is what
makes Faust subscribe to the topic, assign its partitions and co-partition its tables.

A rebalance that revokes a partition while a batch of it is being handled commits only
what was acked before; the new owner reads the rest again (state is keyed by reading time,
so a frame applied twice changes nothing, as after any restart).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from faust.transport.drivers import aiokafka as aiokafka_driver
from mode import Service

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[Any]], Awaitable[None]]


class BatchDeliveryConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer whose fetch loop hands some topics' messages to batch
    handlers (``app.batch_handlers``: topic name -> handler; ``app.batch_max``)."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - Faust's loop
        handlers: dict[str, BatchHandler] = getattr(self.app, "batch_handlers", {})
        batch_max: int = getattr(self.app, "batch_max", 4096)
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        pending: dict[str, list[Any]] = {}
        n_pending = 0

        async def flush() -> None:
            nonlocal n_pending
            batches = list(pending.items())
            pending.clear()
            n_pending = 0
            for topic, messages in batches:
                await handlers[topic](messages)
                for message in messages:
                    self.ack(message)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                since_yield = 0
                async for tp, message in ait:
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read before (Faust drops these too)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    handler = handlers.get(tp.topic)
                    if handler is not None:
                        pending.setdefault(tp.topic, []).append(message)
                        n_pending += 1
                        set_read_offset(tp, offset)
                        if n_pending >= batch_max:
                            await flush()
                        continue
                    since_yield += 1
                    if since_yield > 100:
                        await asyncio.sleep(0)
                        since_yield = 0
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                if n_pending:
                    await flush()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("broker stopped the consumer while stopping")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class BatchDeliveryTransport(aiokafka_driver.Transport):
    """The aiokafka transport with :class:`BatchDeliveryConsumer`."""

    Consumer = BatchDeliveryConsumer
