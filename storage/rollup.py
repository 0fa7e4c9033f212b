"""1-minute and 1-hour rollups (min/mean/max/last), kept current from new files.

Each new source file marks the minutes it covers (from its ts column) as dirty. Per hour,
the span from the first to the last dirty minute is recomputed from all source rows of that
span and replaces those minutes in the hour's 1-minute rollup file
``<rollup>/date=D/hHH.parquet``; the hour's 1-hour row is then merged from its 1-minute rows
(min of minima, max of maxima, mean weighted by sample count, last of the latest minute),
which equals aggregating the raw rows. Both files are replaced atomically. An hour without
a 1-minute file yet (or an unreadable one) is computed from all of its source rows.

The work per call is therefore proportional to the new rows plus one hour of 1-minute rows,
not to an hour of raw rows: the sink runs it after every flush (storage/sink.py), so the
rollup views answer as soon as the first rows are stored. Late or re-compacted files only
cost a recomputation of their minutes, and a rollup never double-counts.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.layout import META_REPLACES, TEMP_PREFIX, TableDef, date_dir, list_parts
from storage.rollup_schema import (
    GPU_HEALTH,
    GPU_METRICS,
    RACK_METRICS,
    RESOLUTIONS,
    rollup_tables,
)
from storage.writer import conform, fsync_dir, write_file

log = logging.getLogger("storage.rollup")

STATE_FILE: Final = "_rollup_state.json"

#: Source tables -> the rollup families computed from them.
SOURCES: Final = {"gpu": ("gpu", "rack"), "plant": ("plant",), "power": ("plant",)}


def _stats(expr: str, name: str) -> str:
    return (
        f"min({expr}) AS {name}_min, avg({expr}) AS {name}_mean, "
        f"max({expr}) AS {name}_max, arg_max({expr}, ts) AS {name}_last"
    )


def _merged_stats(name: str) -> str:
    """SQL of one metric's 1-hour stats from its 1-minute rows (``n`` samples each)."""
    return (
        f"min({name}_min) AS {name}_min, sum({name}_mean * n) / sum(n) AS {name}_mean, "
        f"max({name}_max) AS {name}_max, arg_max({name}_last, ts) AS {name}_last"
    )


def _hour_sql(family: str, src: str) -> str:
    """SQL of the 1-hour rollup of ``family`` from its 1-minute rollup rows in ``src``."""
    bucket = f"time_bucket(INTERVAL '{RESOLUTIONS['1h']} seconds', ts) AS ts"
    if family == "gpu":
        stats = ", ".join(_merged_stats(m) for m in GPU_METRICS)
        health = ", ".join(
            f"{agg}({col}_{suffix}) AS {col}_{suffix}" for col, (agg, suffix) in GPU_HEALTH.items()
        )
        return (
            f"SELECT {bucket}, rack, gpu, sum(n) AS n, {stats}, "
            "arg_min(energy_mj_first, ts) AS energy_mj_first, "
            f"arg_max(energy_mj_last, ts) AS energy_mj_last, {health} FROM {src} GROUP BY ALL"
        )
    if family == "rack":
        stats = ", ".join(_merged_stats(m) for m in RACK_METRICS)
        return f"SELECT {bucket}, rack, sum(n) AS n, {stats} FROM {src} GROUP BY ALL"
    return (
        f"SELECT {bucket}, source, unit, point, sum(n) AS n, {_merged_stats('value')} "
        f"FROM {src} GROUP BY ALL"
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
_MINUTE_MS: Final = 60_000
_HOUR_MS: Final = 3_600_000
_FIRST_HOUR_MS: Final = 0
_LAST_HOUR_MS: Final = 253_402_128_000_000  # 9999-12-30T00:00Z
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _merges_rolled_up(path: Path, data_dir: Path, done: set[str]) -> bool:
    """Whether ``path`` only merges files already rolled up (compaction, sealing): its rows
    are theirs, so its minutes need no recomputation (a sealed day is not redone)."""
    try:
        raw = (pq.read_metadata(path).metadata or {}).get(META_REPLACES)
    except (OSError, ValueError):
        return False
    rel = path.parent.relative_to(data_dir)
    names = [n for n in (raw or b"").decode().split(",") if n]
    return bool(names) and all(str(rel / n) in done for n in names)


def _minutes_of(path: Path) -> np.ndarray:
    """Minute starts [ms since epoch, UTC] holding rows of a file, sorted, from its ts
    column (raw int64, never overflows).

    Read from the rows, not the min/max statistics: a file whose rows span decades (bad
    input stored before validation) must not make this walk every hour in between.
    """
    ts = pq.read_table(path, columns=["ts"]).column("ts").cast(pa.int64())
    minutes = np.unique(ts.drop_null().to_numpy() // _MINUTE_MS) * _MINUTE_MS
    ok = (minutes >= _FIRST_HOUR_MS) & (minutes < _LAST_HOUR_MS + _HOUR_MS)
    if not ok.all():
        hours = np.unique(minutes[~ok] // _HOUR_MS)
        log.warning(
            "rollups skip %d hours of %s outside 1970..9999 (ts of bad input)",
            hours.size,
            path,
        )
    return np.asarray(minutes[ok])


def _dirty_spans(minutes: np.ndarray) -> dict[int, tuple[int, int]]:
    """Hour start [ms] -> (first dirty minute, end of the last dirty minute) [ms]."""
    spans: dict[int, tuple[int, int]] = {}
    for hour in np.unique(minutes // _HOUR_MS * _HOUR_MS).tolist():
        inside = minutes[(minutes >= hour) & (minutes < hour + _HOUR_MS)]
        spans[int(hour)] = (int(inside.min()), int(inside.max()) + _MINUTE_MS)
    return spans


def _at(ms: int) -> str:
    """SQL TIMESTAMPTZ literal of ``ms`` [ms since epoch]."""
    return f"TIMESTAMPTZ '{(_EPOCH + dt.timedelta(milliseconds=ms)).isoformat()}'"


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


def _read_minutes(path: Path, tdef: TableDef) -> pa.Table | None:
    """An hour's 1-minute rollup file in ``tdef``'s schema; None if absent or unreadable."""
    if not path.exists():
        return None
    try:
        return conform(tdef, pq.read_table(path))
    except Exception as exc:  # torn or foreign file: the hour is recomputed from raw rows
        log.warning("rollup file %s unreadable (%r): recomputing its hour", path, exc)
        return None


def _minute_rows(
    con: duckdb.DuckDBPyConnection, files: list[Path], source: str, family: str, lo: int, hi: int
) -> pa.Table:
    """1-minute rollup rows of ``family`` from the source rows with lo <= ts < hi [ms]."""
    file_list = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
    src = (
        # union_by_name: files from before a column was added (telemetry.gpu/v1) read NULL
        f"(SELECT * FROM read_parquet({file_list}, union_by_name = true) "
        f"WHERE ts >= {_at(lo)} AND ts < {_at(hi)})"
    )
    width = RESOLUTIONS["1m"]
    if family == "gpu":
        have = frozenset(str(r[0]) for r in con.sql(f"DESCRIBE {src}").fetchall())
        sql = _gpu_sql(src, width, have)
    elif family == "rack":
        sql = _rack_sql(src, width)
    else:
        sql = _plant_sql(src, width, source)
    return con.sql(sql).to_arrow_table()


def _update_hour(
    con: duckdb.DuckDBPyConnection, data_dir: Path, source: str, hour_ms: int, span: tuple[int, int]
) -> list[Path]:
    """Recompute the minutes ``span`` [ms) of one hour, then the hour's 1-hour row."""
    hour = _EPOCH + dt.timedelta(milliseconds=hour_ms)
    day = hour.date()
    files = list_parts(data_dir / source)
    files = [f for f in files if f.parent == date_dir(data_dir, source, day)]
    if not files:
        return []
    defs = rollup_tables()
    written = []
    for family in SOURCES[source]:
        minute_def, hour_def = defs[f"{family}_1m"], defs[f"{family}_1h"]
        # plant and power share plant_* rollups: one file per source and hour.
        prefix = f"{source}-" if family == "plant" else ""
        name = f"{prefix}h{hour.hour:02d}.parquet"
        old = _read_minutes(date_dir(data_dir, minute_def.name, day) / name, minute_def)
        lo, hi = span if old is not None else (hour_ms, hour_ms + _HOUR_MS)
        fresh = conform(minute_def, _minute_rows(con, files, source, family, lo, hi))
        if old is not None:
            ts = pc.cast(old["ts"], pa.int64())
            keep = pc.or_(pc.less(ts, lo), pc.greater_equal(ts, hi))
            fresh = pa.concat_tables([old.filter(keep), fresh])
        con.register("minutes", fresh)
        try:
            hourly = con.sql(_hour_sql(family, "minutes")).to_arrow_table()
        finally:
            con.unregister("minutes")
        for tdef, table in ((minute_def, fresh), (hour_def, hourly)):
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
            new = [p for p in new if not _merges_rolled_up(p, data_dir, done)]
            minutes = [_minutes_of(p) for p in new]
            spans = _dirty_spans(np.unique(np.concatenate(minutes))) if minutes else {}
            for hour_ms, span in sorted(spans.items()):
                written += _update_hour(con, data_dir, source, hour_ms, span)
            state[source] = sorted(names)
    finally:
        con.close()
    if written or state:
        _save_state(data_dir, state)
    return written
