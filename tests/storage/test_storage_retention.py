"""Retention per table: whole date partitions older than ``retention_days`` go, nothing else."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import given
from hypothesis import strategies as st

from storage import synth
from storage.layout import date_dir, default_tables, list_dates, list_parts
from storage.maintenance import run_maintenance
from storage.retention import EXPIRED_PREFIX, apply_retention, expired_dates
from storage.sql import SqlService
from storage.writer import write_file

TODAY = dt.date(2026, 11, 28)
MIDNIGHT_MS = int(dt.datetime(2026, 11, 28, tzinfo=dt.UTC).timestamp() * 1000)
DAY_MS = 86_400_000


def _write_day(data_dir: Path, days_ago: int) -> None:
    """One rack, 2 GPUs, 3 samples at 10:00 UTC of TODAY - days_ago, in gpu and plant."""
    tables = default_tables()
    start = MIDNIGHT_MS - days_ago * DAY_MS + 10 * 3_600_000
    day = TODAY - dt.timedelta(days=days_ago)
    gpu = synth.gpu_table(1, 2, 3, start_ms=start)
    plant = synth.points_table({"CDU-A": {"supply_temp_c": 45.0}}, 3, start_ms=start)
    write_file(tables["gpu"], gpu, date_dir(data_dir, "gpu", day))
    write_file(tables["plant"], plant, date_dir(data_dir, "plant", day))


def test_retention_days_of_each_table(tmp_path: Path) -> None:
    tables = default_tables()
    # gpu keeps 3 days, plant is kept forever: each table by its own TableDef.
    tables["gpu"] = dataclasses.replace(tables["gpu"], retention_days=3)
    tables["plant"] = dataclasses.replace(tables["plant"], retention_days=None)
    for days_ago in (0, 3, 4, 10):
        _write_day(tmp_path, days_ago)
    counts = run_maintenance(
        tmp_path, {"gpu": tables["gpu"], "plant": tables["plant"]}, today=TODAY
    )
    # TODAY - 3 is the oldest day kept; TODAY - 4 and TODAY - 10 are whole days too old.
    assert counts["expired_partitions"] == 2
    kept = [TODAY - dt.timedelta(days=n) for n in (3, 0)]
    assert list_dates(tmp_path / "gpu") == kept
    assert len(list_dates(tmp_path / "plant")) == 4
    # Rollups are kept: the hour of the removed days is still in gpu_1h.
    assert TODAY - dt.timedelta(days=10) in list_dates(tmp_path / "gpu_1h")
    # Kept partitions are untouched: 2 GPUs x 3 samples each.
    assert [pq.read_metadata(p).num_rows for p in list_parts(tmp_path / "gpu")] == [6, 6]
    svc = SqlService(tmp_path)
    try:
        n = svc.query("SELECT count(*) AS n, min(date) AS d FROM gpu").to_pylist()[0]
    finally:
        svc.close()
    assert n == {"n": 12, "d": kept[0]}


def test_interrupted_removal_is_finished_and_never_read(tmp_path: Path) -> None:
    tables = default_tables()
    _write_day(tmp_path, 1)
    _write_day(tmp_path, 50)
    old = date_dir(tmp_path, "gpu", TODAY - dt.timedelta(days=50))
    # A crash between the rename and the delete leaves this behind.
    leftover = old.with_name(EXPIRED_PREFIX + old.name)
    old.rename(leftover)
    assert list_dates(tmp_path / "gpu") == [TODAY - dt.timedelta(days=1)]
    svc = SqlService(tmp_path)
    try:
        assert svc.query("SELECT count(*) AS n FROM gpu").to_pylist() == [{"n": 6}]
    finally:
        svc.close()
    assert apply_retention(tmp_path, {"gpu": tables["gpu"]}, TODAY) == []
    assert not leftover.exists()
    assert list_dates(tmp_path / "gpu") == [TODAY - dt.timedelta(days=1)]


@given(
    offsets=st.lists(st.integers(-5, 800), unique=True, max_size=30),
    days=st.integers(0, 500),
)
def test_expired_dates_is_exactly_the_older_days(offsets: list[int], days: int) -> None:
    dates = sorted(TODAY - dt.timedelta(days=o) for o in offsets)
    gone = expired_dates(dates, TODAY, days)
    assert gone == [d for d in dates if (TODAY - d).days > days]
    assert all((TODAY - d).days <= days for d in set(dates) - set(gone))
