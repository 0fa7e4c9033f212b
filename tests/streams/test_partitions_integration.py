"""On a real broker: topics get the site's partition count, and a worker refuses topics or
changelogs that exist with another count (it would look for keys in the wrong partitions).

Before this check a worker started with --partitions 4 over 2-partition topics ran without a
word: one worker alone consumed everything, but it wrote its table checkpoints to changelog
partitions computed for 4, which a restarted or second worker recovers for other racks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.brokers import Broker
from streams.settings import Topics
from streams.topics_admin import MIGRATION_DOC, ensure_topics, keyed_topics
from twin.errors import ConfigError

pytestmark = [pytest.mark.integration]


async def _counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()


async def _create(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        for _ in range(100):  # Apache Kafka lists a new topic after its metadata propagates
            if name in await admin.list_topics():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{name} not listed after creation")
    finally:
        await admin.close()


def test_worker_refuses_topics_of_another_count(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    asyncio.run(ensure_topics(broker.bootstrap, Topics(topic_prefix), 2))
    argv = [
        sys.executable, "-m", "streams", "worker", "--broker", broker.url,
        "--topic-prefix", topic_prefix, "--app-id", f"{topic_prefix}-twin", "--partitions", "3",
        "--state-dir", str(tmp_path / "state"), "--data-dir", str(tmp_path / "history"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"twin worker: error: topic {topic_prefix}")
    assert "has 2 partitions (and 5 more), but this worker is configured for 3" in line
    assert MIGRATION_DOC in line


def test_site_count_creates_topics_and_changelogs_are_checked(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    site = tmp_path / "site.toml"
    site.write_text("[site]\nkafka_partitions = 3\n")
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, None, site_path=site))
    counts = asyncio.run(_counts(broker.bootstrap, [*keyed_topics(topics), topics.ingest]))
    assert counts == {**dict.fromkeys(keyed_topics(topics), 3), topics.ingest: 1}

    app_id = f"{topic_prefix}-twin"
    changelog = f"{app_id}-rack-state-changelog"
    asyncio.run(_create(broker.bootstrap, changelog, 2))
    with pytest.raises(ConfigError, match=f"topic {changelog} has 2 partitions, but"):
        asyncio.run(ensure_topics(broker.bootstrap, topics, 3, check_app_id=app_id))
    # another app's changelogs are not this worker's concern; the keyed topics match
    asyncio.run(ensure_topics(broker.bootstrap, topics, 3, check_app_id=f"{topic_prefix}-other"))
