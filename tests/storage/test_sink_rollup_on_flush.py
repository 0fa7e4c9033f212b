"""The sink brings the rollups up to date after each flush, not only at maintenance.

Before, gpu_1m and gpu_1h (the README's first SQL example, the hottest-GPU and the
energy-per-rack examples) stayed empty until the first maintenance pass, two minutes into a
demo and five by default.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from storage import synth
from storage.layout import default_tables
from storage.sink import ParquetSink
from storage.sql import SqlService
from streams.brokers import Broker

from .storage_kafka_util import create_topic, produce, recent_ms, unique

pytestmark = pytest.mark.integration


async def test_rollups_answer_after_the_first_flush(broker: Broker, tmp_path: Path) -> None:
    topic = unique("gpu")
    await create_topic(broker.bootstrap, topic, 2)
    rows = synth.gpu_table(2, 8, 60, seed=2, start_ms=recent_ms(60))  # a minute of samples
    await produce(broker.bootstrap, topic, synth.frames(rows, "rack"))
    tables = default_tables()
    tables["gpu"] = dataclasses.replace(tables["gpu"], topic=topic)
    # maintenance every hour: only the rollups after a flush can fill the views in time
    sink = ParquetSink(
        broker.bootstrap, tmp_path, [topic], unique("g"), 100_000, 1.0, tables=tables,
        maintenance_s=3600.0,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    svc = SqlService(tmp_path)
    counts = (0, 0, 0)
    try:
        for _ in range(300):
            await asyncio.sleep(0.1)
            counts = tuple(  # type: ignore[assignment]
                svc.query(f"SELECT sum(n) AS n FROM {v}").column("n")[0].as_py() or 0
                for v in ("gpu_1m", "gpu_1h", "rack_1m")
            )
            if counts == (rows.num_rows, rows.num_rows, 2 * 60):  # files land one by one
                break
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        svc.close()
    assert counts == (rows.num_rows, rows.num_rows, 2 * 60), counts
    assert sink.stats["maintenance_runs"] == 0  # not the maintenance pass
