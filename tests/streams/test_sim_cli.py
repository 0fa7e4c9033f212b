"""`twin sim` on a real broker: frames in the contracts, faults recorded as ground truth."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
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


def test_sim_speed_0_runs_as_fast_as_possible(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    from streams.sim_source import run_simulation
    from streams.topics_admin import ensure_topics

    topics = Topics(topic_prefix)

    async def go() -> tuple[object, float]:
        await ensure_topics(broker.bootstrap, topics, 2)
        t0 = time.monotonic()
        stats = await run_simulation(
            bootstrap=broker.bootstrap, topics=topics, racks=1, site_path=None, seed=0,
            dt_s=1.0, speed=0.0, duration_s=600.0, faults=[], faults_log=None,
            stop=asyncio.Event(),
        )  # fmt: skip
        return stats, time.monotonic() - t0

    stats, wall_s = asyncio.run(go())
    assert stats.ticks == 600  # type: ignore[attr-defined]
    assert wall_s < 60.0, wall_s  # 10 simulated minutes, far faster than real time
    gpu = asyncio.run(_drain(broker.bootstrap, topics.gpu))
    assert len(gpu) == 600
    assert all(dict(m.headers).get("twin-replay") == b"sim" for m in gpu)  # history
    frames = [decode_gpu_frame(m.value, key=m.key, now_ms=None) for m in gpu]
    newest_ms = max(f.batch.column("ts").cast(pa.int64())[0].as_py() for f in frames)
    assert newest_ms <= time.time() * 1000  # started in the past: no sample from the future


def test_sim_speed_help_and_negative_speed() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "streams", "sim", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "0: as fast as possible" in " ".join(r.stdout.split())
    from streams.sim_source import run_simulation
    from twin.errors import ConfigError

    with pytest.raises(ConfigError, match="--speed must be >= 0"):
        asyncio.run(
            run_simulation(
                bootstrap="127.0.0.1:1",
                topics=Topics(""),
                racks=1,
                site_path=None,
                seed=0,
                dt_s=1.0,
                speed=-1.0,
                duration_s=1.0,
                faults=[],
                faults_log=None,
                stop=asyncio.Event(),
            )
        )


class _Tty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("duration", [60.0, None])
def test_sim_progress_on_a_terminal_only(duration: float | None) -> None:
    from streams.sim_progress import sim_progress
    from streams.sim_source import SimStats

    for tty in (True, False):
        out = _Tty(tty)
        with sim_progress(duration, 1.0, out) as tick:
            for i in range(1, 31):
                tick(SimStats(ticks=i, gpu_samples=72 * i))
                time.sleep(0.01)
        text = out.getvalue()
        if tty:
            assert "simulating" in text and "GPU samples" in text, text
            assert ("/60" in text) == (duration is not None), text
        else:
            assert text == ""


def test_a_fast_run_that_catches_up_goes_on_in_real_time(broker: Broker, topic_prefix: str) -> None:
    from streams.sim_source import make_simulator, publish_simulation
    from streams.topics_admin import ensure_topics

    topics = Topics(topic_prefix)
    start_ms = time.time_ns() // 1_000_000 - 3_000  # 3 s of history, then the present

    async def go() -> float:
        await ensure_topics(broker.bootstrap, topics, 2)
        sim = make_simulator(racks=1, site_path=None, seed=0, faults=[], start_ms=start_ms)
        t0 = time.monotonic()
        await publish_simulation(
            sim, bootstrap=broker.bootstrap, topics=topics, dt_s=0.5, speed=0.0,
            duration_s=6.0, stop=asyncio.Event(), replay=True,
        )  # fmt: skip
        return time.monotonic() - t0

    wall_s = asyncio.run(go())
    assert wall_s > 2.0, wall_s  # the 3 s past the present were waited for, not rushed
    gpu = asyncio.run(_drain(broker.bootstrap, topics.gpu))
    assert len(gpu) == 12
    for m in gpu:  # each sample left no earlier than its own time
        ts = decode_gpu_frame(m.value, key=m.key, now_ms=None).batch.column("ts")
        assert ts.cast(pa.int64())[0].as_py() <= m.timestamp + 50, m
