"""The spine end to end on real brokers (tansu and Apache Kafka): worker subprocesses, real
frames, real kills."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer

from streams.brokers import Broker
from streams.codec import encode_frame, points_batch
from streams.httpclient import http_get, http_post
from streams.producer import FramePublisher
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.apishape import gpu_columns_of
from tests.streams.frames import gpu_columns, known_gpu_batch, with_column
from tests.streams.workerproc import WorkerProcess
from twin.snapshot import load_snapshot_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RACKS = [f"R{i:04d}" for i in range(1, 13)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _publish(bootstrap: str, msgs: list[tuple[str, str, bytes]]) -> None:
    async with FramePublisher(bootstrap) as pub:
        futures = [await pub.send(topic, key, value) for topic, key, value in msgs]
        await pub.flush()
        for fut in futures:
            await fut  # raises if the broker refused a message


def publish(broker: Broker, msgs: list[tuple[str, str, bytes]]) -> None:
    asyncio.run(_publish(broker.bootstrap, msgs))


async def _read_dlq(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[dict]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for recs in batches.values():
                for r in recs:
                    out.append({"value": r.value, "headers": {k: v.decode() for k, v in r.headers}})
    finally:
        await consumer.stop()
    return out


@pytest.fixture
def spine(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> Iterator[tuple[Broker, Topics, Path]]:
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    yield broker, topics, tmp_path


def _gpus(worker: WorkerProcess, rack: str) -> dict[str, list[Any]]:
    """A rack's GPUs from the API as columns, at full precision."""
    status, got = worker.get_json(f"/api/racks/{rack}?precision=full")
    assert status == 200, (rack, status)
    return gpu_columns_of(got["gpus"])


def _expected_rack(rack: str, ts: int, seed: int) -> dict:
    cols = gpu_columns(72, seed)
    return {k: v.tolist() for k, v in cols.items()}


@pytest.mark.parametrize("delivery", ["stream", "batch"])
def test_state_equals_frames_dlq_and_survives_sigkill(
    spine: tuple[Broker, Topics, Path], delivery: str
) -> None:
    """Faust's stream delivery and the batch delivery (streams/faust_batch.py) alike."""
    broker, topics, tmp = spine
    flags = ("--delivery", delivery)
    worker = WorkerProcess(broker.url, topics.prefix, tmp, extra=flags)
    try:
        worker.wait_healthy()
        t = now_ms()
        good = [
            (topics.gpu, r, encode_frame(known_gpu_batch(r, t, seed=i)))
            for i, r in enumerate(RACKS)
        ]
        nan_batch = known_gpu_batch("R0099", t)
        col = nan_batch.column("power_w").to_numpy().copy()
        col[5] = np.nan
        wrong_schema = pa.RecordBatch.from_pydict({"ts": [t], "rack": ["R0098"], "watts": [1.0]})
        bad = [
            (topics.gpu, "R0097", b"\x00not arrow at all"),
            (topics.gpu, "R0098", encode_frame(wrong_schema)),
            (topics.gpu, "R0099", encode_frame(with_column(nan_batch, "power_w", col))),
            # over the worker's --max-message-bytes (256 KiB here), under the broker's 1 MiB
            (topics.gpu, "R0096", b"\x01" * (300 * 1024)),
            (topics.thermal, "CDU01", encode_frame(points_batch(t, "CDU01", {"flow_kg_s": -3.0}))),
        ]
        plant = [
            (
                topics.thermal,
                "CDU01",
                encode_frame(points_batch(t, "CDU01", {"supply_temp_c": 45.2, "flow_kg_s": 40.0})),
            ),
            (
                topics.power,
                "SITE",
                encode_frame(
                    points_batch(t, "SITE", {"it_power_w": 2.0e6, "facility_power_w": 2.14e6})
                ),
            ),
        ]
        json_reading = json.dumps(
            {
                "kind": "gpu",
                "rack": "R0050",
                "gpu": 7,
                "ts": t,
                "power_w": 321.5,
                "energy_mj": 99,
                "temp_gpu_c": 55,
                "temp_mem_c": 66,
                "sm_clock_mhz": 1700,
                "util_pct": 12,
            }
        ).encode()
        # bad input first: the worker must keep going and take the good frames after it
        publish(
            broker,
            bad
            + good
            + plant
            + [(topics.ingest, "x", json_reading), (topics.ingest, "x", b"{oops")],
        )

        doc = worker.wait_for(
            lambda d: len(d["racks"]) >= len(RACKS) + 1 and "pue" in d["facility"],
            what="all racks and the PUE",
        )
        assert sorted(doc["racks"]) == sorted([*RACKS, "R0050"])
        assert doc["facility"]["pue"] == pytest.approx(1.07)
        for i, rack in enumerate(RACKS):
            status, got = worker.get_json(f"/api/racks/{rack}?precision=full")
            assert status == 200
            expected = _expected_rack(rack, t, i)
            cols = gpu_columns_of(got["gpus"])
            for name, values in expected.items():
                assert cols[name] == pytest.approx(values, rel=0, abs=0), name
            assert cols["ts_ms"] == [t] * 72
        status, got = worker.get_json("/api/racks/R0050")
        assert [(g["gpu"], g["power_w"]) for g in got["gpus"]] == [(7, 321.5)]
        assert worker.get_json("/api/racks/R0097")[0] == 404

        dlq = asyncio.run(_read_dlq(broker.bootstrap, topics.dlq, 6))
        reasons = sorted(d["headers"]["dlq.reason"] for d in dlq)
        assert len(dlq) == 6, reasons
        assert reasons == sorted(
            ["not_arrow", "schema", "not_finite", "oversized", "out_of_range", "not_json"]
        )
        joined = " | ".join(d["headers"]["dlq.detail"] for d in dlq)
        for expected_reason in (
            "not an Arrow IPC stream",
            "wrong schema",
            "power_w is not finite",
            "oversized payload",
            "CDU01/flow_kg_s out of range",
            "not JSON",
        ):
            assert expected_reason in joined
        assert all(d["headers"]["dlq.topic"] for d in dlq)
        garbage = next(d for d in dlq if d["headers"]["dlq.reason"] == "not_arrow")
        assert garbage["value"] == b"\x00not arrow at all"  # nothing lost: the bytes are kept

        status, body = http_get(worker.url + "/metrics")
        text = body.decode()
        assert status == 200
        assert 'twin_rack_power_watts{rack="R0001"}' in text
        assert "twin_frames_dlq_total" in text and "twin_consumer_lag_messages" in text
        assert 'twin_frames_dlq_total{reason="not_arrow"} 1.0' in text

        status, body = http_post(
            worker.url + "/api/sql", b'{"sql": "SELECT count(*) AS n FROM gpu"}'
        )
        assert status == 200 and json.loads(body)["rows"] == [{"n": 0}]
        status, body = http_post(worker.url + "/api/sql", b"COPY gpu TO '/tmp/x.csv'")
        assert status == 400 and "error" in json.loads(body)
        status, body = http_get(worker.url + "/api/snapshot")
        snap = load_snapshot_bytes(body)
        assert status == 200 and snap.meta["worker.racks"] == str(len(RACKS) + 1)

        before = {r: _gpus(worker, r) for r in RACKS}
        time.sleep(1.5)  # > checkpoint interval: every rack is in its table's changelog
        worker.kill()
        worker = WorkerProcess(broker.url, topics.prefix, tmp, extra=flags)
        worker.wait_healthy()
        worker.wait_for(lambda d: len(d["racks"]) >= len(RACKS), what="state after SIGKILL")
        for rack in RACKS:
            assert _gpus(worker, rack) == before[rack], rack
    finally:
        worker.stop()


def test_two_workers_share_partitions_and_both_show_every_rack(
    spine: tuple[Broker, Topics, Path],
) -> None:
    broker, topics, tmp = spine
    a = WorkerProcess(broker.url, topics.prefix, tmp / "a", app_id=f"{topics.prefix}-g")
    b = WorkerProcess(broker.url, topics.prefix, tmp / "b", app_id=f"{topics.prefix}-g")
    try:
        a.wait_healthy()
        b.wait_healthy()
        racks = [f"R{i:04d}" for i in range(1, 41)]
        t = now_ms()
        publish(
            broker,
            [
                (topics.gpu, r, encode_frame(known_gpu_batch(r, t, n=8, seed=i)))
                for i, r in enumerate(racks)
            ],
        )
        for w in (a, b):
            doc = w.wait_for(
                lambda d: len(d["racks"]) == len(racks),
                timeout_s=90,
                what="every rack on every worker",
            )
            assert doc["facility"]["gpus"] == 8 * len(racks)
        owned = [w.get_json("/healthz")[1]["racks_owned"] for w in (a, b)]
        assert sum(owned) == len(racks) and min(owned) > 0, owned
        status, got = a.get_json(f"/api/racks/{racks[0]}")
        assert status == 200 and len(got["gpus"]) == 8
    finally:
        a.stop()
        b.stop()
