"""Every query of docs/sql-examples.md, run on generated data and checked with numpy."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from numpy.testing import assert_allclose

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.rollup import update_rollups
from storage.site_tables import write_site_tables
from storage.sql import SqlService
from storage.writer import write_file
from streams.schema import TS_TYPE

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql-examples.md"
START_MS = 1_789_999_200_000  # an exact UTC hour
STEPS = 2 * 3600 // 10  # two hours at 10 s
TABLES = default_tables()


def _queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    d = tmp_path_factory.mktemp("store")
    day = day_of_ms(START_MS)
    gpu = synth.gpu_table(2, 4, STEPS, start_ms=START_MS, dt_ms=10_000, seed=11)
    write_file(TABLES["gpu"], gpu, date_dir(d, "gpu", day))
    plant = synth.points_table(
        {"CDU-A": {"supply_temp_c": 45.0}, "CDU-B": {"supply_temp_c": 44.0}},
        STEPS // 3,
        start_ms=START_MS + 5_000,
        dt_ms=30_000,
        seed=12,
    )
    write_file(TABLES["plant"], plant, date_dir(d, "plant", day))
    power = synth.points_table(
        {"SITE": {"facility_power_w": 1.1e6, "it_power_w": 1.0e6}}, STEPS, noise=0.0
    )
    write_file(TABLES["power"], power, date_dir(d, "power", day_of_ms(1_790_000_000_000)))
    n = 60
    resid = pa.table(
        {
            "ts": pa.array(START_MS + 60_000 * np.arange(n), pa.int64()).cast(TS_TYPE),
            "entity": ["R0001"] * n,
            "quantity": ["outlet_temp_c"] * n,
            "measured": np.full(n, 40.0),
            "expected": np.full(n, 39.0),
            "residual": np.arange(n) * 0.1,
        }
    )
    write_file(TABLES["residual"], resid, date_dir(d, "residual", day))
    write_site_tables(d, {"R0000": "CDU-A", "R0001": "CDU-B"})
    update_rollups(d)
    return d, gpu


def test_doc_has_the_five_examples() -> None:
    assert len(_queries()) == 5


def test_hottest_gpus(world: tuple[Path, pa.Table]) -> None:
    d, gpu = world
    got = SqlService(d).query(_queries()[0])
    cut = pc.greater_equal(
        gpu["ts"], pa.scalar(dt.datetime.fromtimestamp(START_MS / 1000 + 3600, dt.UTC), TS_TYPE)
    )
    last = gpu.filter(cut)
    ref = last.group_by(["rack", "gpu"]).aggregate([("temp_gpu_c", "max")])
    top = np.sort(ref["temp_gpu_c_max"].to_numpy())[::-1][: got.num_rows]
    assert got.num_rows == 8
    assert_allclose(got["temp_max_c"].to_numpy(), top)


def test_pue_by_day(world: tuple[Path, pa.Table]) -> None:
    got = SqlService(world[0]).query(_queries()[1])
    assert got.num_rows == 1
    assert_allclose(got["pue"].to_numpy(), [1.1])


def test_residual_trend(world: tuple[Path, pa.Table]) -> None:
    got = SqlService(world[0]).query(_queries()[2])
    assert got.num_rows == 12
    # buckets of 5 one-minute residuals 0.1 * k: mean of bucket b is 0.1 * (5 b + 2)
    assert_allclose(got["residual_mean_k"].to_numpy(), 0.1 * (5 * np.arange(12) + 2))
    assert got["n"].to_pylist() == [5] * 12


def test_asof_join(world: tuple[Path, pa.Table]) -> None:
    d = world[0]
    got = SqlService(d).query(_queries()[3])
    svc = SqlService(d)
    plant = svc.query(
        "SELECT ts, value FROM plant WHERE unit = 'CDU-B' AND point = 'supply_temp_c' ORDER BY ts"
    )
    p_ts = plant["ts"].cast(pa.int64()).to_numpy()
    g_ts = got["ts"].cast(pa.int64()).to_numpy()
    # Inner ASOF join: GPU samples before the first CDU sample have no partner.
    assert got.num_rows == int(np.sum(g_ts >= p_ts[0]))
    idx = np.searchsorted(p_ts, g_ts, side="right") - 1
    assert_allclose(got["cdu_supply_temp_c"].to_numpy(), plant["value"].to_numpy()[idx])


def test_energy_per_rack_per_day(world: tuple[Path, pa.Table]) -> None:
    d, gpu = world
    got = SqlService(d).query(_queries()[4])
    e = gpu.group_by(["rack", "gpu"]).aggregate([("energy_mj", "max"), ("energy_mj", "min")])
    per_rack: dict[str, float] = {}
    for row in e.to_pylist():
        per_rack[row["rack"]] = per_rack.get(row["rack"], 0) + (
            row["energy_mj_max"] - row["energy_mj_min"]
        )
    assert got["rack"].to_pylist() == sorted(per_rack)
    assert_allclose(got["energy_kwh"].to_numpy(), [per_rack[r] / 3.6e9 for r in sorted(per_rack)])
