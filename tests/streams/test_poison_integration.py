"""No poison pills: a message that crashes the worker process ends in the DLQ as `crashed`,
one that raises (a GPU frame, a JSON reading) as `internal_error`, and the messages after
them are applied (real brokers, worker subprocesses, a real abort)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from streams.app import TEST_CRASH_ENV, TEST_RAISE_ENV
from streams.brokers import Broker
from streams.brokers.ports import free_port
from streams.codec import encode_frame
from streams.httpclient import http_get
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams import workerproc
from tests.streams.frames import gpu_columns, known_gpu_batch
from tests.streams.test_spine_integration import _read_dlq, now_ms, publish
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CRASH = "poison-crash-5d1c"
RAISE = "poison-raise-5d1c"
READING = {
    "kind": "gpu", "rack": "R0003", "gpu": 5, "power_w": 300.0, "energy_mj": 1,
    "temp_gpu_c": 50, "temp_mem_c": 60, "sm_clock_mhz": 1500, "util_pct": 40,
}  # fmt: skip


def marked(batch: pa.RecordBatch, marker: str) -> bytes:
    """A valid frame whose bytes hold ``marker`` (schema metadata, which validation ignores)."""
    meta = {**(batch.schema.metadata or {}), b"test-marker": marker.encode()}
    return encode_frame(batch.replace_schema_metadata(meta))


def test_crashing_and_raising_messages_are_dead_lettered_and_the_rest_applied(
    broker: Broker, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, topics, 8))
    monkeypatch.setenv(TEST_CRASH_ENV, CRASH)
    monkeypatch.setenv(TEST_RAISE_ENV, RAISE)
    # The guard's note is per worker (app id and web port): a restart keeps the port.
    port = free_port()
    monkeypatch.setattr(workerproc, "free_port", lambda: port)
    t = now_ms()
    publish(
        broker,
        [
            (topics.gpu, "R0001", encode_frame(known_gpu_batch("R0001", t, seed=1))),
            (topics.gpu, "R0001", marked(known_gpu_batch("R0001", t + 1, seed=2), RAISE)),
            (topics.gpu, "R0001", encode_frame(known_gpu_batch("R0001", t + 2, seed=3))),
            (topics.gpu, "R0002", encode_frame(known_gpu_batch("R0002", t, seed=4))),
            (topics.gpu, "R0002", marked(known_gpu_batch("R0002", t + 1, seed=5), CRASH)),
            (topics.gpu, "R0002", encode_frame(known_gpu_batch("R0002", t + 2, seed=6))),
            # the JSON agent: one reading that raises, then a good one for another rack
            (topics.ingest, "x", json.dumps(READING | {"ts": t, "note": RAISE}).encode()),
            (topics.ingest, "x", json.dumps(READING | {"ts": t + 2}).encode()),
        ],
    )
    worker = WorkerProcess(broker.url, topics.prefix, tmp_path)
    starts, exits = 1, []
    deadline = time.monotonic() + 150
    try:
        while True:
            assert time.monotonic() < deadline, f"exits {exits}\n{worker.log_tail()}"
            code = worker.proc.poll()
            if code is not None:  # died on the poison message: restart, as a supervisor would
                exits.append(code)
                assert starts < 4, f"crash loop: exits {exits}\n{worker.log_tail()}"
                worker.stop()
                worker = WorkerProcess(broker.url, topics.prefix, tmp_path)
                starts += 1
                continue
            s1, r1 = worker.get_json("/api/racks/R0001")
            s2, r2 = worker.get_json("/api/racks/R0002")
            s3, r3 = worker.get_json("/api/racks/R0003")
            if s1 == s2 == s3 == 200 and {r["gpus"][0]["ts_ms"] for r in (r1, r2, r3)} == {t + 2}:
                break
            time.sleep(0.3)
        # First death in the batch, second alone (solo), then dead-lettered: no more deaths.
        assert starts == 3 and all(c != 0 for c in exits), exits
        for rack, seed in (("R0001", 3), ("R0002", 6)):
            got = worker.get_json(f"/api/racks/{rack}?precision=full")[1]["gpus"]
            assert [g["power_w"] for g in got] == gpu_columns(72, seed)["power_w"].tolist()

        assert [g["gpu"] for g in worker.get_json("/api/racks/R0003")[1]["gpus"]] == [5]

        # Everything the DLQ got by now. Offsets read before a crash and not yet committed
        # are read again after the restart (at least once), so a message that raises may be
        # dead-lettered once per start; the one that crashed, exactly once.
        dlq = asyncio.run(_read_dlq(broker.bootstrap, topics.dlq, 100, timeout_s=6))
        by_source = {(d["headers"]["dlq.topic"], d["headers"]["dlq.reason"]): d for d in dlq}
        assert sum(d["headers"]["dlq.reason"] == "crashed" for d in dlq) == 1, dlq
        assert set(by_source) == {
            (topics.gpu, "crashed"),
            (topics.gpu, "internal_error"),
            (topics.ingest, "internal_error"),
        }
        assert CRASH.encode() in by_source[(topics.gpu, "crashed")]["value"]
        for topic in (topics.gpu, topics.ingest):
            raised = by_source[(topic, "internal_error")]
            assert RAISE.encode() in raised["value"]
            assert "RuntimeError" in raised["headers"]["dlq.detail"]
        status, body = http_get(worker.url + "/metrics")
        assert status == 200 and 'twin_frames_dlq_total{reason="crashed"} 1.0' in body.decode()
    finally:
        worker.stop()
