"""Produce and read helpers of the storage integration tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


def recent_ms(n_steps: int, dt_ms: int = 1000) -> int:
    """A start instant [ms] whose ``n_steps`` samples all lie within the live window."""
    return time.time_ns() // 1_000_000 - (n_steps + 5) * dt_ms


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, messages: Sequence[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futs = [await producer.send(topic, value=v, key=k) for k, v in messages]
        for f in futs:
            await f
    finally:
        await producer.stop()
