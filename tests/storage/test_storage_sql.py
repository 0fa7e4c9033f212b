"""SqlService: views over the store, and every refusal of the sandbox."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.sql import SqlRefused, SqlService, check_statement, to_csv, to_json, to_text
from storage.writer import write_file

START_MS = 1_790_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Path:
    t = synth.gpu_table(2, 4, 120, start_ms=START_MS, seed=3)
    gdef = default_tables()["gpu"]
    write_file(gdef, t, date_dir(tmp_path, "gpu", day_of_ms(START_MS)))
    return tmp_path


@pytest.fixture
def svc(store: Path) -> SqlService:
    return SqlService(store, timeout_s=5, max_rows=500)


def test_views_exist_even_without_files(tmp_path: Path) -> None:
    s = SqlService(tmp_path)
    names = set(s.views())
    want = {"gpu", "rack", "plant", "power", "kpi", "residual", "alerts", "state", "site_racks"}
    want |= {f"{t}_{r}" for t in ("gpu", "rack", "plant") for r in ("1m", "1h")}
    assert want <= names
    res = s.query("SELECT * FROM gpu")
    assert res.num_rows == 0
    assert "power_w" in res.column_names and "date" in res.column_names
    assert s.query("SELECT * FROM kpi").column_names == ["ts", "scope", "name", "value", "date"]


def test_query_reads_the_store(svc: SqlService) -> None:
    res = svc.query("SELECT count(*) AS n, count(DISTINCT rack) AS r FROM gpu")
    assert res.to_pylist() == [{"n": 2 * 4 * 120, "r": 2}]
    rack = svc.query("SELECT n_gpus, power_w FROM rack ORDER BY ts, rack LIMIT 1")
    first = svc.query(
        "SELECT sum(power_w) AS p FROM gpu WHERE rack = 'R0000' AND ts = (SELECT min(ts) FROM gpu)"
    )
    assert rack.column("n_gpus").to_pylist() == [4]
    np.testing.assert_allclose(rack.column("power_w")[0].as_py(), first.column("p")[0].as_py())


def test_new_files_appear_in_views(tmp_path: Path) -> None:
    s = SqlService(tmp_path)
    assert s.query("SELECT count(*) AS n FROM gpu").column("n")[0].as_py() == 0
    t = synth.gpu_table(1, 2, 3, start_ms=START_MS)
    write_file(default_tables()["gpu"], t, date_dir(tmp_path, "gpu", day_of_ms(START_MS)))
    assert s.query("SELECT count(*) AS n FROM gpu").column("n")[0].as_py() == 6


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT 1) TO 'out.csv'",
        "COPY gpu TO '/tmp/x.parquet'",
        "ATTACH '/tmp/evil.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW gpu",
        "SET enable_external_access = true",
        "PRAGMA version",
        "CALL pragma_version()",
        "INSERT INTO gpu SELECT * FROM gpu",
        "SELECT 1; SELECT 2",
        "SELECT 1; COPY (SELECT 1) TO 'x'",
        "EXPORT DATABASE '/tmp/x'",
        "DETACH memory",
    ],
)
def test_parse_level_refusals(svc: SqlService, sql: str) -> None:
    with pytest.raises(SqlRefused):
        svc.query(sql)


def test_refusal_messages_are_clear() -> None:
    with pytest.raises(SqlRefused, match="only SELECT queries are allowed; COPY"):
        check_statement("COPY (SELECT 1) TO 'x.csv'")
    with pytest.raises(SqlRefused, match="one statement per query, got 2"):
        check_statement("SELECT 1; SELECT 2")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_parquet('{store}/../outside.parquet')",
        "SELECT * FROM read_csv_auto('{store}/../outside.csv')",
    ],
)
def test_file_access_outside_the_store_is_refused(svc: SqlService, store: Path, sql: str) -> None:
    outside = store.parent / "outside.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(SqlRefused, match="outside the store"):
        svc.query(sql.format(store=store))


def test_settings_cannot_be_changed_from_a_select(svc: SqlService) -> None:
    with pytest.raises(SqlRefused):
        svc.query("SELECT set_config('enable_external_access', 'true')")
    with pytest.raises(SqlRefused):
        svc.query("SELECT * FROM query('SET enable_external_access = true')")


def test_row_limit(svc: SqlService) -> None:
    with pytest.raises(SqlRefused, match="more than 500 rows"):
        svc.query("SELECT * FROM gpu")
    assert svc.query("SELECT * FROM gpu LIMIT 500").num_rows == 500


def test_time_limit(store: Path) -> None:
    s = SqlService(store, timeout_s=0.5)
    with pytest.raises(SqlRefused, match="time limit"):
        s.query(
            "SELECT count(*) FROM range(1000000000000) a, range(1000) b WHERE a.range % 7 = b.range"
        )


def test_renderers() -> None:
    t = pa.table({"a": [1, 2], "b": ["x", None]})
    assert to_csv(t).splitlines() == ['"a","b"', '1,"x"', "2,"]
    assert to_json(t) == '[{"a": 1, "b": "x"}, {"a": 2, "b": null}]'
    assert to_text(t).splitlines()[2].split() == ["1", "x"]
