"""Broker faults with the whole twin running: a partition leader killed in a 3-node Apache
Kafka cluster, and a single broker down for a minute. The simulator, the worker and the
sink run as subprocesses throughout and none is restarted; the store must then hold every
published sample exactly once and the worker's state must have carried on.

Seconds to recover (fault until every rack has a sample newer than the fault, in the
worker's API and in the Parquet store) are printed and, with TWIN_FAULT_FIGURES=path, appended
as JSON lines to that file; they are figures, not assertions.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from streams.brokers import start_broker
from streams.brokers.apache import ApacheKafkaBroker
from streams.brokers.cluster import KafkaCluster
from streams.producer import FramePublisher
from streams.settings import Topics
from tests.streams.faultrig import Twin

pytestmark = pytest.mark.integration

PARTITIONS = 8  # the worker's and simulator's default
DOWN_S = float(os.environ.get("TWIN_FAULT_DOWN_S", "60"))  # the "down for 60 s"


def _report(fault: str, figures: dict) -> None:
    line = json.dumps({"fault": fault, **figures})
    print(f"\nbroker-fault figures: {line}")
    path = os.environ.get("TWIN_FAULT_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Leader node id of each partition of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for p in desc["partitions"]}


def _partition_of(key: str) -> int:
    """The partition aiokafka's producer picks for ``key`` (murmur2, as Java's client)."""
    parts = list(range(PARTITIONS))
    return int(DefaultPartitioner()(key.encode(), parts, parts))


@pytest.fixture(scope="module")
def cluster(apache_kafka_required: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    c = KafkaCluster(nodes=3, state_dir=tmp_path_factory.mktemp("cluster"), heap="384m")
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_partition_leader_killed_and_back(
    cluster: KafkaCluster, topic_prefix: str, tmp_path: Path
) -> None:
    twin = Twin(cluster.url, topic_prefix, tmp_path, racks=4, replication=3)
    try:
        twin.start()
        rack = twin.rack_ids[0]
        twin.wait_until(
            lambda: twin.store_latest_ms(rack) > 0 and twin.model_updates(rack) > 0,
            120,
            "first samples in the store and a first model update",
        )
        time.sleep(5)  # steady stream
        # The same measure without a fault: the pipeline's own delay (1 s steps, 1 s flush).
        baseline = twin.recovery_after(time.monotonic(), now_ms(), timeout_s=60)
        updates_before = twin.model_updates(rack)
        leaders = asyncio.run(_leaders(cluster.bootstrap, Topics(topic_prefix).gpu))
        victim = leaders[_partition_of(rack)]
        t_mono, t_ms = time.monotonic(), now_ms()
        cluster.kill(victim)  # SIGKILL: no controlled shutdown, no leader handover
        killed = twin.recovery_after(t_mono, t_ms, timeout_s=120)
        updates_during = twin.model_updates(rack)
        time.sleep(5)  # run on two nodes for a while
        t_restart = time.monotonic()
        cluster.restart(victim)
        # From the moment the node answers again: leadership moves back to it (preferred
        # leader election every 5 s), which clients must follow once more.
        t_back_mono, t_back_ms = time.monotonic(), now_ms()
        restart_s = round(t_back_mono - t_restart, 1)
        back = twin.recovery_after(t_back_mono, t_back_ms, timeout_s=120)
        time.sleep(5)
        twin.assert_alive()
        gpu_frames = twin.stop_sim()
        exact = twin.assert_store_exact(gpu_frames)
        # The worker carried on: it holds the last published step of every rack and its
        # models kept learning through the fault.
        last_ms = twin.store_rows().column("ts_ms").to_numpy().max()
        for r in twin.rack_ids:
            twin.wait_until(
                lambda r=r: twin.worker_latest_ms(r) == last_ms, 60, f"worker at the end on {r}"
            )
        updates_after = twin.model_updates(rack)
        assert updates_before < updates_during < updates_after, (
            updates_before,
            updates_during,
            updates_after,
        )
        twin.assert_alive_but_sim_done()
        _report(
            "partition leader SIGKILLed (3-node cluster)",
            {
                "node": victim,
                "pipeline_delay_without_fault": baseline,
                "node_restart_s": restart_s,
                "recover_after_kill": killed,
                "recover_after_restart": back,
                **exact,
                "model_updates": [updates_before, updates_during, updates_after],
            },
        )
    finally:
        twin.stop()


@pytest.fixture
def single_broker(apache_kafka_required: None, tmp_path: Path) -> Iterator[ApacheKafkaBroker]:
    """Apache Kafka on a kept state directory, so it restarts with its data and ports."""
    b = ApacheKafkaBroker(state_dir=tmp_path / "kafka", heap="384m")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_broker_down_a_minute_and_back(
    single_broker: ApacheKafkaBroker, topic_prefix: str, tmp_path: Path
) -> None:
    broker = single_broker
    twin = Twin(broker.url, topic_prefix, tmp_path / "twin", racks=4, replication=1)
    try:
        twin.start()
        rack = twin.rack_ids[0]
        twin.wait_until(
            lambda: twin.store_latest_ms(rack) > 0 and twin.model_updates(rack) > 0,
            120,
            "first samples in the store and a first model update",
        )
        time.sleep(5)
        baseline = twin.recovery_after(time.monotonic(), now_ms(), timeout_s=60)
        updates_before = twin.model_updates(rack)
        broker.stop()  # SIGTERM: a clean shutdown, as an operator's restart
        time.sleep(DOWN_S)
        twin.assert_alive()
        t_mono, t_ms = time.monotonic(), now_ms()
        broker.start()  # same state directory: same ports, topics, offsets
        started_s = round(time.monotonic() - t_mono, 1)
        # From the restart command (the broker's own boot included) ...
        back = twin.recovery_after(t_mono, t_ms, timeout_s=180)
        # ... and from the moment it answered again: the clients' share.
        after_ready = {k: round(v - started_s, 1) for k, v in back.items()}
        time.sleep(5)
        twin.assert_alive()
        gpu_frames = twin.stop_sim()
        exact = twin.assert_store_exact(gpu_frames, timeout_s=180)
        last_ms = twin.store_rows().column("ts_ms").to_numpy().max()
        for r in twin.rack_ids:
            twin.wait_until(
                lambda r=r: twin.worker_latest_ms(r) == last_ms, 90, f"worker at the end on {r}"
            )
        updates_after = twin.model_updates(rack)
        assert updates_before < updates_after, (updates_before, updates_after)
        twin.assert_alive_but_sim_done()
        _report(
            f"single broker down {DOWN_S:.0f} s",
            {
                "pipeline_delay_without_fault": baseline,
                "broker_start_s": started_s,
                "recover_after_restart": back,
                "recover_after_broker_answers": after_ready,
                **exact,
                "model_updates": [updates_before, updates_after],
            },
        )
    finally:
        twin.stop()


async def test_publisher_counts_a_frame_lost_past_its_delivery_timeout() -> None:
    """The delivery timeout reaches aiokafka (its batch expiry), and a frame dropped past
    it is counted and logged even by a caller that never awaits it. That frames queued in
    a shorter outage are delivered is test_broker_down_a_minute_and_back."""
    broker = start_broker("tansu")
    try:
        async with FramePublisher(broker.bootstrap, delivery_timeout_s=2.0) as pub:
            await (await pub.send("probe", "k", b"up"))
            broker.stop()
            lost = await pub.send("probe", "k", b"while down")
            t0 = time.monotonic()
            with pytest.raises(KafkaError):
                await asyncio.wait_for(lost, 30)
            assert time.monotonic() - t0 < 20  # 2 s, not aiokafka's default 40 s
            assert pub.failed == 1
    finally:
        broker.stop()
