"""Rollups updated after every flush equal rollups computed once from all rows.

The sink brings the rollups up to date after each flush (minutes of the new files only,
the hour row merged from its minutes); whatever the order the files come in (late rows,
an hour boundary, compaction replacing files), the result must be what one computation
over all raw rows gives.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.testing import assert_allclose

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables, list_parts
from storage.rollup import STATE_FILE, update_rollups
from storage.rollup_schema import rollup_tables
from storage.writer import write_file

TABLES = default_tables()
HOUR_START_MS = 1_789_999_200_000  # an exact UTC hour
START_MS = HOUR_START_MS + 3600_000 - 150_000  # 2.5 min before the next hour


def _rollups(d: Path) -> dict[str, pa.Table]:
    out = {}
    for name, tdef in rollup_tables().items():
        files = list_parts(d / name)
        if files:
            t = pa.concat_tables([pq.read_table(f, schema=tdef.schema) for f in files])
            out[name] = t.sort_by([(k, "ascending") for k in tdef.sort_keys])
    return out


def _assert_same(got: dict[str, pa.Table], want: dict[str, pa.Table]) -> None:
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.num_rows == w.num_rows, name
        for col in w.column_names:
            a, b = g[col].to_numpy(zero_copy_only=False), w[col].to_numpy(zero_copy_only=False)
            if col.endswith("_mean"):
                assert_allclose(a.astype(float), b.astype(float), rtol=1e-12, err_msg=name)
            else:
                assert (a == b).all() or str(a) == str(b), (name, col)


def _write(d: Path, table: str, rows: pa.Table) -> Path:
    day = day_of_ms(int(pc.min(rows["ts"]).cast(pa.int64()).as_py()))
    return write_file(TABLES[table], rows, date_dir(d, table, day))


def test_rollups_after_each_flush_equal_one_computation(tmp_path: Path) -> None:
    live = tmp_path / "live"
    # five minutes of 1 s samples across an hour boundary, 2 racks x 3 GPUs
    gpu = synth.gpu_table(2, 3, 300, start_ms=START_MS, dt_ms=1000, seed=5)
    power = synth.points_table(
        {"SITE": {"facility_power_w": 1.1e6, "it_power_w": 1.0e6}}, 60, start_ms=START_MS,
        dt_ms=5000, seed=6,
    )  # fmt: skip
    ts = pc.cast(gpu["ts"], pa.int64()).to_numpy()
    flushes = [(START_MS + k * 30_000, START_MS + (k + 1) * 30_000) for k in range(10)]
    files: list[Path] = []
    for k, (lo, hi) in enumerate(flushes):
        sel = (ts >= lo) & (ts < hi)
        if k == 0:
            sel = (ts >= lo) & (ts < lo + 15_000)  # the rest of the first 30 s comes late ...
        if k == 3:
            sel |= (ts >= START_MS + 15_000) & (ts < START_MS + 30_000)  # ... with flush 3
        rows = gpu.filter(pa.array(sel))
        files.append(_write(live, "gpu", rows))
        pts = pc.cast(power["ts"], pa.int64()).to_numpy()
        _write(live, "power", power.filter(pa.array((pts >= lo) & (pts < hi))))
        update_rollups(live)
        assert (live / "gpu_1m").exists() and (live / "gpu_1h").exists()
    # compaction: two files replaced by one with the same rows
    merged = pa.concat_tables([pq.read_table(f) for f in files[4:6]])
    for f in files[4:6]:
        f.unlink()
    _write(live, "gpu", merged)
    update_rollups(live)

    once = tmp_path / "once"
    _write(once, "gpu", gpu)
    _write(once, "power", power)
    update_rollups(once)
    want = _rollups(once)
    _assert_same(_rollups(live), want)
    assert want["gpu_1h"].num_rows == 2 * 2 * 3  # two hours x 6 GPUs
    assert int(pc.sum(want["gpu_1m"]["n"]).as_py()) == gpu.num_rows

    # a lost state file recomputes everything, to the same result
    (live / STATE_FILE).unlink()
    update_rollups(live)
    _assert_same(_rollups(live), want)
    # a 1-minute file lost, then a new file in its hour: the hour is rebuilt from raw rows
    (last_hour,) = [f for f in list_parts(live / "gpu_1m") if f.name == "h15.parquet"]
    last_hour.unlink()
    shutil.copy(files[-1], files[-1].with_name("part-copy.parquet"))  # new file: dirty minutes
    dup = tmp_path / "dup"
    shutil.copytree(once, dup)
    _write(dup, "gpu", pq.read_table(files[-1]))  # same duplicate row in the reference
    for p in list_parts(dup / "gpu_1m") + list_parts(dup / "gpu_1h"):
        p.unlink()
    (dup / STATE_FILE).unlink()
    update_rollups(dup)
    update_rollups(live)
    _assert_same(_rollups(live), _rollups(dup))


def test_hour_from_minutes_matches_raw_stats(tmp_path: Path) -> None:
    gpu = synth.gpu_table(1, 2, 600, start_ms=HOUR_START_MS, dt_ms=1000, seed=9)
    _write(tmp_path, "gpu", gpu)
    update_rollups(tmp_path)
    hour = _rollups(tmp_path)["gpu_1h"]
    for g in (0, 1):
        rows = gpu.filter(pc.equal(gpu["gpu"], g))
        h = hour.filter(pc.equal(hour["gpu"], g))
        p = rows["power_w"].to_numpy().astype(np.float64)
        assert h["n"][0].as_py() == rows.num_rows
        assert_allclose(h["power_w_mean"][0].as_py(), p.mean(), rtol=1e-9)
        assert h["power_w_min"][0].as_py() == p.min() and h["power_w_max"][0].as_py() == p.max()
        assert h["power_w_last"][0].as_py() == p[-1]
        e = rows["energy_mj"].to_numpy()
        assert h["energy_mj_first"][0].as_py() == e[0] and h["energy_mj_last"][0].as_py() == e[-1]
