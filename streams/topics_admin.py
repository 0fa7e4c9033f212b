"""Create the twin's topics with the right partition counts before anything produces.

Brokers auto-create unknown topics with their own default partition count (tansu: 4), which
would break Faust's co-partitioning of source and changelog topics; so we create them first.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams.kafka_security import KafkaSecurity, check_access, kafka_client_kwargs
from streams.settings import Topics
from twin.errors import BrokerError

log = logging.getLogger(__name__)


def topic_specs(topics: Topics, partitions: int, replication: int = 1) -> list[NewTopic]:
    """The twin's topics: keyed telemetry co-partitioned, twin.state compacted."""
    r = replication
    keyed = (topics.gpu, topics.thermal, topics.power, topics.residuals, topics.alert_commands)
    specs = [NewTopic(name, partitions, r) for name in keyed]
    specs.append(NewTopic(topics.state, partitions, r, topic_configs={"cleanup.policy": "compact"}))
    single = (topics.ingest, topics.dlq, topics.faults, topics.kpi, topics.alerts)
    specs += [NewTopic(n, 1, r) for n in single]
    return specs


async def ensure_topics(
    bootstrap: str,
    topics: Topics,
    partitions: int,
    *,
    replication: int = 1,
    timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
) -> None:
    """Create missing topics; existing ones are left as they are.

    A broker that refuses ``security``'s TLS or credentials raises BrokerError at once.
    """
    await check_access(bootstrap, security)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kafka_client_kwargs(security)
    )
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        specs = topic_specs(topics, partitions, replication)
        missing = [s for s in specs if s.name not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                raise BrokerError(f"cannot create topics on {bootstrap}: {exc}") from None
            log.info("created topics %s", [s.name for s in missing])
    finally:
        await admin.close()
