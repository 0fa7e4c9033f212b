"""Read-only, sandboxed SQL over the store with DuckDB.

Defence in depth, each layer tested in tests/storage/test_storage_sql.py:

1. parse level: exactly one statement, of type SELECT or EXPLAIN (no COPY, ATTACH, INSTALL,
   LOAD, SET, PRAGMA, CREATE...);
2. DuckDB sandbox: ``allowed_directories`` = the store, then ``enable_external_access =
   false`` (file access only inside the store, no extension loading), extension
   auto-install/auto-load off, no temp directory, and ``lock_configuration = true`` so no
   statement can undo it;
3. a time limit (the connection is interrupted from a timer thread) and a row limit.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from storage.layout import SITE_RACKS_SCHEMA, TableDef, default_tables
from storage.rollup_schema import RACK_METRICS, rollup_tables
from twin.errors import TwinError


class SqlRefused(TwinError):
    """A query was refused or stopped; the message says which rule and what to do."""


_ALLOWED: Final = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    simple = {
        pa.string(): "VARCHAR",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.int64(): "BIGINT",
        pa.int32(): "INTEGER",
        pa.uint16(): "USMALLINT",
        pa.uint32(): "UINTEGER",
        pa.uint64(): "UBIGINT",
        pa.bool_(): "BOOLEAN",
    }
    if t in simple:
        return simple[t]
    raise TypeError(f"no SQL type for {t}")


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def check_statement(sql: str) -> None:
    """Refuse anything but one SELECT (or EXPLAIN) statement."""
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlRefused(f"SQL does not parse: {exc}") from exc
    if len(stmts) != 1:
        raise SqlRefused(f"one statement per query, got {len(stmts)}")
    kind = stmts[0].type
    if kind not in _ALLOWED:
        name = getattr(kind, "name", str(kind))
        raise SqlRefused(f"only SELECT queries are allowed; {name} statements are refused")


class SqlService:
    """Read-only SQL over the Parquet store under ``data_dir``.

    Views: gpu, rack, plant, power, state, kpi, residual, alerts, site_racks and the rollups
    gpu_1m, gpu_1h, rack_1m, rack_1h, plant_1m, plant_1h. A view whose table has no file yet
    exists, empty, with the table's columns; views are refreshed when files appear.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        timeout_s: float = 30.0,
        max_rows: int = 100_000,
        memory_limit: str = "2GB",
        threads: int | None = None,
        tables: dict[str, TableDef] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self.tables = dict(tables or default_tables())
        self.tables.update(rollup_tables())
        self.tables["site_racks"] = TableDef("site_racks", None, SITE_RACKS_SCHEMA, ("rack",), ())
        self._lock = threading.Lock()
        self._has_files: dict[str, bool] = {}
        conn = duckdb.connect(
            ":memory:",
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute(f"SET memory_limit = {_quote(memory_limit)}")
        if threads:
            conn.execute(f"SET threads = {int(threads)}")
        conn.execute("SET temp_directory = ''")
        conn.execute(f"SET allowed_directories = [{_quote(str(self.data_dir) + '/')}]")
        conn.execute("SET enable_external_access = false")
        conn.execute("SET lock_configuration = true")
        self._conn = conn
        self._refresh_views()

    def close(self) -> None:
        self._conn.close()

    # ---- views ---------------------------------------------------------------------------

    def _glob(self, name: str) -> str:
        # DuckDB's * matches dot files: "[!.]" keeps a writer's .tmp- files out of queries.
        if name == "site_racks":
            return str(self.data_dir / "site_racks" / "[!.]*.parquet")
        return str(self.data_dir / name / "date=*" / "[!.]*.parquet")

    def _files_exist(self, name: str) -> bool:
        d = self.data_dir / name
        if name == "site_racks":
            return any(d.glob("[!.]*.parquet"))
        return any(d.glob("date=*/[!.]*.parquet"))

    def _view_sql(self, tdef: TableDef, has_files: bool) -> str:
        dated = tdef.name != "site_racks"
        if has_files:
            opts = ", hive_partitioning = true, hive_types = {'date': DATE}" if dated else ""
            return f"SELECT * FROM read_parquet({_quote(self._glob(tdef.name))}{opts})"
        cols = [f"CAST(NULL AS {_sql_type(f.type)}) AS {_ident(f.name)}" for f in tdef.schema]
        if dated:
            cols.append("CAST(NULL AS DATE) AS date")
        return f"SELECT {', '.join(cols)} WHERE false"

    def _refresh_views(self) -> None:
        changed = False
        for name, tdef in self.tables.items():
            has = self._files_exist(name)
            if self._has_files.get(name) == has:
                continue
            self._conn.execute(
                f"CREATE OR REPLACE VIEW {_ident(name)} AS {self._view_sql(tdef, has)}"
            )
            self._has_files[name] = has
            changed = True
        if changed or "rack" not in self._has_files:
            aggs = ", ".join(f"{sql} AS {name}" for name, sql in RACK_METRICS.items())
            self._conn.execute(
                "CREATE OR REPLACE VIEW rack AS SELECT ts, date, rack, count(*) AS n_gpus, "
                f"{aggs}, sum(energy_mj) AS energy_mj FROM gpu GROUP BY ts, date, rack"
            )
            self._has_files["rack"] = True

    def views(self) -> list[str]:
        rows = self._conn.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
        ).fetchall()
        return [r[0] for r in rows]

    # ---- queries -------------------------------------------------------------------------

    def query(self, sql: str) -> pa.Table:
        """Run one SELECT and return its result; raises SqlRefused on any refusal."""
        check_statement(sql)
        with self._lock:
            self._refresh_views()
            cur = self._conn.cursor()
            timer = threading.Timer(self.timeout_s, cur.interrupt)
            timer.start()
            try:
                reader = cur.sql(sql).to_arrow_reader(8192)
                batches: list[pa.RecordBatch] = []
                n = 0
                for batch in reader:
                    batches.append(batch)
                    n += batch.num_rows
                    if n > self.max_rows:
                        raise SqlRefused(
                            f"result has more than {self.max_rows} rows; "
                            "add a LIMIT or aggregate (e.g. a rollup view such as gpu_1m)"
                        )
                return pa.Table.from_batches(batches, schema=reader.schema)
            except duckdb.InterruptException as exc:
                raise SqlRefused(
                    f"query stopped after the {self.timeout_s:g} s time limit; "
                    "narrow the time range or use a rollup view"
                ) from exc
            except duckdb.PermissionException as exc:
                raise SqlRefused(f"access outside the store is refused: {exc}") from exc
            except duckdb.Error as exc:
                if "interrupt" in str(exc).lower():
                    raise SqlRefused(
                        f"query stopped after the {self.timeout_s:g} s time limit"
                    ) from exc
                raise SqlRefused(f"query failed: {exc}") from exc
            finally:
                timer.cancel()
                cur.close()


# ---- rendering ---------------------------------------------------------------------------


def to_csv(table: pa.Table) -> str:
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    return buf.getvalue().decode()


def to_json_records(table: pa.Table) -> list[dict[str, object]]:
    """Rows as JSON-ready dicts (timestamps as ISO-8601 strings)."""
    rows = table.to_pylist()
    for row in rows:
        for k, v in row.items():
            if hasattr(v, "isoformat"):
                row[k] = v.isoformat()
    return rows


def to_json(table: pa.Table) -> str:
    return json.dumps(to_json_records(table), default=str)


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return bytes(buf.getvalue().to_pybytes())


def to_text(table: pa.Table, max_width: int = 40) -> str:
    """A plain aligned text table (the CLI uses rich when printing to a terminal)."""
    names = table.column_names
    cols = [[("" if v is None else str(v))[:max_width] for v in c.to_pylist()] for c in table]
    widths = [max([len(n), *(len(v) for v in col)]) for n, col in zip(names, cols, strict=True)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for i in range(table.num_rows):
        lines.append("  ".join(col[i].ljust(w) for col, w in zip(cols, widths, strict=True)))
    return "\n".join(lines)
