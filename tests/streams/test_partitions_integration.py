"""On a real broker: topics get the site's partition count, and a worker refuses topics or
changelogs that exist with another count (it would look for keys in the wrong partitions).

Before this check a worker started with --partitions 4 over 2-partition topics ran without a
word: one worker alone consumed everything, but it wrote its table checkpoints to changelog
partitions computed for 4, which a restarted or second worker recovers for other racks (or,
for partitions 2 and 3, not at all).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.writer import write_file
from streams.brokers import Broker
from streams.settings import Topics
from streams.topics_admin import MIGRATION_DOC, ensure_topics, keyed_topics
from tests.streams.workerproc import WorkerProcess
from twin.errors import ConfigError

pytestmark = [pytest.mark.integration]
START_MS = 1_789_999_200_000  # 2026-09-21T14:00Z: older than the worker's age limit


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


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


def _twin(*argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}  # flags only
    cmd = [sys.executable, "-m", "streams", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)


def _healthz(worker: WorkerProcess) -> dict[str, int]:
    status, doc = worker.get_json("/healthz")
    return doc if status == 200 and isinstance(doc, dict) else {}


@pytest.mark.slow
def test_migration_to_more_partitions_by_prefix_and_replay(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    """docs/scaling.md at small scale: a deployment on 2 partitions moves to 4 with a new
    topic prefix and app id, and its history replayed from the Parquet store."""
    racks, gpus, steps = 4, 8, 20
    history = tmp_path / "history"
    table = synth.gpu_table(racks, gpus, steps, start_ms=START_MS, seed=3)
    write_file(default_tables()["gpu"], table, date_dir(history, "gpu", day_of_ms(START_MS)))
    old, new = Topics(f"{topic_prefix}-a."), Topics(f"{topic_prefix}-b.")
    asyncio.run(ensure_topics(broker.bootstrap, old, 2))

    # the old topics, configured for 4: refused in one line (exit 1) naming the doc
    done = _twin(
        "worker", "--broker", broker.url, "--topic-prefix", old.prefix, "--partitions", "4",
        "--state-dir", str(tmp_path / "refused"), "--data-dir", str(history),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"twin worker: error: topic {old.prefix}")
    assert "has 2 partitions (and 5 more), but this worker is configured for 4" in line
    assert MIGRATION_DOC in line

    # the documented path: new prefix and app id, the worker creates the topics, then replay
    worker = WorkerProcess(
        broker.url, new.prefix, tmp_path / "new", app_id=f"{topic_prefix}-b", partitions=4
    )
    try:
        worker.wait_healthy()
        counts = asyncio.run(_counts(broker.bootstrap, list(keyed_topics(new))))
        assert set(counts.values()) == {4}, counts
        t0 = time.monotonic()
        span = ("--from", iso(START_MS), "--to", iso(START_MS + steps * 1000))
        done = _twin(
            "replay", *span, "--broker", broker.url, "--data-dir", str(history),
            "--topic-prefix", new.prefix,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == f"replayed {racks * steps} messages"
        deadline = time.monotonic() + 60
        while _healthz(worker).get("gpu_samples_in", 0) < racks * gpus * steps:
            assert time.monotonic() < deadline, f"not all replayed: {worker.log_tail()}"
            time.sleep(0.3)
        print(f"replay and apply: {time.monotonic() - t0:.1f} s")
        assert _healthz(worker)["racks_known"] == racks
        newest = START_MS + (steps - 1) * 1000
        for rack in sorted(set(table.column("rack").to_pylist())):
            status, doc = worker.get_json(f"/api/racks/{rack}")
            assert status == 200 and max(g["ts_ms"] for g in doc["gpus"]) == newest
    finally:
        worker.stop()


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
