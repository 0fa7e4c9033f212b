"""`twin sim` on a real broker: frames in the contracts, faults recorded as ground truth."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from streams.brokers import Broker
from streams.codec import decode_gpu_frame, decode_points_frame
from streams.settings import Topics

pytestmark = [pytest.mark.integration]


async def _drain(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list:  # type: ignore[type-arg]
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out = []
    try:
        deadline = time.monotonic() + timeout_s
        idle = 0
        while time.monotonic() < deadline and idle < 3:
            batches = await consumer.getmany(timeout_ms=1000)
            got = [r for recs in batches.values() for r in recs]
            idle = 0 if got else idle + 1
            out += got
    finally:
        await consumer.stop()
    return out


def test_sim_publishes_contract_frames_and_fault_ground_truth(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "faults.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "streams", "sim", "--broker", broker.url, "--racks", "2",
         "--speed", "200", "--duration", "60", "--dt", "1", "--topic-prefix", topic_prefix,
         "--fault", "pump_trip:CDU01@10", "--faults-log", str(log)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sim: 60 steps, 120 GPU frames" in r.stdout
    topics = Topics(topic_prefix)
    gpu = asyncio.run(_drain(broker.bootstrap, topics.gpu))
    assert len(gpu) == 120
    assert all(dict(m.headers).get("twin-replay") == b"sim" for m in gpu)  # fast = history
    frames = [decode_gpu_frame(m.value, key=m.key, now_ms=None) for m in gpu]
    assert {f.rack for f in frames} == {"R0001", "R0002"}
    assert all(f.batch.num_rows == 72 for f in frames)
    thermal = asyncio.run(_drain(broker.bootstrap, topics.thermal))
    units = {decode_points_frame(m.value, key=m.key, now_ms=None).unit for m in thermal}
    assert {"R0001", "CDU01", "OUTDOOR"} <= units
    truth = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(truth) == 1 and truth[0]["kind"] == "pump_trip" and truth[0]["target"] == "CDU01"
    recorded = asyncio.run(_drain(broker.bootstrap, topics.faults))
    assert [json.loads(m.value)["kind"] for m in recorded] == ["pump_trip"]
