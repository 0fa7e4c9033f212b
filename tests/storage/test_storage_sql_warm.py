"""The SQL engine's fast path: one warm connection, small tables in memory, ASOF joins
planned as ASOF joins, one deadline thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.site_tables import write_site_tables
from storage.sql import SqlService
from storage.sql_check import SqlTimeout
from storage.sql_engine import _decoded_bytes
from storage.writer import write_file

START_MS = 1_789_999_200_000
DAY = day_of_ms(START_MS)
TABLES = default_tables()
SLOW = "SELECT count(*) FROM range(1000000000000) a, range(1000) b WHERE a.range % 7 = b.range"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    write_file(
        TABLES["gpu"], synth.gpu_table(2, 4, 60, start_ms=START_MS), date_dir(tmp_path, "gpu", DAY)
    )
    plant = synth.points_table(
        {"CDU-0": {"supply_temp_c": 30.0}}, 12, start_ms=START_MS, dt_ms=5000
    )
    write_file(TABLES["plant"], plant, date_dir(tmp_path, "plant", DAY))
    write_site_tables(tmp_path, {"R0000": "CDU-0", "R0001": "CDU-0"})
    return tmp_path


ASOF = (
    "SELECT g.ts, p.value FROM gpu g JOIN site_racks s ON s.rack = g.rack "
    "ASOF JOIN (SELECT ts, unit, value FROM plant WHERE point = 'supply_temp_c') p "
    "ON p.unit = s.cdu AND g.ts >= p.ts WHERE g.rack = 'R0001' AND g.gpu = 0 ORDER BY g.ts"
)


def test_asof_join_is_not_a_nested_loop(store: Path) -> None:
    with SqlService(store, timeout_s=30, max_rows=1000) as svc:
        plan = "\n".join(str(v) for v in svc.query("EXPLAIN " + ASOF).column(1).to_pylist())
        assert "ASOF" in plan.upper() and "NESTED_LOOP" not in plan.upper().replace(" ", "_")
        rows = svc.query(ASOF).to_pylist()
    assert len(rows) == 60 and all(r["value"] is not None for r in rows)


def test_a_query_after_a_timeout_runs_on_a_fresh_connection(store: Path) -> None:
    # engines other tests of this session left open keep theirs; only ours must go
    before = {t.ident for t in threading.enumerate() if t.name == "sql-deadline"}
    with SqlService(store, timeout_s=0.5, max_rows=1000) as svc:
        assert svc.query("SELECT count(*) AS n FROM gpu").to_pylist() == [{"n": 480}]
        with pytest.raises(SqlTimeout):
            svc.query(SLOW)
        for _ in range(3):  # no late interrupt stops the next queries
            assert svc.query("SELECT count(*) AS n FROM gpu").to_pylist() == [{"n": 480}]
    # one deadline thread per engine, gone with it
    assert not [
        t for t in threading.enumerate() if t.name == "sql-deadline" and t.ident not in before
    ]


def test_small_tables_are_held_in_memory_within_a_budget(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SqlService(store, timeout_s=30, max_rows=1000) as svc:
        svc.query("SELECT count(*) FROM plant")
        svc.query("SELECT count(*) FROM gpu")
        engine = svc._engine
        assert engine is not None
        assert set(engine.datasets._in_memory) == {"plant", "gpu"}
    sizes = {
        t: _decoded_bytes([str(p) for p in (store / t).rglob("*.parquet")], 1 << 30)
        for t in ("gpu", "plant")
    }
    assert sizes["plant"] is not None and sizes["gpu"] is not None
    assert sizes["plant"] < sizes["gpu"]
    monkeypatch.setattr("storage.sql_engine.IN_MEMORY_TABLE_BYTES", sizes["gpu"] - 1)
    with SqlService(store, timeout_s=30, max_rows=1000) as svc:
        assert svc.query("SELECT count(*) AS n FROM gpu").to_pylist() == [{"n": 480}]
        assert svc.query("SELECT count(*) AS n FROM plant").to_pylist() == [{"n": 12}]
        engine = svc._engine
        assert engine is not None
        assert set(engine.datasets._in_memory) == {"plant"}  # gpu is read from its files


def test_a_files_footer_is_kept_when_another_day_changes(store: Path) -> None:
    """Rediscovering gpu because today's directory changed reuses the fragments (and the
    footers pyarrow keeps in them) of unchanged files."""
    import datetime as dt
    import os
    import time

    old = next((store / "gpu").rglob("*.parquet"))
    with SqlService(store, timeout_s=30, max_rows=1000) as svc:
        engine = svc._engine
        assert engine is not None
        datasets = engine.datasets
        datasets._in_memory.clear()
        q = "SELECT count(*) AS n FROM gpu WHERE rack = 'R0001' AND gpu = 1"
        assert svc.query(q).to_pylist() == [{"n": 60}]
        frag = datasets._fragments[str(old)][1]
        nxt = DAY + dt.timedelta(days=1)
        write_file(
            TABLES["gpu"],
            synth.gpu_table(2, 4, 1, start_ms=START_MS + 86_400_000),
            date_dir(store, "gpu", nxt),
        )
        future = time.time() + 5
        os.utime(store / "gpu", (future, future))  # past the 1 s cache guard
        assert svc.query(q).to_pylist() == [{"n": 61}]
        assert datasets._fragments[str(old)][1] is frag
        assert svc.query("SELECT DISTINCT date FROM gpu ORDER BY date").column(0).to_pylist() == [
            DAY,
            nxt,
        ]
