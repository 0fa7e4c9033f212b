"""The sink at the edge, against a real broker: it stores what the worker accepts, once.

Bad frames are refused by reason, twin.* refusals are dead-lettered, the same frame sent
200 times is stored once (also after a restart), a foreign file's offsets cannot make the
sink skip the log, failing maintenance is counted and retried, and a record that crashes
the process is skipped after the restart (subprocess sink with the test-only abort hook).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from storage import synth
from storage.layout import META_OFFSETS, META_TABLE, date_dir, day_of_ms, default_tables, list_parts
from storage.sink import ABORT_KEY_ENV, ParquetSink
from streams.brokers import Broker

from .bad_inputs import BAD_FRAMES, frame
from .storage_kafka_util import create_topic, produce, recent_ms, unique

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _rows(data_dir: Path, table: str, columns: list[str]) -> pa.Table:
    for _ in range(50):  # the sink may compact while we read
        try:
            parts = [pq.read_table(p, columns=columns) for p in list_parts(data_dir / table)]
        except FileNotFoundError:
            continue
        return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})
    raise AssertionError("store kept changing")


def _gpu_keys(data_dir: Path) -> list[tuple[object, ...]]:
    t = _rows(data_dir, "gpu", ["rack", "gpu", "ts"])
    return list(zip(*(t.column(c).to_pylist() for c in ("rack", "gpu", "ts")), strict=True))


def _keys(t: pa.Table) -> set[tuple[object, ...]]:
    return set(zip(*(t.column(c).to_pylist() for c in ("rack", "gpu", "ts")), strict=True))


async def _until(cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def _read_all(bootstrap: str, topic: str, n: int) -> list[object]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await c.start()
    out: list[object] = []
    try:
        deadline = time.monotonic() + 30
        while len(out) < n and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500)).values():
                out += recs
    finally:
        await c.stop()
    return out


async def test_sink_refuses_dedupes_and_dead_letters(broker: Broker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    gpu_topic, kpi_topic, dlq = unique("gpu"), unique("kpi"), unique("dlq")
    for t in (gpu_topic, kpi_topic, dlq):
        await create_topic(bootstrap, t, 2)
    good = synth.gpu_table(3, 8, 20, seed=5, start_ms=recent_ms(20))
    good_frames = synth.frames(good, "rack")
    bad = [(b"R0001", make()) for make in BAD_FRAMES.values()]
    repeated = [good_frames[0]] * 200
    await produce(bootstrap, gpu_topic, good_frames[:30] + bad + repeated + good_frames[30:])
    now_s = time.time()
    kpis = [
        {"ts": round(now_s * 1000), "scope": "site", "name": "pue_frac", "value": 1.2},  # ms
        {"ts": -1e15, "scope": "site", "name": "pue_frac", "value": 1.2},
        {"ts": 1e300, "scope": "site", "name": "pue_frac", "value": 1.2},
        {"ts": "10000-01-01T00:00:00+00:00", "scope": "site", "name": "pue_frac", "value": 1},
    ]
    json_msgs = [(b"site", json.dumps(k).encode()) for k in kpis]
    json_msgs.append((b"site", b'{"ts": 1, "value": NaN, "scope": "s", "name": "x"}'))
    json_msgs.append((b"site", b"[" * 50_000 + b"]" * 50_000))
    await produce(bootstrap, kpi_topic, json_msgs)

    tables = default_tables()
    tables["gpu"] = dataclasses.replace(tables["gpu"], topic=gpu_topic)
    tables["kpi"] = dataclasses.replace(tables["kpi"], topic=kpi_topic)
    # Rollups cannot save their state (a directory in the way): every pass fails.
    (tmp_path / "_rollup_state.json").mkdir()
    group = unique("g")

    def new_sink() -> ParquetSink:
        return ParquetSink(
            bootstrap, tmp_path, [gpu_topic, kpi_topic], group, 1000, 0.2,
            tables=tables, dlq_topic=dlq, maintenance_s=0.3,
        )  # fmt: skip

    sink = new_sink()
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await _until(
            lambda: (
                sink.stats["rows"] + sink.stats["duplicates"] + sink.stats["bad"] > 0
                and sink.stats["bad"] == len(bad) + 5
                and sink.stats["messages"] == len(good_frames) + 1
                and not sink.writer.buffered_rows
            )
        )
        await _until(lambda: sink.stats["maintenance_failures"] >= 2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    assert not task.exception()
    got = _gpu_keys(tmp_path)
    assert len(got) == len(set(got)), "a sample stored twice"
    assert set(got) == _keys(good)
    assert sink.stats["duplicates"] == 200 * 8
    assert sum(sink.refused.values()) == len(bad) + 5
    assert "rollups" in (sink.maintenance_error or "")
    kpi = _rows(tmp_path, "kpi", ["ts", "value"])
    assert kpi.num_rows == 1
    # Only the twin.* refusals are dead-lettered (the worker dead-letters telemetry).
    dead = await _read_all(bootstrap, dlq, 5)
    assert len(dead) == 5
    for rec in dead:
        h = dict(rec.headers)  # type: ignore[attr-defined]
        assert h["dlq.reason"].decode() in {
            "ts_too_old",
            "ts_future",
            "bad_field",
            "not_json",
            "too_deep",
        }
        assert h["dlq.detail"] and h["dlq.topic"].decode() == kpi_topic

    # The same frames again, at new offsets, to a restarted sink: nothing new is stored.
    await produce(bootstrap, gpu_topic, good_frames[:10] + good_frames[-10:])
    sink2 = new_sink()
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(sink2.run(stop2))
    try:
        await _until(lambda: sink2.stats["duplicates"] == 20 * 8)
    finally:
        stop2.set()
        await asyncio.wait_for(task2, 60)
    assert sink2.stats["rows"] == 0
    assert sorted(_gpu_keys(tmp_path)) == sorted(got)


async def test_foreign_file_and_forged_commit_do_not_skip_the_log(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Parquet file claiming offsets up to 10^12 and a commit at 10^12 lose nothing."""
    caplog.set_level(logging.INFO, logger="storage")
    bootstrap = broker.bootstrap
    topic, group = unique("gpu"), unique("g")
    await create_topic(bootstrap, topic, 2)
    rows = synth.gpu_table(2, 8, 15, seed=6, start_ms=recent_ms(15))
    await produce(bootstrap, topic, synth.frames(rows, "rack"))
    tables = default_tables()
    gdef = tables["gpu"] = dataclasses.replace(tables["gpu"], topic=topic)
    # What the SQL attack wrote: a fake rack, a footer claiming every offset there will be.
    fake = synth.gpu_table(1, 2, 1, start_ms=recent_ms(1), rack_prefix="FAKE")
    forged = json.dumps({topic: {"0": [[0, 10**12]], "1": [[0, 10**12]]}}).encode()
    day_dir = date_dir(tmp_path, "gpu", day_of_ms(recent_ms(1)))
    day_dir.mkdir(parents=True)
    meta = {META_OFFSETS: forged, META_TABLE: b"gpu"}
    pq.write_table(fake.replace_schema_metadata(meta), day_dir / "part-forged.parquet")
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        c.assign(tps)
        await c.commit({tp: 10**12 for tp in tps})
    finally:
        await c.stop()
    sink = ParquetSink(bootstrap, tmp_path, [topic], group, 1000, 0.2, tables=tables)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await _until(lambda: sink.stats["rows"] == rows.num_rows and not sink.writer.buffered_rows)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    got = [k for k in _gpu_keys(tmp_path) if not str(k[0]).startswith("FAKE")]
    assert sorted(got) == sorted(_keys(rows))
    assert sink.index.distrusted == {day_dir / "part-forged.parquet"}
    forged_commit = [r for r in caplog.records if "committed offset past the log end" in r.message]
    assert len(forged_commit) == 2  # one per partition
    assert gdef.topic == topic


def _start_sink(
    bootstrap: str, data_dir: Path, topic: str, group: str, abort_key: str
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "storage.cli_sink", "--broker", f"kafka://{bootstrap}",
        "--data-dir", str(data_dir), "--topics", topic, "--table-topics", f"gpu={topic}",
        "--group", group, "--flush-rows", "500", "--flush-seconds", "0.3",
        "--max-poll-records", "5", "--maintenance-seconds", "0",
    ]  # fmt: skip
    env = dict(os.environ)
    env[ABORT_KEY_ENV] = abort_key
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )


@pytest.mark.slow
async def test_record_that_crashes_the_sink_is_skipped_after_restart(
    broker: Broker, tmp_path: Path
) -> None:
    bootstrap = broker.bootstrap
    topic, group = unique("gpu"), unique("g")
    await create_topic(bootstrap, topic, 1)
    rows = synth.gpu_table(3, 8, 12, seed=7, start_ms=recent_ms(12))
    frames = synth.frames(rows, "rack")
    poison = (b"RPOISON", frame(recent_ms(1), rack="RPOISON"))
    await produce(bootstrap, topic, [*frames[:17], poison, *frames[17:]])
    exits = []
    for _ in range(4):
        proc = _start_sink(bootstrap, tmp_path, topic, group, "RPOISON")
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_gpu_keys(tmp_path)) >= rows.num_rows:
                await asyncio.sleep(1.0)  # let it commit
                break
            await asyncio.sleep(0.25)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            exits.append(proc.returncode)
            break
        proc.communicate(timeout=10)
        exits.append(proc.returncode)
    # Died in the batch, died again alone, then skipped it with reason crashed.
    assert exits == [-signal.SIGABRT, -signal.SIGABRT, 0], exits
    log = err.decode()
    assert "reason=crashed" in log, log[-3000:]
    got = _gpu_keys(tmp_path)
    assert len(got) == len(set(got))
    assert set(got) == _keys(rows)
