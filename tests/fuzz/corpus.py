"""Valid inputs the mutators start from: frames, JSON readings, store messages, SQL texts."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Final

import numpy as np

from streams.codec import encode_frame, gpu_batch, points_batch
from tests.fuzz.mutate import ArrowSeed, arrow_seed
from tests.streams.frames import gpu_columns

#: The fixed "now" of every case [ms since epoch] (2026-09-21T12:53:20Z), so runs repeat.
NOW_MS: Final = 1_790_000_000_000
SEED_TS_MS: Final = NOW_MS - 1_000
RACK: Final = "R0001"
UNIT: Final = "CDU01"
DOCS: Final = Path(__file__).resolve().parents[2] / "docs"


@functools.cache
def gpu_frames() -> tuple[bytes, ...]:
    """Valid telemetry.gpu messages of rack R0001: 1, 2, 8 and 72 GPUs, two value sets."""
    out = [encode_frame(gpu_batch(SEED_TS_MS, RACK, gpu_columns(n, seed))) for n, seed in
           ((1, 0), (2, 1), (8, 2), (72, 3), (72, 4))]  # fmt: skip
    cols = gpu_columns(4, 5)
    cols["gpu"] = np.array([3, 0, 2, 1], dtype=np.uint16)  # not in order: the slow path
    out.append(encode_frame(gpu_batch(SEED_TS_MS, RACK, cols)))
    return tuple(out)


@functools.cache
def gpu_seeds() -> tuple[ArrowSeed, ...]:
    return tuple(arrow_seed(f) for f in gpu_frames())


_POINTS: Final = {
    "supply_temp_c": 45.0,
    "return_temp_c": 55.5,
    "flow_kg_s": 12.5,
    "pump_power_w": 3_000.0,
    "valve_frac": 0.4,
    "fan_pct": 60.0,
    "dp_pa": 80_000.0,
}


@functools.cache
def points_frames() -> tuple[bytes, ...]:
    """Valid plant-unit messages of unit CDU01: 1, 3 and 7 points."""
    items = list(_POINTS.items())
    return tuple(encode_frame(points_batch(SEED_TS_MS, UNIT, dict(items[:k]))) for k in (1, 3, 7))


@functools.cache
def points_seeds() -> tuple[ArrowSeed, ...]:
    return tuple(arrow_seed(f) for f in points_frames())


def _gpu_reading(gpu: int, ts: Any) -> dict[str, Any]:
    return {
        "kind": "gpu", "rack": RACK, "gpu": gpu, "ts": ts, "power_w": 1420.5,
        "energy_mj": 123_456_789, "temp_gpu_c": 61, "temp_mem_c": 70, "sm_clock_mhz": 1980,
        "util_pct": 97, "xid": 0, "clock_event_reasons": 4, "power_limit_w": 1800,
    }  # fmt: skip


def json_docs() -> tuple[Any, ...]:
    """Valid telemetry.ingest documents: one reading, a rack of readings, plant points."""
    iso = "2026-09-21T12:53:19Z"
    return (
        _gpu_reading(3, iso),
        [_gpu_reading(g, SEED_TS_MS) for g in range(4)],
        {"kind": "thermal", "unit": UNIT, "point": "supply_temp_c", "value": 45.1,
         "ts": SEED_TS_MS},
        [{"kind": "power", "unit": "SITE", "point": p, "value": v, "ts": iso}
         for p, v in (("it_power_w", 1.0e6), ("facility_power_w", 1.1e6))],
        [_gpu_reading(0, iso), {"kind": "thermal", "unit": UNIT, "point": "flow_kg_s",
                                "value": 12.0, "ts": iso}],
    )  # fmt: skip


def store_json_docs(table: str) -> tuple[Any, ...]:
    """Valid messages of the store's JSON tables (twin.state, kpi, residuals, alerts)."""
    ts = SEED_TS_MS
    if table == "state":
        return (
            {"ts": ts, "rack": RACK, "gpus": [{"temp_c": 60.1}], "cdu": UNIT},
            {"entity": RACK, "power_w": 1.2e5},
        )
    if table == "kpi":
        return (
            {"ts": ts, "scope": "site", "name": "pue_frac", "value": 1.12},
            [{"ts": ts, "scope": RACK, "name": "power_w", "value": 1.2e5},
             {"ts": ts / 1000, "scope": "site", "name": "it_power_w", "value": 1e6}],
        )  # fmt: skip
    if table == "residual":
        return (
            {"ts": ts, "entity": RACK, "quantity": "outlet_temp_c", "measured": 40.0,
             "expected": 39.5, "residual": 0.5},
            {"quantity": "supply_temp_c", "measured": None, "expected": 45.0, "residual": 0.0},
        )  # fmt: skip
    if table == "alerts":
        return (
            {"ts": "2026-09-21T12:53:19+00:00", "entity": RACK, "alert_id": "a1",
             "kind": "thermal_drift", "severity": "warning", "state": "firing",
             "message": "outlet 3.1 K above model"},
            {"entity": UNIT, "kind": "leak", "state": "resolved"},
        )  # fmt: skip
    raise KeyError(table)


def sql_examples() -> tuple[str, ...]:
    """Every query of docs/sql-examples.md, plus plain reads of each view."""
    found = re.findall(r"```sql\n(.*?)```", (DOCS / "sql-examples.md").read_text(), flags=re.S)
    views = ("gpu", "rack", "plant", "power", "kpi", "residual", "alerts", "state", "gpu_1m")
    simple = [f"SELECT * FROM {v} ORDER BY ts LIMIT 5" for v in views]
    simple += [
        "SELECT 1",
        "SELECT rack, avg(power_w) AS p FROM gpu WHERE ts > TIMESTAMPTZ '2026-09-21' "
        "GROUP BY rack ORDER BY rack",
        "SELECT count(*) FROM gpu g JOIN site_racks s ON s.rack = g.rack",
    ]
    return tuple(found) + tuple(simple)


#: Statements that must be refused, or must not change anything when they run. {STORE} is
#: the store's directory, {SECRET} a file outside it whose content must never come back.
SQL_ATTACKS: Final = (
    "COPY gpu TO '{STORE}/gpu/date=2026-09-21/evil.parquet'",
    "COPY (SELECT 1) TO 'out.csv'",
    "EXPLAIN ANALYZE COPY gpu TO '{STORE}/gpu/date=2026-09-21/evil.parquet'",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE CREATE MACRO m(x) AS x + 1",
    "EXPLAIN ANALYZE INSERT INTO gpu SELECT * FROM gpu",
    "EXPLAIN ANALYZE CREATE OR REPLACE VIEW gpu AS SELECT 1 AS x",
    "EXPLAIN ANALYZE DROP VIEW kpi",
    "EXPLAIN ANALYZE SET enable_external_access = true",
    "EXPLAIN ANALYZE ATTACH '{STORE}/evil.db'",
    "EXPLAIN COPY gpu TO 'x.parquet'",
    "PIVOT (COPY gpu TO 'x.parquet') ON rack USING count(*)",
    "PIVOT gpu ON rack USING count(*)",
    "PREPARE p AS COPY gpu TO 'x.parquet'",
    "EXECUTE p",
    "ATTACH '{STORE}/evil.db' AS e",
    "ATTACH ':memory:' AS m",
    "DETACH memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{STORE}/evil.duckdb_extension'",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW gpu AS SELECT 1 AS x",
    "CREATE MACRO m(x) AS x + 1",
    "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "DROP VIEW gpu",
    "ALTER VIEW gpu RENAME TO g",
    "INSERT INTO gpu SELECT * FROM gpu",
    "UPDATE gpu SET power_w = 0",
    "DELETE FROM gpu",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET allowed_directories",
    "SET memory_limit = '100GB'",
    "PRAGMA enable_profiling",
    "PRAGMA database_list",
    "CALL pragma_version()",
    "EXPORT DATABASE '{STORE}/export'",
    "IMPORT DATABASE '{STORE}'",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "USE memory",
    "SELECT * FROM read_text('{SECRET}')",
    "SELECT * FROM read_blob('{SECRET}')",
    "SELECT * FROM read_csv_auto('{SECRET}')",
    "SELECT * FROM read_text('{STORE}/../secret.txt')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '{SECRET}'",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM glob('{STORE}/../*')",
    "SELECT getenv('HOME')",
    "SELECT current_setting('allowed_directories')",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM read_parquet('{STORE}/gpu/*/*.parquet', filename = true) LIMIT 1",
    "SELECT * FROM query('COPY gpu TO ''x.parquet''')",
    "SELECT * FROM query_table('gpu') LIMIT 1",
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r",
    "SELECT count(*) FROM range(10000000000)",
    "SELECT * FROM gpu a, gpu b, gpu c LIMIT 10",
    "SELECT repeat('x', 1000000000)",
    "SELECT list(range(100000000))",
    "SELECT 1e308 * 10, 'NaN'::DOUBLE, 'infinity'::DOUBLE",
    "SELECT X'00FF'::BLOB AS b",
    "SELECT '\ud800' AS s",
    "SUMMARIZE gpu",
    "DESCRIBE gpu",
    "SHOW TABLES",
    "FROM gpu LIMIT 1",
)


def store_arrow_frames(table: str) -> tuple[bytes, ...]:
    return gpu_frames() if table == "gpu" else points_frames()


def store_arrow_seeds(table: str) -> tuple[ArrowSeed, ...]:
    return gpu_seeds() if table == "gpu" else points_seeds()


def dump(doc: Any) -> bytes:
    return json.dumps(doc).encode()
