"""The sink against a real broker: exactly-once rows, also across SIGKILL."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import synth
from storage.layout import default_tables, list_parts, list_temp_files
from storage.sink import ParquetSink
from streams.brokers import Broker

from .storage_kafka_util import create_topic, produce, recent_ms, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _store_rows(data_dir: Path) -> pa.Table:
    # The sink compacts while we read: a listed file may vanish, so list again.
    for _ in range(50):
        parts = list_parts(data_dir / "gpu")
        try:
            tables = [pq.read_table(p, columns=["ts", "rack", "gpu"]) for p in parts]
        except FileNotFoundError:
            continue
        if not tables:
            break
        return pa.concat_tables(tables)
    return pa.table({"rack": pa.array([], pa.string())})


def _keys(t: pa.Table) -> list[tuple[object, ...]]:
    return list(zip(*(t.column(c).to_pylist() for c in ("rack", "gpu", "ts")), strict=True))


async def test_sink_writes_every_row_once(broker: Broker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    topic = unique("gpu")
    await create_topic(bootstrap, topic, 2)
    rows = synth.gpu_table(3, 72, 30, seed=1, start_ms=recent_ms(30))
    await produce(bootstrap, topic, synth.frames(rows, "rack"))
    tables = default_tables()
    tables["gpu"] = dataclasses.replace(tables["gpu"], topic=topic)
    sink = ParquetSink(bootstrap, tmp_path, [topic], unique("g"), 1000, 0.2, tables=tables)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    for _ in range(300):
        await asyncio.sleep(0.1)
        if sink.stats["rows"] >= rows.num_rows and sink.writer.buffered_rows == 0:
            break
    stop.set()
    await asyncio.wait_for(task, 60)
    got = _store_rows(tmp_path)
    assert sorted(_keys(got)) == sorted(_keys(rows))
    # A second run of the same group finds everything committed: nothing new, no duplicate.
    sink2 = ParquetSink(bootstrap, tmp_path, [topic], sink.group_id, 1000, 0.2, tables=tables)
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(sink2.run(stop2))
    await asyncio.sleep(3)
    stop2.set()
    await asyncio.wait_for(task2, 60)
    assert sink2.stats["rows"] == 0
    assert _store_rows(tmp_path).num_rows == rows.num_rows


def _start_sink(bootstrap: str, data_dir: Path, topic: str, group: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "storage.cli_sink",
        "--broker",
        f"kafka://{bootstrap}",
        "--data-dir",
        str(data_dir),
        "--topics",
        topic,
        "--table-topics",
        f"gpu={topic}",
        "--group",
        group,
        "--flush-rows",
        "700",
        "--flush-seconds",
        "0.3",
        "--max-poll-records",
        "7",
        # Compaction and rollups run between kills too: they must not break exactly-once.
        "--maintenance-seconds",
        "1",
    ]
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ)
    )


@pytest.mark.slow
async def test_sigkill_leaves_no_gap_and_no_duplicate(broker: Broker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    topic = unique("gpu")
    group = unique("g")
    await create_topic(bootstrap, topic, 2)
    rows = synth.gpu_table(4, 72, 60, seed=2, start_ms=recent_ms(60))
    frames = synth.frames(rows, "rack")
    half = len(frames) // 2
    await produce(bootstrap, topic, frames[:half])
    rng = np.random.default_rng(7)
    kills = 0
    for round_ in range(5):
        if round_ == 2:
            await produce(bootstrap, topic, frames[half:])
        proc = _start_sink(bootstrap, tmp_path, topic, group)
        # Random moments: some before the group join, most during consumption and writes.
        await asyncio.sleep(float(rng.uniform(1.5, 6.0)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(30)
    assert kills >= 3
    # Final run to completion.
    proc = _start_sink(bootstrap, tmp_path, topic, group)
    try:
        for _ in range(600):
            await asyncio.sleep(0.25)
            if _store_rows(tmp_path).num_rows >= rows.num_rows:
                break
        await asyncio.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    got = _keys(_store_rows(tmp_path))
    assert len(got) == len(set(got)), "duplicate rows in the store"
    assert set(got) == set(_keys(rows)), "rows missing from the store"
    assert not [p for p in list_temp_files(tmp_path) if p.exists()]
