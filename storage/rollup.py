"""1-minute and 1-hour rollups (min/mean/max/last), kept current from new files.

Each new source file marks the hours it covers (from its ts statistics) as dirty; every dirty
hour is recomputed from all source rows of that hour and its rollup file
``<rollup>/date=D/hHH.parquet`` is replaced atomically. Late or re-compacted files therefore
only cost a recomputation of their hours, and a rollup never double-counts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import duckdb
import pyarrow.parquet as pq

from storage.layout import TEMP_PREFIX, date_dir, list_parts
from storage.rollup_schema import GPU_METRICS, RACK_METRICS, RESOLUTIONS, rollup_tables
from storage.writer import fsync_dir, write_file

STATE_FILE: Final = "_rollup_state.json"

#: Source tables -> the rollup families computed from them.
SOURCES: Final = {"gpu": ("gpu", "rack"), "plant": ("plant",), "power": ("plant",)}


def _stats(expr: str, name: str) -> str:
    return (
        f"min({expr}) AS {name}_min, avg({expr}) AS {name}_mean, "
        f"max({expr}) AS {name}_max, arg_max({expr}, ts) AS {name}_last"
    )


def _gpu_sql(src: str, width_s: int) -> str:
    stats = ", ".join(_stats(m, m) for m in GPU_METRICS)
    return (
        f"SELECT time_bucket(INTERVAL '{width_s} seconds', ts) AS ts, rack, gpu, "
        f"count(*) AS n, {stats}, arg_min(energy_mj, ts) AS energy_mj_first, "
        f"arg_max(energy_mj, ts) AS energy_mj_last FROM {src} GROUP BY ALL"
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


def _hours_of(path: Path) -> set[dt.datetime]:
    """Hours [UTC] touched by a file, from its ts column statistics."""
    md = pq.ParquetFile(path).metadata
    idx = md.schema.to_arrow_schema().get_field_index("ts")
    out: set[dt.datetime] = set()
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(idx).statistics
        if st is None or not st.has_min_max:
            continue
        lo = st.min.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
        hi = st.max.astimezone(dt.UTC)
        h = lo
        while h <= hi:
            out.add(h)
            h += dt.timedelta(hours=1)
    return out


def _load_state(data_dir: Path) -> dict[str, list[str]]:
    p = data_dir / STATE_FILE
    if not p.exists():
        return {}
    doc: dict[str, list[str]] = json.loads(p.read_text())
    return doc


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
        f"(SELECT * FROM read_parquet({file_list}) "
        f"WHERE ts >= TIMESTAMPTZ '{lo.isoformat()}' AND ts < TIMESTAMPTZ '{hi.isoformat()}')"
    )
    defs = rollup_tables()
    written = []
    for res, width in RESOLUTIONS.items():
        for family in SOURCES[source]:
            if family == "gpu":
                sql = _gpu_sql(src, width)
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
