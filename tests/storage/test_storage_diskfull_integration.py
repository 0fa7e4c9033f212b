"""A full disk or read-only store with a real broker: pause, keep everything, resume, once.

The causes are real OS errors, not injected ones. Where this process may mount (root with
CAP_SYS_ADMIN) the data directory is a small tmpfs, filled with a ballast file (ENOSPC) or
remounted read-only (EROFS); elsewhere the store's directories are made read-only (EACCES),
which binds every process but one that ignores permission bits (root). Where neither works
the test is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from storage import synth
from storage.layout import TableDef, default_tables, list_parts, list_temp_files
from storage.sink import ParquetSink, StoreIndex
from streams.brokers import Broker

from .storage_kafka_util import create_topic, produce, recent_ms, unique

pytestmark = pytest.mark.integration

PARTITIONS = 2
TMPFS_SIZE = "8m"  # room for the store of this test, small enough to fill in a moment


def _mount(*args: str) -> bool:
    r = subprocess.run(["mount", *args], capture_output=True, check=False)
    return r.returncode == 0


def _can_mount(probe: Path) -> bool:
    """True when this process may mount a tmpfs (root with CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return False
    probe.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)):
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


def _chmod_blocks(probe: Path) -> bool:
    """True when a 0555 directory refuses this process a new file (not so for root)."""
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "f").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
    return False


class Store:
    """The sink's data directory and a way to make it unwritable and writable again."""

    def __init__(self, root: Path, cause: str) -> None:
        self.cause = cause
        self.dir = root / "store"
        self.mounted = _can_mount(root / "probe")
        if cause == "disk_full" and not self.mounted:
            pytest.skip("filling a disk needs a tmpfs mount (root with CAP_SYS_ADMIN)")
        if cause == "read_only" and not self.mounted and not _chmod_blocks(root / "probe2"):
            pytest.skip("permission bits do not bind this process and it cannot mount a tmpfs")
        self.dir.mkdir()
        if self.mounted:
            assert _mount("-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.dir))
        self._ballast = self.dir / "ballast"
        self._chmodded: list[Path] = []
        self.blocked = False

    @property
    def expected_reason(self) -> str:
        """The cause as the sink's error names it (storage.writer._unavailable)."""
        if self.cause == "disk_full":
            return "disk full"
        return "read-only file system" if self.mounted else "permission denied"

    def block(self) -> None:
        self.blocked = True
        if self.cause == "disk_full":
            fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT, 0o644)
            page = b"\0" * 4096  # tmpfs allocates whole pages: fill every last one
            try:
                while True:
                    os.write(fd, page)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            finally:
                os.close(fd)
        elif self.mounted:
            # EBUSY while a write is open: the sink's writes are short, so try again.
            for _ in range(100):
                if _mount("-o", "remount,ro", str(self.dir)):
                    return
                subprocess.run(["sleep", "0.05"], check=False)
            raise AssertionError("could not remount the store read-only")
        else:
            self._chmodded = [self.dir, *(p for p in self.dir.rglob("*") if p.is_dir())]
            for p in self._chmodded:
                p.chmod(0o555)

    def unblock(self) -> None:
        if not self.blocked:
            return
        self.blocked = False
        if self.cause == "disk_full":
            self._ballast.unlink()
        elif self.mounted:
            assert _mount("-o", "remount,rw", str(self.dir))
        else:
            for p in self._chmodded:
                p.chmod(0o755)

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.unblock()
        if self.mounted:
            r = subprocess.run(["umount", str(self.dir)], capture_output=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(self.dir)], check=False)


@pytest.fixture(params=["disk_full", "read_only"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path, request.param)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def read_only_store(tmp_path: Path) -> Iterator[Store]:
    """One cause is enough where the sink only has to stop and start again."""
    s = Store(tmp_path, "read_only")
    try:
        yield s
    finally:
        s.close()


async def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (absent: none yet)."""
    # A consumer that never subscribes reads the group's commits without joining it.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        got = {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()
    return {p: c for p, c in got.items() if c is not None}


async def _assert_commits_durable(
    bootstrap: str, group: str, tdef: TableDef, data_dir: Path
) -> dict[int, int]:
    """Every offset below each committed one is in a durable store file; returns commits."""
    topic = tdef.topic
    assert topic is not None
    committed = await _committed(bootstrap, group, topic)
    durable = StoreIndex(data_dir, [tdef]).load()
    for part, c in committed.items():
        rs = durable.get((topic, part))
        first_missing = rs.first_missing_from(0) if rs is not None else 0
        assert first_missing >= c, (
            f"partition {part} committed {c} but durable only to {first_missing}"
        )
    return committed


async def _until_committed(
    bootstrap: str, group: str, tdef: TableDef, data_dir: Path, n: int
) -> dict[int, int]:
    """Wait until the commits cover ``n`` records, each check durable; returns them."""
    for _ in range(100):
        committed = await _assert_commits_durable(bootstrap, group, tdef, data_dir)
        if sum(committed.values()) == n:
            return committed
        await asyncio.sleep(0.1)
    raise AssertionError(f"committed {committed}, want {n} records in all")


async def _until(cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def _keys(t: pa.Table) -> list[tuple[object, ...]]:
    return list(zip(*(t.column(c).to_pylist() for c in ("rack", "gpu", "ts")), strict=True))


def _store_keys(data_dir: Path) -> list[tuple[object, ...]]:
    parts = list_parts(data_dir / "gpu")
    return [k for p in parts for k in _keys(pq.read_table(p, columns=["ts", "rack", "gpu"]))]


async def test_unwritable_store_pauses_keeps_rows_and_resumes(
    broker: Broker, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage")
    bootstrap = broker.bootstrap
    topic = unique("gpu")
    group = unique("g")
    await create_topic(bootstrap, topic, PARTITIONS)
    rows = synth.gpu_table(3, 72, 40, seed=3, start_ms=recent_ms(40))
    frames = synth.frames(rows, "rack")
    first, during, while_paused = frames[:60], frames[60:75], frames[75:]
    tables = default_tables()
    tdef = tables["gpu"] = dataclasses.replace(tables["gpu"], topic=topic)
    sink = ParquetSink(bootstrap, store.dir, [topic], group, 1000, 0.2, retry_s=0.3, tables=tables)
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await produce(bootstrap, topic, first)
        await _until(lambda: sink.stats["messages"] == len(first) and not sink.writer.buffered_rows)
        before = await _until_committed(bootstrap, group, tdef, store.dir, len(first))

        store.block()
        await produce(bootstrap, topic, during)
        await _until(lambda: sink.paused)
        seen = sink.stats["messages"]
        assert sink.writer.buffered_rows > 0, "the rows of the failed write must stay buffered"
        # While paused: records keep arriving, the sink reads none of them, and no offset is
        # committed past what is durable.
        await produce(bootstrap, topic, while_paused)
        for _ in range(4):
            await asyncio.sleep(0.5)
            assert sink.paused
            assert sink.stats["messages"] == seen
            assert await _assert_commits_durable(bootstrap, group, tdef, store.dir) == before

        errors = [
            r for r in caplog.records if r.name == "storage.sink" and r.levelno >= logging.ERROR
        ]
        assert len(errors) == 1, [r.getMessage() for r in errors]  # logged once, not per retry
        msg = errors[0].getMessage()
        assert "pausing consumption" in msg and store.expected_reason in msg, msg
        assert str(store.dir) in msg

        store.unblock()
        freed = time.monotonic()
        await _until(lambda: not sink.paused)
        resumed_s = time.monotonic() - freed
        await _until(
            lambda: sink.stats["messages"] == len(frames) and not sink.writer.buffered_rows
        )
        assert any("writable again" in r.getMessage() for r in caplog.records)
        # The last commit follows the last durable write within one step of the loop.
        await _until_committed(bootstrap, group, tdef, store.dir, len(frames))
        # A figure for docs/reliability.md (retry every 0.3 s here), not a timing target.
        print(
            f"\nstore {store.cause} freed: sink writing again after {resumed_s:.2f} s, "
            f"every row durable and committed after {time.monotonic() - freed:.2f} s"
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    got = _store_keys(store.dir)
    assert len(got) == len(set(got)), "duplicate rows in the store"
    assert set(got) == set(_keys(rows)), "rows missing from the store"
    assert not list_temp_files(store.dir)
    assert sink.stats["bad"] == 0


async def test_stop_while_unwritable_loses_nothing(
    broker: Broker, read_only_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = read_only_store
    caplog.set_level(logging.INFO, logger="storage")
    bootstrap = broker.bootstrap
    topic = unique("gpu")
    group = unique("g")
    await create_topic(bootstrap, topic, PARTITIONS)
    rows = synth.gpu_table(2, 72, 30, seed=4, start_ms=recent_ms(30))
    frames = synth.frames(rows, "rack")
    tables = default_tables()
    tdef = tables["gpu"] = dataclasses.replace(tables["gpu"], topic=topic)

    def new_sink() -> ParquetSink:
        # tansu numbers a group's first generation 0, and aiokafka leaves a group only from
        # generation 1 on: the second sink waits for the first one's session to expire.
        return ParquetSink(
            bootstrap,
            store.dir,
            [topic],
            group,
            1000,
            0.2,
            retry_s=0.3,
            tables=tables,
            consumer_config={"session_timeout_ms": 6000, "rebalance_timeout_ms": 6000},
        )

    sink = new_sink()
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await produce(bootstrap, topic, frames[:20])
        await _until(lambda: sink.stats["messages"] == 20 and not sink.writer.buffered_rows)
        await _until_committed(bootstrap, group, tdef, store.dir, 20)
        store.block()
        await produce(bootstrap, topic, frames[20:])
        await _until(lambda: sink.paused)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    # It stopped with rows it could not write: said so, committed none of them.
    assert any("stopping with unwritten rows" in r.getMessage() for r in caplog.records)
    committed = await _assert_commits_durable(bootstrap, group, tdef, store.dir)
    assert sum(committed.values()) == 20

    store.unblock()
    sink = new_sink()
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        await _until(lambda: len(_store_keys(store.dir)) >= rows.num_rows)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    got = _store_keys(store.dir)
    assert len(got) == len(set(got)), "duplicate rows in the store"
    assert set(got) == set(_keys(rows)), "rows missing from the store"
    await _until_committed(bootstrap, group, tdef, store.dir, len(frames))
