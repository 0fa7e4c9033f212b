"""Follow twin.state from the beginning on every worker, so any worker's API shows every rack.

Each worker owns some partitions of the telemetry and publishes the state of what it owns to
the compacted twin.state topic. A plain consumer without a group (all partitions assigned,
offsets never committed) gives every worker the whole picture; Faust GlobalTables are not
used because not all workers receive all updates with them (docs/sources.md E1).
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.kafka_security import KafkaSecurity, kafka_client_kwargs
from streams.runtime import TwinRuntime

log = logging.getLogger(__name__)


async def follow_state(
    bootstrap: str,
    topic: str,
    runtime: TwinRuntime,
    stop: asyncio.Event,
    security: KafkaSecurity | None = None,
) -> None:
    """Read twin.state into ``runtime.view`` until ``stop`` is set."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka_client_kwargs(security),
    )
    await consumer.start()
    try:
        parts: set[int] | None = None
        while not stop.is_set() and not parts:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.5)
        assert parts is not None
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            except KafkaError as exc:
                log.warning("twin.state view: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for rec in records:
                    if rec.key is None:
                        continue
                    entity = rec.key.decode("utf-8", "replace")
                    if entity.startswith("rack/") and entity[5:] in runtime.racks:
                        # This worker holds the rack live (most likely its own publication):
                        # decoding the JSON would be wasted, the live state wins anyway.
                        continue
                    try:
                        doc = json.loads(rec.value) if rec.value is not None else None
                    except json.JSONDecodeError:
                        continue
                    runtime.absorb_view(entity, doc)
    finally:
        await consumer.stop()
