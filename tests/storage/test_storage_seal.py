"""Sealing a finished partition: one file sorted by the table's keys, row groups cut at
series starts, offsets and rows kept, crash-safe swap, old files readable, rollups not redone."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import synth
from storage.compact import compact_table, needs_seal, remove_replaced, seal_partition
from storage.layout import META_SEALED, date_dir, day_of_ms, default_tables, list_parts
from storage.offsets import RangeSet, store_offsets
from storage.rollup import update_rollups
from storage.sql import SqlService
from storage.writer import WriterOptions, balanced_row_groups, write_file

START_MS = 1_789_999_200_000  # an exact UTC hour
DAY = day_of_ms(START_MS)
TABLES = default_tables()
KEYS = [("rack", "ascending"), ("gpu", "ascending"), ("ts", "ascending")]
TP = ("telemetry.gpu", 0)


def _flushes(d: Path, n_files: int = 4, seconds: int = 30) -> pa.Table:
    """n_files sink-like files of ``seconds`` each (every series in every file)."""
    parts = []
    for i in range(n_files):
        t = synth.gpu_table(3, 8, seconds, start_ms=START_MS + i * seconds * 1000, seed=i)
        write_file(TABLES["gpu"], t, d, offsets={TP: RangeSet([(i * 100, i * 100 + 99)])})
        parts.append(t)
    return pa.concat_tables(parts)


def _sql(store: Path, sql: str) -> list[dict[str, object]]:
    """Rows of ``sql``, floats to 12 digits (parallel sums may add in another order)."""
    with SqlService(store, timeout_s=30, max_rows=100_000) as svc:
        rows = svc.query(sql).to_pylist()
    return [
        {k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in r.items()} for r in rows
    ]


def test_seal_sorts_all_rows_into_one_file_with_series_row_groups(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    rows = _flushes(d)
    before = store_offsets(tmp_path, ["gpu"])
    inputs = sorted(p.name for p in d.iterdir())
    # row groups of at most 250 rows: a series (120 rows) never straddles two of them
    sealed = seal_partition(TABLES["gpu"], d, row_group_rows=250, batch_rows=50)
    assert sealed is not None and list_parts(tmp_path / "gpu") == [sealed]
    back = pq.read_table(sealed)
    assert back.num_rows == rows.num_rows == 3 * 8 * 120
    assert back.equals(back.sort_by(KEYS))
    assert back.equals(rows.sort_by(KEYS).cast(back.schema))
    assert store_offsets(tmp_path, ["gpu"]) == before == {TP: RangeSet([(0, 399)])}
    md = pq.read_metadata(sealed)
    assert md.metadata[META_SEALED] == b"1"
    assert sorted(md.metadata[b"twin.replaces"].decode().split(",")) == inputs
    seen: set[tuple[str, int]] = set()
    for g in range(md.num_row_groups):
        rg = pq.ParquetFile(sealed).read_row_group(g, columns=["rack", "gpu"])
        assert rg.num_rows <= 250
        series = set(zip(rg["rack"].to_pylist(), rg["gpu"].to_pylist(), strict=True))
        assert not series & seen  # each series in one row group only
        seen |= series
    assert len(seen) == 24


def test_series_longer_than_a_row_group_are_split(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d, n_files=2)
    sealed = seal_partition(TABLES["gpu"], d, row_group_rows=50, batch_rows=7)
    assert sealed is not None
    md = pq.read_metadata(sealed)
    sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    assert max(sizes) <= 50 and sum(sizes) == 3 * 8 * 60
    back = pq.read_table(sealed)
    assert back.equals(back.sort_by(KEYS))


def test_sql_answers_the_same_before_and_after_sealing(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d)
    # an old file exactly as an early sink wrote it: v1 columns, unsorted, no footer keys
    old = synth.gpu_table(1, 4, 20, start_ms=START_MS + 200_000, rack_prefix="Q", version=1)
    pq.write_table(old.sort_by([("ts", "descending")]), d / "part-old.parquet")
    queries = [
        "SELECT rack, gpu, count(*) AS n, sum(power_w) AS p, max(energy_mj) AS e, "
        "count(ecc_corrected) AS ecc FROM gpu GROUP BY ALL ORDER BY ALL",
        "SELECT ts, temp_gpu_c FROM gpu WHERE rack = 'R0001' AND gpu = 3 ORDER BY ts",
        "SELECT ts, rack, power_w FROM rack WHERE rack = 'Q0000' ORDER BY ts",
    ]
    before = [_sql(tmp_path, q) for q in queries]
    [sealed] = compact_table(TABLES["gpu"], tmp_path, today=DAY + dt.timedelta(days=1))
    assert pq.read_metadata(sealed).metadata[META_SEALED] == b"1"
    assert [_sql(tmp_path, q) for q in queries] == before
    assert before[0][0]["rack"] == "Q0000" and before[0][0]["ecc"] == 0  # v1: not measured


def test_when_a_partition_is_sealed(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d, n_files=2)
    now = time.time()
    assert not needs_seal(d, DAY, DAY, now)  # today, files just written
    assert needs_seal(d, DAY, DAY, now + 3600)  # today, quiet for an hour
    assert needs_seal(d, DAY, DAY + dt.timedelta(days=1), now)  # a past day
    seal_partition(TABLES["gpu"], d)
    tomorrow = DAY + dt.timedelta(days=1)
    assert not needs_seal(d, DAY, tomorrow, now)  # sealed already
    # one late frame (24 rows against 1,440 sealed: above 1 %) reopens it
    late = synth.gpu_table(3, 8, 1, start_ms=START_MS + 500_000)
    write_file(TABLES["gpu"], late, d)
    assert needs_seal(d, DAY, tomorrow, now)
    [resealed] = compact_table(TABLES["gpu"], tmp_path, today=tomorrow)
    assert list_parts(tmp_path / "gpu") == [resealed]
    assert pq.read_metadata(resealed).num_rows == 1440 + 24
    assert compact_table(TABLES["gpu"], tmp_path, today=tomorrow) == []  # nothing to do


def test_a_crash_after_the_rename_is_finished_on_the_next_pass(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d, n_files=3)
    saved = {p.name: p.read_bytes() for p in d.iterdir()}
    sealed = seal_partition(TABLES["gpu"], d)
    assert sealed is not None
    for name, data in saved.items():  # as if the process died before deleting its inputs
        (d / name).write_bytes(data)
    assert remove_replaced(tmp_path / "gpu") == 3
    assert list_parts(tmp_path / "gpu") == [sealed]


def test_a_failed_seal_leaves_the_inputs_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d, n_files=2)
    names = sorted(p.name for p in d.iterdir())

    def boom(self: object, rows: pa.Table) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("storage.compact._RowGroups._write", boom)
    with pytest.raises(Exception, match="disk full"):
        seal_partition(TABLES["gpu"], d, row_group_rows=50)
    assert sorted(p.name for p in d.iterdir()) == names


def test_rollups_are_not_recomputed_for_a_sealed_partition(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d)
    assert update_rollups(tmp_path, ["gpu"])
    before = _sql(tmp_path, "SELECT * FROM gpu_1m ORDER BY ts, rack, gpu")
    seal_partition(TABLES["gpu"], d)
    assert update_rollups(tmp_path, ["gpu"]) == []  # the sealed file holds no new rows
    assert _sql(tmp_path, "SELECT * FROM gpu_1m ORDER BY ts, rack, gpu") == before


def test_points_tables_seal_by_unit_and_point(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "power", DAY)
    units = {"SITE": {"facility_power_w": 1.1e6, "it_power_w": 1.0e6}, "UPS-1": {"load_w": 5e5}}
    for i in range(3):
        t = synth.points_table(units, 40, start_ms=START_MS + i * 40_000, seed=i)
        write_file(TABLES["power"], t, d)
    q = (
        "SELECT date, avg(value) FILTER (WHERE point = 'facility_power_w') "
        "/ avg(value) FILTER (WHERE point = 'it_power_w') AS pue FROM power "
        "WHERE unit = 'SITE' GROUP BY date"
    )
    before = _sql(tmp_path, q)
    [sealed] = compact_table(TABLES["power"], tmp_path, today=DAY + dt.timedelta(days=1))
    back = pq.read_table(sealed)
    order = [("unit", "ascending"), ("point", "ascending"), ("ts", "ascending")]
    assert back.num_rows == 360 and back.equals(back.sort_by(order))
    assert _sql(tmp_path, q) == before


def test_row_groups_of_a_flush_are_equal() -> None:
    assert balanced_row_groups(531_000, 500_000) == 265_500
    assert balanced_row_groups(400_000, 500_000) == 400_000
    assert balanced_row_groups(1_000_001, 500_000) == 333_334


def test_a_flush_has_no_small_trailing_row_group(tmp_path: Path) -> None:
    t = synth.gpu_table(1, 2, 130)  # 260 rows, target 100: 3 x 87, not 100 + 100 + 60
    p = write_file(TABLES["gpu"], t, tmp_path, options=WriterOptions(row_group_rows=100))
    md = pq.read_metadata(p)
    assert [md.row_group(g).num_rows for g in range(md.num_row_groups)] == [87, 87, 86]


def test_views_follow_a_seal_on_a_warm_connection(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    _flushes(d, n_files=2)
    with SqlService(tmp_path, timeout_s=30, max_rows=1000) as svc:
        q = "SELECT count(*) AS n, sum(energy_mj) AS e FROM gpu"
        first = svc.query(q).to_pylist()
        seal_partition(TABLES["gpu"], d)
        os.utime(d, (time.time() + 5, time.time() + 5))  # past the 1 s cache guard
        assert svc.query(q).to_pylist() == first
        write_file(TABLES["gpu"], synth.gpu_table(1, 1, 1, start_ms=START_MS + 999_000), d)
        os.utime(d, (time.time() + 10, time.time() + 10))
        assert svc.query(q).to_pylist()[0]["n"] == first[0]["n"] + 1
