"""A store holding GPU files from before telemetry.gpu/v2 (no v2 columns) beside new ones:
SQL, rollups, compaction and replay all read both."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage import synth
from storage.compact import compact_partition
from storage.layout import date_dir, day_of_ms, default_tables
from storage.replay import read_range
from storage.rollup import update_rollups
from storage.sql import SqlService
from storage.writer import write_file
from streams.schema import DEFAULT_SLOWDOWN_C, GPU_SCHEMA, GPU_V2_COLUMNS

START_MS = 1_790_000_000_000


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    part = date_dir(tmp_path, "gpu", day_of_ms(START_MS))
    part.mkdir(parents=True)
    # an old file exactly as a sink of v1 wrote it: no v2 columns at all
    old = synth.gpu_table(1, 2, 3, start_ms=START_MS, version=1)
    pq.write_table(old, part / "part-old.parquet")
    new = synth.gpu_table(1, 2, 3, start_ms=START_MS + 3000, seed=1)
    write_file(default_tables()["gpu"], new, part)
    return tmp_path


def test_sql_reads_old_rows_as_null(mixed: Path) -> None:
    svc = SqlService(mixed, timeout_s=10, max_rows=100)
    res = svc.query(
        "SELECT count(*) AS n, count(thermal_margin_k) AS with_margin, "
        "count(ecc_corrected) AS with_ecc FROM gpu"
    ).to_pylist()
    assert res == [{"n": 12, "with_margin": 6, "with_ecc": 6}]
    rack = svc.query("SELECT count(*) AS n FROM rack").column("n")[0].as_py()
    assert rack == 6


def test_rollups_and_compaction_take_both(mixed: Path) -> None:
    assert update_rollups(mixed, ["gpu"])  # reads old and new files in one scan
    part = date_dir(mixed, "gpu", day_of_ms(START_MS))
    [merged] = compact_partition(default_tables()["gpu"], part)
    t = pq.read_table(merged)
    assert t.schema.equals(GPU_SCHEMA, check_metadata=False)
    assert t.num_rows == 12
    assert t.column("ecc_corrected").null_count == 6  # the old rows: not measured


def test_replay_gives_old_rows_the_v1_defaults(mixed: Path) -> None:
    t0 = dt.datetime.fromtimestamp(START_MS / 1000, dt.UTC)
    rows = read_range(mixed, default_tables()["gpu"], t0, t0 + dt.timedelta(seconds=10), "rack")
    assert rows.num_rows == 12
    for n in GPU_V2_COLUMNS:
        assert rows.column(n).null_count == 0
    old = rows.slice(0, 6)
    np.testing.assert_allclose(
        old.column("thermal_margin_k").to_numpy(),
        DEFAULT_SLOWDOWN_C - old.column("temp_gpu_c").to_numpy(),
    )
    assert old.column("ecc_corrected").to_pylist() == [0] * 6
