"""Every documented SQL example answers on a store holding only its first minute of data.

The rollup views (gpu_1m, gpu_1h) used to stay empty until the first maintenance pass (two
minutes into a demo): the sink now brings them up to date after each flush, which is what
this store goes through (two 30 s flushes, the demo's interval).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.rollup import update_rollups
from storage.site_tables import write_site_tables
from storage.sql import SqlService
from storage.writer import write_file
from streams.schema import TS_TYPE

ROOT = Path(__file__).resolve().parents[2]
TABLES = default_tables()
START_MS = 1_790_000_017_000  # not on a minute: a demo starts whenever it starts
FLUSH_MS = 30_000


def _documented() -> list[str]:
    doc = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "sql-examples.md").read_text(), re.S)
    # the README's first example, as the demo's banner prints it
    readme = re.findall(r"curl -d '(SELECT [^']*)'", (ROOT / "README.md").read_text())
    assert len(doc) == 5 and readme, (len(doc), readme)
    return [*readme, *doc]


def _flushes(table: pa.Table) -> list[pa.Table]:
    ts = pc.cast(table["ts"], pa.int64()).to_numpy()
    return [
        table.filter(pa.array((ts >= lo) & (ts < lo + FLUSH_MS)))
        for lo in range(START_MS, START_MS + 60_000, FLUSH_MS)
    ]


@pytest.fixture(scope="module")
def first_minute(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("store")
    day = day_of_ms(START_MS)
    gpu = synth.gpu_table(2, 4, 60, start_ms=START_MS, dt_ms=1000, seed=3)
    plant = synth.points_table(
        {"CDU01": {"supply_temp_c": 40.0}}, 12, start_ms=START_MS, dt_ms=5000, seed=4
    )
    power = synth.points_table(
        {"SITE": {"facility_power_w": 1.2e6, "it_power_w": 1.0e6}}, 12, start_ms=START_MS,
        dt_ms=5000, seed=5,
    )  # fmt: skip
    n = 12
    residual = pa.table(
        {
            "ts": pa.array(START_MS + 5000 * np.arange(n), pa.int64()).cast(TS_TYPE),
            "entity": ["R0001"] * n,
            "quantity": ["outlet_temp_c"] * n,
            "measured": np.full(n, 40.0),
            "expected": np.full(n, 39.8),
            "residual": np.full(n, 0.2),
        }
    )
    assert set(gpu["rack"].to_pylist()) == {"R0000", "R0001"}
    write_site_tables(d, {"R0000": "CDU01", "R0001": "CDU01"})
    tables = {"gpu": gpu, "plant": plant, "power": power, "residual": residual}
    for k in range(2):  # two flushes, each followed by the sink's rollup update
        for name, rows in tables.items():
            write_file(TABLES[name], _flushes(rows)[k], date_dir(d, name, day))
        update_rollups(d)
    return d


@pytest.mark.parametrize("k", range(6))
def test_every_documented_example_answers_in_the_first_minute(first_minute: Path, k: int) -> None:
    sql = _documented()[k]
    got = SqlService(first_minute).query(sql)
    assert got.num_rows > 0, sql
    first = got.to_pylist()[0]
    assert all(v is not None for v in first.values()), (sql, first)
