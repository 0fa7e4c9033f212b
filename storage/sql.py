"""Read-only SQL over the store: the service the CLI and ``POST /api/sql`` call.

Three layers, each tested without the others (tests/storage/test_sql_attacks.py):

1. storage/sql_check.py: DuckDB's parser must see exactly one plain SELECT (or EXPLAIN of
   one), only allowlisted table functions, no file paths as tables;
2. storage/sql_engine.py: DuckDB has no file system (pyarrow reads the store), a read-only
   catalogue and a locked configuration, so even a query the check let through by mistake
   cannot write or read a file;
3. storage/sql_pool.py + storage/sql_worker.py (``workers > 0``, what the web server uses):
   queries run in separate processes that cannot write files at the OS level (Landlock,
   RLIMIT_FSIZE), with a clean environment, deadlines from submission, an express lane for
   short queries and recycling after memory-heavy queries.

With ``workers=0`` (the CLI, tests, benches) layers 1 and 2 run in this process, one query
at a time, with the same deadline semantics.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import io
import json
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from storage.layout import TableDef
from storage.sql_check import SqlRefused, SqlTimeout, StatementCheck, check_statement, check_text
from storage.sql_engine import SqlEngine, store_tables
from storage.sql_pool import SqlPool
from twin.errors import TwinError

__all__ = [
    "NoStoreError",
    "SqlRefused",
    "SqlService",
    "SqlTimeout",
    "check_statement",
    "require_store",
    "to_csv",
    "to_json",
]

#: Worker processes the web server's SQL pool runs (plus one express process).
POOL_WORKERS: Final = 2


class NoStoreError(TwinError):
    """The data directory a command reads is not a twin store (missing, or no table in it)."""


def require_store(data_dir: Path) -> Path:
    """``data_dir`` resolved, if it holds at least one of the store's table directories.

    The commands that only read the store (``twin sql``, ``twin replay``) call this first:
    without it a mistyped ``--data-dir``, or a relative one run from another directory,
    reads as an empty store and answers 0 rows. The worker's SQL endpoint does not: its
    sink may not have written the first file yet.
    """
    path = Path(data_dir).expanduser().resolve()
    hint = "give --data-dir (env TWIN_DATA_DIR) the directory twin sink writes to"
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise NoStoreError(f"no twin store at {path}: it {what}; {hint}")
    if not any((path / name).is_dir() for name in store_tables()):
        raise NoStoreError(f"no twin store at {path}: it holds no table directory; {hint}")
    return path


class SqlService:
    """Read-only SQL over the Parquet store under ``data_dir``.

    Views: gpu, rack, plant, power, state, kpi, residual, alerts, site_racks and the rollups
    gpu_1m, gpu_1h, rack_1m, rack_1h, plant_1m, plant_1h. A view whose table has no file yet
    exists, empty, with the table's columns; views follow the files as they come and go.

    ``timeout_s`` [s] is each query's deadline counted from the call to :meth:`query`;
    ``max_rows`` and ``max_bytes`` bound a result; ``memory_limit`` is DuckDB's, per
    process. ``workers=0`` runs queries in this process one at a time; ``workers=N`` runs
    them in a :class:`~storage.sql_pool.SqlPool` of N processes plus an express one, each
    recycled after a query that leaves it ``recycle_mb`` [MiB] above its baseline and capped
    at ``headroom_mb`` [MiB] of address space beyond its start-up size.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        timeout_s: float = 30.0,
        max_rows: int = 100_000,
        max_bytes: int = 64 << 20,
        memory_limit: str = "2GB",
        threads: int | None = None,
        tables: dict[str, TableDef] | None = None,
        workers: int = 0,
        recycle_mb: float = 100.0,
        headroom_mb: float = 3072.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._check = StatementCheck()
        self._engine: SqlEngine | None = None
        self._pool: SqlPool | None = None
        if workers > 0:
            if tables is not None:
                raise ValueError("custom tables are only supported with workers=0")
            self._pool = SqlPool(
                self.data_dir,
                workers=workers,
                memory_limit=memory_limit,
                threads=threads,
                recycle_mb=recycle_mb,
                headroom_mb=headroom_mb,
            )
        else:
            self._engine = SqlEngine(
                self.data_dir, memory_limit=memory_limit, threads=threads, tables=tables
            )

    @property
    def pool(self) -> SqlPool | None:
        return self._pool

    @property
    def max_waiting(self) -> int:
        """Queries that may wait or run at once (more are refused as busy)."""
        return self._pool.max_waiting if self._pool is not None else 1

    def close(self) -> None:
        self._check.close()
        if self._engine is not None:
            self._engine.close()
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> SqlService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def views(self) -> list[str]:
        """Names of the views a query can read."""
        if self._engine is not None:
            return self._engine.views()
        return sorted([*store_tables(), "rack"])

    def query(self, sql: str, *, check: bool = True) -> pa.Table:
        """Run one SELECT and return its result; raises SqlRefused on any refusal.

        ``check=False`` skips the statement check: only tests use it, to show that the
        layers below hold on their own.
        """
        t0 = time.monotonic()
        tables: frozenset[str] | None = None
        if check:
            checked = self._check(sql)
            text, tables = checked.sql, checked.tables
        else:
            text = check_text(sql)
        if self._pool is not None:
            left = self.timeout_s - (time.monotonic() - t0)
            return self._pool.query(
                text,
                timeout_s=left,
                max_rows=self.max_rows,
                max_bytes=self.max_bytes,
                check=check,
                limit_s=self.timeout_s,
            )
        assert self._engine is not None
        if not self._lock.acquire(timeout=self.timeout_s):
            raise SqlTimeout(
                f"query not started within its {self.timeout_s:g} s time limit "
                "(another query was running); the limit counts from submission"
            )
        try:
            left = self.timeout_s - (time.monotonic() - t0)
            return self._engine.run(
                text,
                timeout_s=left,
                max_rows=self.max_rows,
                max_bytes=self.max_bytes,
                check=False,
                tables=tables,
                checked_select=check,  # checked above: the engine's warm connection
            )
        finally:
            self._lock.release()


def sql_from_body(body: bytes) -> str:
    """The query of a ``POST /api/sql`` body: ``{"sql": "..."}`` or the SQL as text.

    Raises SqlRefused with a one-line reason (the caller answers 400) for a body that is not
    UTF-8, not JSON when it looks like JSON, has no "sql" text, or whose SQL fails
    :func:`~storage.sql_check.check_text` (lone surrogates from a ``\\ud800`` escape, NUL).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SqlRefused(f"request body is not valid UTF-8 (byte {exc.start})") from None
    if text.lstrip()[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SqlRefused(f"request body is not valid JSON: {exc.msg} at {exc.pos}") from None
        except RecursionError:
            raise SqlRefused("request body JSON is nested too deeply") from None
        if not isinstance(doc, dict) or "sql" not in doc:
            raise SqlRefused('POST {"sql": "SELECT ..."} or the SQL as text')
        return check_text(doc["sql"])
    return check_text(text)


def result_json(table: pa.Table) -> bytes:
    """The ``POST /api/sql`` answer: strict JSON of columns, rows and row count."""
    doc = {
        "columns": table.column_names,
        "rows": to_json_records(table),
        "row_count": table.num_rows,
    }
    return json.dumps(doc, allow_nan=False).encode()


# ---- rendering ---------------------------------------------------------------------------


def json_value(v: object) -> Any:
    """One result value as plain JSON data (see docs/storage.md, "Result encoding").

    NaN and +-Infinity -> null; BLOB -> base64 string; DECIMAL -> number (integral values
    exactly); timestamps, dates, times -> ISO-8601 strings; DuckDB INTERVAL ->
    ``{"months", "days", "nanoseconds"}``; Arrow durations -> seconds; UUID -> string;
    lists, structs and maps (as ``[key, value]`` pairs) recursively.
    """
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, decimal.Decimal):
        if not v.is_finite():
            return None
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, pa.MonthDayNano):
        return {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x) for x in v]
    return str(v)


_INF_INT64: Final = 2**63 - 1  # DuckDB's timestamp 'infinity' (and -_INF_INT64)
_INF_DATE: Final = 2**31 - 1  # DuckDB's date 'infinity' in days


def _temporal_strings(col: pa.ChunkedArray) -> list[object]:
    """ISO strings for timestamps/dates Python's datetime cannot hold (year > 9999,
    'infinity'), through numpy's wider datetime64."""
    is_ts = pa.types.is_timestamp(col.type)
    big = _INF_INT64 if is_ts else _INF_DATE
    unit: Any = col.type.unit if is_ts else "D"
    out: list[object] = []
    for v in col.cast(pa.int64() if is_ts else pa.int32()).to_pylist():
        if v is None:
            out.append(None)
        elif abs(v) >= big:
            out.append("infinity" if v > 0 else "-infinity")
        else:
            out.append(str(np.datetime64(v, unit)))
    return out


def column_values(col: pa.ChunkedArray) -> list[object]:
    """A result column as JSON-ready values (:func:`json_value`), whatever its range."""
    try:
        return [json_value(v) for v in col.to_pylist()]
    except (OverflowError, ValueError, pa.ArrowException):
        if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
            return _temporal_strings(col)
    out: list[object] = []
    for i in range(len(col)):  # nested values out of range: those values alone become null
        try:
            out.append(json_value(col[i].as_py()))
        except (OverflowError, ValueError, pa.ArrowException):
            out.append(None)
    return out


def to_json_records(table: pa.Table) -> list[dict[str, object]]:
    """Rows as JSON-ready dicts (every value through :func:`column_values`)."""
    try:
        cols = [column_values(c) for c in table.columns]
    except RecursionError:
        raise SqlRefused("result values are nested too deeply to render as JSON") from None
    names = table.column_names
    return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]


def to_json(table: pa.Table) -> str:
    """Strict JSON text (no NaN or Infinity tokens) of the rows."""
    return json.dumps(to_json_records(table), allow_nan=False)


def _csv_ready(table: pa.Table) -> pa.Table:
    """Columns CSV cannot hold (BLOB, nested, interval) as their JSON rendering."""
    plain = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_boolean,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_timestamp,
        pa.types.is_date,
        pa.types.is_time,
        pa.types.is_decimal,
        pa.types.is_null,
    )
    cols = []
    for col in table.columns:
        if any(f(col.type) for f in plain):
            cols.append(col)
            continue
        vals = column_values(col)
        cols.append(
            pa.array(
                [v if v is None or isinstance(v, str) else json.dumps(v) for v in vals],
                pa.string(),
            )
        )
    return pa.table(cols, names=table.column_names)


def to_csv(table: pa.Table) -> str:
    buf = io.BytesIO()
    pacsv.write_csv(_csv_ready(table), buf)
    return buf.getvalue().decode()


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return bytes(buf.getvalue().to_pybytes())


def cell_text(v: object) -> str:
    """One value for a text table (BLOB as base64)."""
    if v is None:
        return ""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    return str(v)


def _text_values(col: pa.ChunkedArray) -> list[object]:
    try:
        return list(col.to_pylist())  # NaN stays visible as nan
    except (OverflowError, ValueError, pa.ArrowException):
        return column_values(col)


def to_text(table: pa.Table, max_width: int = 40) -> str:
    """A plain aligned text table (the CLI uses rich when printing to a terminal)."""
    names = table.column_names
    cols = [[cell_text(v)[:max_width] for v in _text_values(c)] for c in table.columns]
    widths = [max([len(n), *(len(v) for v in col)]) for n, col in zip(names, cols, strict=True)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for i in range(table.num_rows):
        lines.append("  ".join(col[i].ljust(w) for col, w in zip(cols, widths, strict=True)))
    return "\n".join(lines)
