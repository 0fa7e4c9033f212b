"""bench/storage_compare: the generated store, the VictoriaMetrics JSON lines and the queries.

Small sizes only (2 racks x 60 s): the Parquet rows are in the gpu table's sort order, the
plant, power and residual tables exist, and the five documented queries of
docs/sql-examples.md answer over them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from storage_compare_data import (  # noqa: E402
    METRICS,
    Exported,
    generate,
    utc_ms,
    vm_header,
    vm_json_lines,
)
from storage_compare_queries import Window, doc_queries, queries  # noqa: E402

from storage.rollup import update_rollups  # noqa: E402
from storage.sql import SqlService  # noqa: E402

START = "2026-09-21T00:00:00Z"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Exported, bytes]:
    work = tmp_path_factory.mktemp("sc")
    sent: list[bytes] = []
    exp = generate(
        work,
        racks=2,
        seconds=60,
        start_ms=utc_ms(START),
        seed=3,
        pg_seconds=20,
        vm_put=sent.append,
        vm_metrics=("temp_gpu_c",),
        chunk_rows=144 * 25,  # 25 s chunks: several files
        progress=lambda _m: None,
    )
    update_rollups(exp.store)
    return exp, b"".join(sent)


def test_gpu_rows_sorted_and_complete(store: tuple[Exported, bytes]) -> None:
    exp, _ = store
    files = sorted((exp.store / "gpu").rglob("*.parquet"))
    assert len(files) == 3 and exp.rows == 2 * 72 * 60
    for f in files:
        t = pq.read_table(f, columns=["ts", "rack", "gpu"])
        keys = [("rack", "ascending"), ("gpu", "ascending"), ("ts", "ascending")]
        assert t.equals(t.sort_by(keys))
    all_rows = pa.concat_tables(pq.read_table(f, columns=["ts", "rack", "gpu"]) for f in files)
    assert all_rows.group_by(["ts", "rack", "gpu"]).aggregate([]).num_rows == exp.rows
    for name in ("plant", "power", "residual", "site_racks"):
        assert list((exp.store / name).rglob("*.parquet")), name
    assert exp.point_rows["residual"] > 0
    csv_lines = exp.pg_csv["gpu"].read_text().splitlines()
    assert len(csv_lines) == 2 * 72 * 20
    assert csv_lines[0].startswith('"2026-09-21 00:00:40.000+00","R0001",0,')


def test_vm_json_lines_parse(store: tuple[Exported, bytes]) -> None:
    exp, sent = store
    lines = [json.loads(x) for x in sent.decode().splitlines()]
    gpu = [x for x in lines if x["metric"]["__name__"] == "gpu_temp_gpu_c"]
    assert sum(len(x["values"]) for x in gpu) == exp.rows
    assert {x["metric"]["cdu"] for x in gpu} == set(exp.rack_cdu.values())
    names = {x["metric"]["__name__"] for x in lines}
    assert {"plant_supply_temp_c", "power_it_power_w", "residual_outlet_temp_c"} <= names
    for x in lines:
        assert len(x["values"]) == len(x["timestamps"])


def test_vm_json_lines_values() -> None:
    heads = pa.array([vm_header("m", {"a": 'x"y'}), vm_header("m", {"a": "z"})])
    out = vm_json_lines(heads, np.array([[1.5, 2.0], [3.0, 4.25]]), [1000, 2000])
    rows = [json.loads(x) for x in out.decode().splitlines()]
    assert rows[0]["metric"] == {"__name__": "m", "a": 'x"y'}
    assert rows[0]["values"] == [1.5, 2] and rows[0]["timestamps"] == [1000, 2000]
    assert rows[1]["values"] == [3, 4.25]


def test_documented_queries_answer(store: tuple[Exported, bytes]) -> None:
    exp, _ = store
    assert len(doc_queries()) == 5
    w = Window(exp.first_ms, exp.last_ms, exp.rack_ids[0])
    qs = {q.key: q for q in queries(w)}
    svc = SqlService(exp.store)
    try:
        for key, rows in {
            "hottest_gpus": 10,
            "energy_rack_day": 2,
            "pue_day": 1,
            "residual_trend": 1,
            "asof_cdu": 60,
        }.items():
            for sql in qs[key].duck.values():
                t = svc.query(sql)
                assert t.num_rows == rows, (key, sql)
                col = t.column(qs[key].check).to_numpy()
                assert np.isfinite(col).all(), key
    finally:
        svc.close()
    assert len(METRICS) == 9
