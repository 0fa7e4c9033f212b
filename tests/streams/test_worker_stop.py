"""A worker far behind its telemetry still stops at once on SIGTERM.

When the agent is behind, the stream's buffer is full and Faust's fetch loop waits to
deliver the next message; streams/faust_app.py must keep that wait abortable.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.brokers import Broker
from streams.codec import encode_frame
from streams.httpclient import http_get
from streams.producer import FramePublisher
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.frames import known_gpu_batch
from tests.streams.workerproc import WorkerProcess

pytestmark = [pytest.mark.integration]


@pytest.fixture
def topics(broker: Broker, topic_prefix: str) -> Iterator[Topics]:
    t = Topics(topic_prefix)
    asyncio.run(ensure_topics(broker.bootstrap, t, 8))
    yield t


async def _backlog(bootstrap: str, topic: str, frames: int) -> None:
    start = time.time_ns() // 1_000_000 - frames * 10
    async with FramePublisher(bootstrap, linger_ms=20) as pub:
        for i in range(frames):
            rack = f"R{i % 40:04d}"
            batch = known_gpu_batch(rack, start + 10 * i, n=72, seed=i % 5)
            await pub.send(topic, rack, encode_frame(batch))
        await pub.flush()


def _samples_in(worker: WorkerProcess) -> int:
    status, body = http_get(worker.url + "/healthz", timeout_s=2)
    return int(json.loads(body).get("gpu_samples_in", 0)) if status == 200 else 0


def test_worker_far_behind_stops_promptly(broker: Broker, topics: Topics, tmp_path: Path) -> None:
    frames = 6000
    asyncio.run(_backlog(broker.bootstrap, topics.gpu, frames))
    # a small stream buffer (4 x 8 frames) that the backlog keeps full
    worker = WorkerProcess(broker.url, topics.prefix, tmp_path, extra=("--batch-max", "8"))
    try:
        worker.wait_healthy()
        deadline = time.monotonic() + 60
        while _samples_in(worker) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        taken = _samples_in(worker)
        assert 0 < taken < frames * 72, f"not mid-backlog ({taken} samples)\n{worker.log_tail()}"
        t0 = time.monotonic()
        worker.proc.terminate()
        worker.proc.wait(45)
        stopped_s = time.monotonic() - t0
    finally:
        worker.stop()
    assert stopped_s < 30, f"stop took {stopped_s:.0f} s\n{worker.log_tail()}"
