"""Create the twin's topics with the right partition counts before anything produces.

Brokers auto-create unknown topics with their own default partition count (tansu: 4), which
would break Faust's co-partitioning of source and changelog topics; so we create them first.

The partition count of the keyed topics is the site file's ``[site] kafka_partitions`` unless
``--partitions`` (TWIN_PARTITIONS, the config file) says otherwise. A worker refuses topics
(or changelogs of its app id) that already exist with another count: it would route keys to
other partitions than the data's (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from streams.kafka_security import KafkaSecurity, check_access, kafka_client_kwargs
from streams.settings import Topics
from twin.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

#: Where a partition-count mismatch is explained (the migration of an existing deployment).
MIGRATION_DOC = "docs/scaling.md"


def resolve_partitions(partitions: int | None, site_path: Path | None = None) -> int:
    """``partitions`` if given, else the site file's ``[site] kafka_partitions`` (the shipped
    Borlänge file's when ``site_path`` is None). Raises SiteError for a bad site file."""
    if partitions is not None:
        return partitions
    from twin.site import load_site

    return load_site(site_path).info.kafka_partitions


def keyed_topics(topics: Topics) -> tuple[str, ...]:
    """Topics keyed by rack or unit, all with the site's partition count (co-partitioned)."""
    t = topics
    return (t.gpu, t.thermal, t.power, t.residuals, t.alert_commands, t.state)


def is_changelog(name: str, app_id: str) -> bool:
    """Faust names a table's changelog ``{app_id}-{table}-changelog``."""
    return name.startswith(f"{app_id}-") and name.endswith("-changelog")


def partition_mismatch(counts: dict[str, int], expected: int) -> str | None:
    """One line naming the first topic whose partition count is not ``expected``, or None."""
    wrong = sorted(name for name, n in counts.items() if n != expected)
    if not wrong:
        return None
    first = wrong[0]
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    return (
        f"topic {first} has {counts[first]} partitions{more}, but this worker is configured "
        f"for {expected} (--partitions, TWIN_PARTITIONS, the config file or the site file's "
        f"[site] kafka_partitions): keys would land in other partitions than their data; "
        f"configure {counts[first]} or migrate as {MIGRATION_DOC} describes"
    )


def topic_specs(topics: Topics, partitions: int, replication: int = 1) -> list[NewTopic]:
    """The twin's topics: keyed telemetry co-partitioned, twin.state compacted."""
    r = replication
    compact = {topics.state: {"cleanup.policy": "compact"}}
    specs = [
        NewTopic(name, partitions, r, topic_configs=compact.get(name, {}))
        for name in keyed_topics(topics)
    ]
    single = (topics.ingest, topics.dlq, topics.faults, topics.kpi, topics.alerts)
    specs += [NewTopic(n, 1, r) for n in single]
    return specs


async def ensure_topics(
    bootstrap: str,
    topics: Topics,
    partitions: int | None,
    *,
    site_path: Path | None = None,
    replication: int = 1,
    timeout_s: float = 30.0,
    security: KafkaSecurity | None = None,
    check_app_id: str | None = None,
) -> None:
    """Create missing topics; existing ones are left as they are.

    partitions: of the keyed topics; None takes the site file's (:func:`resolve_partitions`).

    check_app_id: a worker's app id; its existing keyed topics and its app's changelogs must
    then have ``partitions`` partitions, or ConfigError says which does not, in one line.
    A broker that refuses ``security``'s TLS or credentials raises BrokerError at once.
    """
    partitions = resolve_partitions(partitions, site_path)
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
        if check_app_id is not None:
            names = [n for n in existing if is_changelog(n, check_app_id)]
            names += [n for n in keyed_topics(topics) if n in existing]
            # (no names is no request: an empty list would describe every topic)
            described = await admin.describe_topics(names) if names else []
            counts = {t["topic"]: len(t["partitions"]) for t in described if t["topic"] in names}
            problem = partition_mismatch(counts, partitions)
            if problem is not None:
                raise ConfigError(problem)
    finally:
        await admin.close()
