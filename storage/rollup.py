"""1-minute and 1-hour rollups (min/mean/max/last), kept current from new files.

Each new source file marks the hours it covers (from its ts statistics) as dirty; every dirty
hour is recomputed from all source rows of that hour and its rollup file
``<rollup>/date=D/hHH.parquet`` is replaced atomically. Late or re-compacted files therefore
only cost a recomputation of their hours, and a rollup never double-counts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.layout import TEMP_PREFIX, date_dir, list_parts
from storage.rollup_schema import (
    GPU_HEALTH,
    GPU_METRICS,
    RACK_METRICS,
    RESOLUTIONS,
    rollup_tables,
)
from storage.writer import fsync_dir, write_file

log = logging.getLogger("storage.rollup")

STATE_FILE: Final = "_rollup_state.json"

#: Source tables -> the rollup families computed from them.
SOURCES: Final = {"gpu": ("gpu", "rack"), "plant": ("plant",), "power": ("plant",)}


def _stats(expr: str, name: str) -> str:
    return (
        f"min({expr}) AS {name}_min, avg({expr}) AS {name}_mean, "
        f"max({expr}) AS {name}_max, arg_max({expr}, ts) AS {name}_last"
    )


def _gpu_sql(src: str, width_s: int, columns: frozenset[str] = frozenset(GPU_HEALTH)) -> str:
    stats = ", ".join(_stats(m, m) for m in GPU_METRICS)
    # v2 health fields: NULL where no file of the hour has the column (all written by v1)
    health = ", ".join(
        f"{agg}({col}) AS {col}_{suffix}" if col in columns else f"NULL AS {col}_{suffix}"
        for col, (agg, suffix) in GPU_HEALTH.items()
    )
    return (
        f"SELECT time_bucket(INTERVAL '{width_s} seconds', ts) AS ts, rack, gpu, "
        f"count(*) AS n, {stats}, arg_min(energy_mj, ts) AS energy_mj_first, "
        f"arg_max(energy_mj, ts) AS energy_mj_last, {health} FROM {src} GROUP BY ALL"
    )


def _rack_sql(src: str, width_s: int) -> str:
    inst = ", ".join(f"{sql} AS {name}" for name, sql in RACK_METRICS.items())
    stats = ", ".join(_stats(m, m) for m in RACK_METRICS)
    return (
        f"WITH inst AS (SELECT ts, rack, {inst} FROM {src} GROUP BY ts, rack) "
        f"SELECT time_bucket(INTERVAL '{width_s} seconds', ts) AS ts, rack, count(*) AS n, "
        f"{stats} FROM inst GROUP BY ALL"
    )


def _plant_sql(src: str, width_s: int, source: str) -> str:
    return (
        f"SELECT time_bucket(INTERVAL '{width_s} seconds', ts) AS ts, '{source}' AS source, "
        f"unit, point, count(*) AS n, {_stats('value', 'value')} FROM {src} GROUP BY ALL"
    )


#: Hours [ms since epoch] rollups are computed for: 1970-01-01 .. 9999-12-30. A bucket's
#: end must still be a datetime (9999-12-31T23:00 + 1 h is not); rows beyond are left out.
_HOUR_MS: Final = 3_600_000
_FIRST_HOUR_MS: Final = 0
_LAST_HOUR_MS: Final = 253_402_128_000_000  # 9999-12-30T00:00Z


def _hours_of(path: Path) -> set[dt.datetime]:
    """Hours [UTC] holding rows of a file, from its ts column (raw int64, never overflows).

    Read from the rows, not the min/max statistics: a file whose rows span decades (bad
    input stored before validation) must not make this walk every hour in between.
    """
    ts = pq.read_table(path, columns=["ts"]).column("ts").cast(pa.int64())
    hours = np.unique(ts.drop_null().to_numpy() // _HOUR_MS) * _HOUR_MS
    ok = (hours >= _FIRST_HOUR_MS) & (hours <= _LAST_HOUR_MS)
    if not ok.all():
        log.warning(
            "rollups skip %d hours of %s outside 1970..9999 (ts of bad input)",
            int((~ok).sum()),
            path,
        )
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return {epoch + dt.timedelta(milliseconds=int(h)) for h in hours[ok].tolist()}


def _load_state(data_dir: Path) -> dict[str, list[str]]:
    p = data_dir / STATE_FILE
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text())
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return {str(k): [str(x) for x in v] for k, v in doc.items()}
    except (ValueError, TypeError) as exc:
        # A torn or foreign state file: recompute every hour rather than stop for good.
        log.error("rollup state %s unreadable (%s): recomputing all rollups", p, exc)
        return {}


def _save_state(data_dir: Path, state: dict[str, list[str]]) -> None:
    tmp = data_dir / f"{TEMP_PREFIX}{STATE_FILE}"
    tmp.write_text(json.dumps(state, sort_keys=True))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / STATE_FILE)
    fsync_dir(data_dir)


def _recompute_hour(
    con: duckdb.DuckDBPyConnection, data_dir: Path, source: str, hour: dt.datetime
) -> list[Path]:
    day = hour.date()
    files = list_parts(data_dir / source)
    files = [f for f in files if f.parent == date_dir(data_dir, source, day)]
    if not files:
        return []
    lo, hi = hour, hour + dt.timedelta(hours=1)
    file_list = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
    src = (
        # union_by_name: files from before a column was added (telemetry.gpu/v1) read NULL
        f"(SELECT * FROM read_parquet({file_list}, union_by_name = true) "
        f"WHERE ts >= TIMESTAMPTZ '{lo.isoformat()}' AND ts < TIMESTAMPTZ '{hi.isoformat()}')"
    )
    defs = rollup_tables()
    written = []
    for res, width in RESOLUTIONS.items():
        for family in SOURCES[source]:
            if family == "gpu":
                have = frozenset(str(r[0]) for r in con.sql(f"DESCRIBE {src}").fetchall())
                sql = _gpu_sql(src, width, have)
            elif family == "rack":
                sql = _rack_sql(src, width)
            else:
                sql = _plant_sql(src, width, source)
            table = con.sql(sql).to_arrow_table()
            tdef = defs[f"{family}_{res}"]
            # plant and power share plant_* rollups: one file per source and hour.
            prefix = f"{source}-" if family == "plant" else ""
            name = f"{prefix}h{hour.hour:02d}.parquet"
            target = date_dir(data_dir, tdef.name, day)
            if table.num_rows == 0:
                (target / name).unlink(missing_ok=True)
                continue
            written.append(write_file(tdef, table, target, name=name))
    return written


#: DuckDB memory for recomputing rollup hours (it spills to its temp dir beyond that).
ROLLUP_MEMORY_LIMIT = "512MB"


def update_rollups(data_dir: Path, sources: Iterable[str] = tuple(SOURCES)) -> list[Path]:
    """Bring every rollup up to date with the source files; returns the files written."""
    data_dir = Path(data_dir)
    state = _load_state(data_dir)
    written: list[Path] = []
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    # The sink runs this in its own process beside its buffers: keep DuckDB small.
    con.execute(f"SET memory_limit = '{ROLLUP_MEMORY_LIMIT}'")
    con.execute("SET threads = 1")
    try:
        for source in sources:
            parts = list_parts(data_dir / source)
            names = {str(p.relative_to(data_dir)) for p in parts}
            done = set(state.get(source, []))
            new = [p for p in parts if str(p.relative_to(data_dir)) not in done]
            hours: set[dt.datetime] = set()
            for p in new:
                hours |= _hours_of(p)
            for h in sorted(hours):
                written += _recompute_hour(con, data_dir, source, h)
            state[source] = sorted(names)
    finally:
        con.close()
    if written or state:
        _save_state(data_dir, state)
    return written
