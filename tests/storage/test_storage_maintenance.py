"""Rollups (hand-computed), compaction (rows and offsets preserved), retention."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.testing import assert_allclose

from storage import synth
from storage.compact import compact_table, remove_replaced
from storage.layout import date_dir, default_tables, list_parts
from storage.offsets import RangeSet, store_offsets
from storage.retention import apply_retention, expired_dates
from storage.rollup import update_rollups
from storage.sql import SqlService
from storage.writer import write_file
from streams.schema import GPU_SCHEMA, POINTS_SCHEMA

HOUR_MS = 1_789_999_200_000  # an exact UTC hour
DAY = dt.datetime.fromtimestamp(HOUR_MS / 1000, tz=dt.UTC).date()
TABLES = default_tables()


def _gpu_rows(ts_s: list[int], gpu: list[int], power: list[float]) -> pa.Table:
    n = len(ts_s)
    base = synth.gpu_table(1, 1, n).to_pydict()
    base["ts"] = [HOUR_MS + 1000 * t for t in ts_s]
    base["gpu"] = gpu
    base["power_w"] = power
    base["rack"] = ["R1"] * n
    base["energy_mj"] = [1000 + 10 * t for t in ts_s]
    return pa.table({k: pa.array(v) for k, v in base.items()}).cast(
        GPU_SCHEMA.remove_metadata(), safe=False
    )


def _write(rows: pa.Table, table: str = "gpu") -> Path:
    return write_file(TABLES[table], rows, date_dir(DATA, table, DAY))


DATA = Path()


def test_rollups_hand_computed_and_incremental(tmp_path: Path) -> None:
    global DATA
    DATA = tmp_path
    # minute 0: t = 0, 20 s for both GPUs; the t = 40 s sample of minute 0 arrives late.
    _write(_gpu_rows([0, 0, 20, 20], [0, 1, 0, 1], [100, 10, 200, 20]))
    update_rollups(tmp_path)
    sql = SqlService(tmp_path)
    r = sql.query("SELECT power_w_max AS m, n FROM gpu_1m WHERE gpu = 0").to_pylist()
    assert r == [{"m": 200.0, "n": 2}]
    _write(_gpu_rows([60, 60, 40, 40], [0, 1, 0, 1], [400, 40, 300, 30]))
    update_rollups(tmp_path)
    g = sql.query(
        "SELECT n, power_w_min, power_w_mean, power_w_max, power_w_last, energy_mj_first, "
        "energy_mj_last FROM gpu_1m WHERE gpu = 0 ORDER BY ts"
    ).to_pylist()
    assert g == [
        {"n": 3, "power_w_min": 100.0, "power_w_mean": 200.0, "power_w_max": 300.0,
         "power_w_last": 300.0, "energy_mj_first": 1000, "energy_mj_last": 1400},
        {"n": 1, "power_w_min": 400.0, "power_w_mean": 400.0, "power_w_max": 400.0,
         "power_w_last": 400.0, "energy_mj_first": 1600, "energy_mj_last": 1600},
    ]  # fmt: skip
    rk = sql.query(
        "SELECT n, power_w_min, power_w_mean, power_w_max, power_w_last FROM rack_1m ORDER BY ts"
    )
    assert_allclose(
        np.array([list(d.values()) for d in rk.to_pylist()], dtype=float),
        [[3, 110, 220, 330, 330], [1, 440, 440, 440, 440]],
    )
    h = sql.query("SELECT n, power_w_mean, power_w_last FROM rack_1h").to_pylist()
    assert h == [{"n": 4, "power_w_mean": 275.0, "power_w_last": 440.0}]
    gh = sql.query("SELECT power_w_mean FROM gpu_1h WHERE gpu = 1").column(0).to_pylist()
    assert_allclose(gh, [25.0])
    assert update_rollups(tmp_path) == []  # nothing new, nothing rewritten


def test_plant_rollup(tmp_path: Path) -> None:
    rows = pa.table(
        {
            "ts": [HOUR_MS, HOUR_MS + 30_000, HOUR_MS + 59_000, HOUR_MS + 61_000],
            "unit": ["CDU-1"] * 4,
            "point": ["supply_temp_c"] * 4,
            "value": [45.0, 46.0, 44.0, 47.0],
        }
    ).cast(POINTS_SCHEMA.remove_metadata())
    write_file(TABLES["plant"], rows, date_dir(tmp_path, "plant", DAY))
    update_rollups(tmp_path)
    got = SqlService(tmp_path).query(
        "SELECT source, n, value_min, value_mean, value_max, value_last FROM plant_1m ORDER BY ts"
    )
    assert got.to_pylist()[0] == {
        "source": "plant", "n": 3, "value_min": 44.0, "value_mean": 45.0,
        "value_max": 46.0, "value_last": 44.0,
    }  # fmt: skip


def test_compaction_preserves_rows_and_offsets(tmp_path: Path) -> None:
    rows = synth.gpu_table(2, 8, 30, start_ms=HOUR_MS, seed=4)
    d = date_dir(tmp_path, "gpu", DAY)
    tp = ("telemetry.gpu", 0)
    for i in range(3):
        part = rows.slice(i * 160, 160)
        write_file(TABLES["gpu"], part, d, offsets={tp: RangeSet([(i * 10, i * 10 + 9)])})
    before = store_offsets(tmp_path, ["gpu"])
    [merged] = compact_table(TABLES["gpu"], tmp_path)
    assert list_parts(tmp_path / "gpu") == [merged]
    back = pq.read_table(merged)
    key = ["rack", "gpu", "ts"]
    assert back.sort_by([(k, "ascending") for k in key]).equals(
        pq.read_table(merged).sort_by([(k, "ascending") for k in key])
    )
    assert back.num_rows == 480
    assert set(zip(*(back.column(k).to_pylist() for k in key), strict=True)) == set(
        zip(*(rows.slice(0, 480).column(k).to_pylist() for k in key), strict=True)
    )
    assert store_offsets(tmp_path, ["gpu"]) == before == {tp: RangeSet([(0, 29)])}


def test_interrupted_compaction_is_cleaned_up(tmp_path: Path) -> None:
    d = date_dir(tmp_path, "gpu", DAY)
    a = write_file(TABLES["gpu"], synth.gpu_table(1, 2, 3, start_ms=HOUR_MS), d)
    b = write_file(TABLES["gpu"], synth.gpu_table(1, 2, 3, start_ms=HOUR_MS + 3000), d)
    # A merged file whose inputs were not deleted yet (crash between rename and unlink).
    both = pa.concat_tables([pq.read_table(a), pq.read_table(b)])
    m = write_file(TABLES["gpu"], both, d, replaces=[a.name, b.name])
    assert remove_replaced(tmp_path / "gpu") == 2
    assert list_parts(tmp_path / "gpu") == [m]


def test_retention(tmp_path: Path) -> None:
    today = dt.date(2026, 11, 28)
    assert expired_dates([dt.date(2026, 11, 25), dt.date(2026, 11, 26)], today, 2) == [
        dt.date(2026, 11, 25)
    ]
    for day in (dt.date(2026, 11, 1), dt.date(2026, 11, 27)):
        write_file(TABLES["gpu"], synth.gpu_table(1, 1, 1), date_dir(tmp_path, "gpu", day))
    removed = apply_retention(tmp_path, TABLES, today, {"gpu": 7})
    assert removed == [date_dir(tmp_path, "gpu", dt.date(2026, 11, 1))]
    assert [p.parent.name for p in list_parts(tmp_path / "gpu")] == ["date=2026-11-27"]


def test_merge_groups_bound_the_rows_merged_at_once() -> None:
    from pathlib import Path

    from storage.compact import _merge_groups

    files = [(Path(f"f{i}"), n) for i, n in enumerate([300, 300, 300, 900, 100, 100])]
    groups = _merge_groups(files, max_rows=700)
    # [f0,f1] (600), [f2] alone is dropped, [f3] alone dropped, [f4,f5] (200)
    assert [[p.name for p in g] for g in groups] == [["f0", "f1"], ["f4", "f5"]]


def _far_rows(ts_ms: int) -> pa.Table:
    t = synth.gpu_table(1, 2, 2)
    return t.set_column(0, "ts", pa.array([ts_ms] * t.num_rows, pa.int64()).cast(t.schema[0].type))


def test_rollups_survive_samples_in_year_9999_and_1950(tmp_path: Path) -> None:
    """Bad rows stored before validation existed must not stop rollups for good."""
    gdef = TABLES["gpu"]
    for ms in (253_402_300_799_000, -631_152_000_000):  # 9999-12-31T23:59:59, 1950
        rows = _far_rows(ms)
        day = dt.date(9999, 12, 31) if ms > 0 else dt.date(1950, 1, 1)
        write_file(gdef, rows, date_dir(tmp_path, "gpu", day))
    write_file(gdef, _gpu_rows([0, 1], [0, 0], [100.0, 200.0]), date_dir(tmp_path, "gpu", DAY))
    written = update_rollups(tmp_path)
    assert written  # the ordinary hour is rolled up
    assert not (tmp_path / "gpu_1m" / "date=9999-12-31").exists()


def test_a_failing_step_does_not_stop_the_others(tmp_path: Path) -> None:
    from storage.maintenance import MaintenanceError, run_maintenance

    write_file(TABLES["gpu"], _gpu_rows([0], [0], [100.0]), date_dir(tmp_path, "gpu", DAY))
    old = date_dir(tmp_path, "state", DAY - dt.timedelta(days=400))
    old.mkdir(parents=True)
    (tmp_path / "_rollup_state.json").mkdir()  # unreadable and unwritable: rollups fail
    try:
        run_maintenance(tmp_path, today=DAY)
    except MaintenanceError as exc:
        assert [s for s, _ in exc.failures] == ["rollups"]
        assert exc.counts["expired_partitions"] == 1  # retention still ran
    else:
        raise AssertionError("a failed rollup must be reported")
    assert not old.exists()
