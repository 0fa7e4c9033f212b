"""Layer 2 of the read-only SQL service: a DuckDB that has no file system.

DuckDB never opens a file of the store. pyarrow opens the Parquet files (read-only) as
datasets, and each query gets a fresh DuckDB connection on which those datasets are
registered as the views gpu, plant, ... (temporary objects of that connection, gone when it
closes). The database itself is configured, before any query, with

- ``enable_external_access = false`` and no allowed directory or path: COPY, EXPORT,
  ATTACH, read_csv/read_parquet/glob on any path, INSTALL/LOAD from disk and persistent
  secrets all fail with a permission error, inside the store as much as outside it;
- an empty database file opened ``read_only``: CREATE TABLE/VIEW/MACRO/SCHEMA, INSERT,
  UPDATE, DELETE in the catalogue fail (only the query's own temporary objects can be made,
  and they die with its connection);
- no temporary directory (nothing spills to disk), a memory limit, extension autoload
  and autoinstall off, no Python replacement scans (no query can read the caller's
  variables), and ``lock_configuration = true`` so no statement can undo any of it.

None of this depends on the statement check of storage/sql_check.py, which runs first;
tests/storage/test_sql_attacks.py runs every attack with the check switched off as well.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.layout import DATE_DIR_RE, SITE_RACKS_SCHEMA, TableDef, default_tables
from storage.rollup_schema import RACK_METRICS, rollup_tables
from storage.sql_check import SqlRefused, SqlTimeout, StatementCheck, check_text

_PARQUET: Final = ds.ParquetFileFormat()
_LOCAL_FS: Final = pafs.LocalFileSystem()


def store_tables() -> dict[str, TableDef]:
    """Every table the store can hold, by view name (rack is a view over gpu)."""
    tables = dict(default_tables())
    tables.update(rollup_tables())
    tables["site_racks"] = TableDef("site_racks", None, SITE_RACKS_SCHEMA, ("rack",), ())
    return tables


def _dir_signature(d: Path) -> tuple[tuple[str, int], ...]:
    """Names and mtimes [ns] of d and its date directories: changes when a file comes or goes."""
    try:
        out = [("", d.stat().st_mtime_ns)]
        with os.scandir(d) as it:
            out += [(e.name, e.stat().st_mtime_ns) for e in it if e.is_dir()]
    except FileNotFoundError:
        return ()
    return tuple(sorted(out))


#: A table whose files decode to at most this many bytes is read into memory once per change
#: of its files (and at most IN_MEMORY_TOTAL_BYTES in all): PUE over the power rows or a
#: residual trend then scans Arrow in memory instead of opening and decoding Parquet on
#: every query. The total stays well under an SQL worker's recycling margin (100 MiB).
IN_MEMORY_TABLE_BYTES: Final = 16 << 20
IN_MEMORY_TOTAL_BYTES: Final = 48 << 20


def _decoded_bytes(files: list[str], limit: int) -> int | None:
    """Uncompressed size of ``files`` [bytes] from their footers, or None above ``limit``."""
    if sum(os.stat(f).st_size for f in files) > limit:
        return None  # compressed already larger: no footer read needed
    total = 0
    for f in files:
        md = pq.read_metadata(f)
        total += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        if total > limit:
            return None
    return total


class StoreDatasets:
    """pyarrow datasets over the store's tables, rediscovered when their directories change."""

    def __init__(self, data_dir: Path, tables: dict[str, TableDef]) -> None:
        self.data_dir = data_dir
        self.tables = tables
        self._cache: dict[str, tuple[tuple[tuple[str, int], ...], pa.Table | ds.Dataset]] = {}
        self._in_memory: dict[str, int] = {}  # table -> bytes held in memory
        self._fragments: dict[str, tuple[tuple[int, int], ds.Fragment]] = {}

    def _fragment(self, path: str, table: str) -> ds.Fragment:
        """The file's fragment, the same object while the file is unchanged: pyarrow keeps a
        fragment's footer once it has read it, so a table rediscovered because another
        day's directory changed (the sink writes every minute) does not parse the footers
        of its sealed days again (MBs each for a hall's day)."""
        try:
            st = os.stat(path)
        except FileNotFoundError as exc:
            raise _Vanished from exc
        key = (st.st_mtime_ns, st.st_size)
        hit = self._fragments.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        expr = None
        m = DATE_DIR_RE.match(Path(path).parent.name)
        if table != "site_racks" and m:  # outside a date= directory: date is NULL, as in hive
            day = dt.date.fromisoformat(m.group(1))
            expr = ds.field("date") == pa.scalar(day, pa.date32())
        frag = _PARQUET.make_fragment(path, filesystem=_LOCAL_FS, partition_expression=expr)
        self._fragments[path] = (key, frag)
        return frag

    def _forget_fragments(self, table_dir: Path, files: list[str]) -> None:
        prefix, keep = f"{table_dir}{os.sep}", set(files)
        for path in [p for p in self._fragments if p.startswith(prefix) and p not in keep]:
            del self._fragments[path]

    def _memory_used(self) -> int:
        return sum(self._in_memory.values())

    def _schema(self, tdef: TableDef) -> pa.Schema:
        schema = tdef.schema.remove_metadata()
        return schema if tdef.name == "site_racks" else schema.append(pa.field("date", pa.date32()))

    def get(self, name: str) -> pa.Table | ds.Dataset:
        tdef = self.tables[name]
        d = self.data_dir / name
        sig = _dir_signature(d)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == sig:
            return hit[1]
        schema = self._schema(tdef)
        src: pa.Table | ds.Dataset
        # pyarrow skips names starting with "." or "_": a writer's .tmp- files and
        # .expired-date= partitions never reach a query.
        files = [
            str(p) for p in sorted(d.glob("*.parquet" if name == "site_racks" else "*/*.parquet"))
        ]
        files = [
            f
            for f in files
            if not any(part.startswith((".", "_")) for part in Path(f).relative_to(d).parts)
        ]
        if files:
            src = ds.FileSystemDataset(
                [self._fragment(f, name) for f in files],
                schema=schema,
                format=_PARQUET,
                filesystem=_LOCAL_FS,
            )
            self._forget_fragments(d, files)
            size = _decoded_bytes(files, IN_MEMORY_TABLE_BYTES)
            held = self._in_memory.get(name, 0)
            if size is not None and self._memory_used() - held + size <= IN_MEMORY_TOTAL_BYTES:
                # small (PUE's power rows, residuals, plant points): scanned from memory
                # instead of opening and decoding Parquet on every query
                src = src.to_table()
                self._in_memory[name] = src.nbytes
            else:
                self._in_memory.pop(name, None)
        else:
            src = schema.empty_table()
            self._in_memory.pop(name, None)
        # A directory changed within the last second may change again within the same
        # timestamp tick (file times are coarse): such a listing is used but not cached.
        newest_ns = max((m for _, m in sig), default=0)
        if time.time_ns() - newest_ns > 1_000_000_000:
            self._cache[name] = (sig, src)
        return src

    def forget(self) -> None:
        self._cache.clear()
        self._in_memory.clear()
        self._fragments.clear()


class SqlEngine:
    """Sandboxed DuckDB over the store; :meth:`run` executes one query on a fresh connection."""

    def __init__(
        self,
        data_dir: Path,
        *,
        memory_limit: str = "2GB",
        threads: int | None = None,
        tables: dict[str, TableDef] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.datasets = StoreDatasets(self.data_dir, dict(tables or store_tables()))
        config: dict[str, str | bool | int | float | list[str]] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_persistent_secrets": False,
            "python_enable_replacements": False,
            "temp_directory": "",
            "memory_limit": memory_limit,
        }
        if threads:
            config["threads"] = int(threads)
        # An empty database file opened read-only gives a catalogue nothing can be added to;
        # the file is unlinked at once (DuckDB keeps its descriptor; it is never written).
        with tempfile.TemporaryDirectory(prefix="twin-sql-") as tmp:
            path = Path(tmp) / "empty.duckdb"
            duckdb.connect(str(path)).close()
            self._db = duckdb.connect(str(path), read_only=True, config=config)
        self._check = StatementCheck()
        self._warm: duckdb.DuckDBPyConnection | None = None
        self._warm_sources: dict[str, pa.Table | ds.Dataset] = {}
        self._warm_rack = False
        self._watchdog = _Watchdog()
        self._db.execute("SET TimeZone = 'UTC'")
        # A pyarrow dataset gives the planner no row count (it guesses 1 row), so DuckDB
        # would turn every ASOF join into a nested loop over both inputs: 8 s instead of
        # milliseconds for one GPU's day beside its CDU (bench/bench_sql.py).
        self._db.execute("SET GLOBAL asof_loop_join_threshold = 0")
        self._db.execute("SET enable_external_access = false")
        self._db.execute("SET lock_configuration = true")

    def close(self) -> None:
        self._watchdog.close()
        self._drop_warm()
        self._db.close()
        self._check.close()

    def views(self) -> list[str]:
        return sorted([*self.datasets.tables, "rack"])

    def _connect(self, tables: frozenset[str] | None) -> duckdb.DuckDBPyConnection:
        """A fresh connection with the views ``tables`` reads (all of them if None)."""
        cur = self._db.cursor()
        names = self._view_names(tables)
        for name in names & set(self.datasets.tables):
            cur.register(name, self.datasets.get(name))
        if "gpu" in names:
            cur.execute(self._rack_view_sql())
        return cur

    def _view_names(self, tables: frozenset[str] | None) -> set[str]:
        names = set(self.datasets.tables) if tables is None else set(tables)
        if "rack" in names:
            names.add("gpu")
        return names

    @staticmethod
    def _rack_view_sql() -> str:
        aggs = ", ".join(f"{sql} AS {name}" for name, sql in RACK_METRICS.items())
        return (
            "CREATE TEMP VIEW rack AS SELECT ts, date, rack, count(*) AS n_gpus, "
            f"{aggs}, sum(energy_mj) AS energy_mj FROM gpu GROUP BY ts, date, rack"
        )

    def _drop_warm(self) -> None:
        if self._warm is not None:
            self._warm.close()
        self._warm, self._warm_sources, self._warm_rack = None, {}, False

    def _warm_connection(self, tables: frozenset[str] | None) -> duckdb.DuckDBPyConnection:
        """The engine's one long-lived connection, its views brought up to date.

        Only for statements the check passed (a single SELECT cannot create or replace a
        view), so nothing a query does outlives it. Registering the views and planning the
        rack view once instead of per query saves most of a small query's time; a view is
        registered again only when its table's dataset changed (files came or went).
        """
        if self._warm is None:
            self._warm = self._db.cursor()
            self._warm_sources = {}
        cur = self._warm
        names = self._view_names(tables) & set(self.datasets.tables)
        for name in sorted(names):
            src = self.datasets.get(name)
            if self._warm_sources.get(name) is not src:
                cur.register(name, src)
                self._warm_sources[name] = src
        if "gpu" in names and not self._warm_rack:
            cur.execute(self._rack_view_sql())
            self._warm_rack = True
        return cur

    def run(
        self,
        sql: str,
        *,
        timeout_s: float,
        max_rows: int,
        max_bytes: int = 64 << 20,
        check: bool = True,
        tables: frozenset[str] | None = None,
        checked_select: bool = False,
    ) -> pa.Table:
        """Run one query within timeout_s [s]; raise SqlRefused on any refusal or failure.

        ``check=False`` skips the statement check (tests prove the sandbox holds without
        it); ``tables`` then names the views to register, if a check already found them
        (None: every view). ``checked_select=True`` says the caller's check passed it: it
        then runs on the warm connection; unchecked text gets a fresh one.
        """
        if check:
            checked = self._check(sql)
            text, tables = checked.sql, checked.tables
        else:
            text = check_text(sql)
        warm = check or checked_select
        try:
            return self._run(text, tables, timeout_s, max_rows, max_bytes, warm)
        except _Vanished:
            # compaction or retention removed a file between discovery and scan: rediscover
            self.datasets.forget()
            return self._run(text, tables, timeout_s, max_rows, max_bytes, warm)

    def _run(
        self,
        sql: str,
        tables: frozenset[str] | None,
        timeout_s: float,
        max_rows: int,
        max_bytes: int,
        warm: bool,
    ) -> pa.Table:
        cur = self._warm_connection(tables) if warm else self._connect(tables)
        fired = threading.Event()

        def stop() -> None:
            fired.set()
            cur.interrupt()

        self._watchdog.arm(max(timeout_s, 0.0), stop)
        try:
            rel = cur.sql(sql)
            if rel is None:  # a statement without a result (only reachable with check=False)
                return pa.table({})
            reader = rel.to_arrow_reader(8192)
            batches: list[pa.RecordBatch] = []
            rows = size = 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                size += batch.nbytes
                if rows > max_rows:
                    raise SqlRefused(
                        f"result has more than {max_rows} rows; "
                        "add a LIMIT or aggregate (e.g. a rollup view such as gpu_1m)"
                    )
                if size > max_bytes:
                    raise SqlRefused(
                        f"result larger than {max_bytes >> 20} MiB; select fewer columns or rows"
                    )
            return pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise SqlTimeout(_timeout_message(timeout_s)) from exc
        except duckdb.PermissionException as exc:
            raise SqlRefused("file access is refused: " + _one_line(exc)) from exc
        except duckdb.OutOfMemoryException as exc:
            raise SqlRefused("query needs more memory than its limit: " + _one_line(exc)) from exc
        except duckdb.Error as exc:
            if "no such file" in str(exc).lower():
                raise _Vanished from exc
            if "interrupt" in str(exc).lower():
                raise SqlTimeout(_timeout_message(timeout_s)) from exc
            raise SqlRefused("query failed: " + _one_line(exc)) from exc
        except (pa.ArrowException, OSError) as exc:
            # DuckDB's errors surface as Arrow errors when raised while streaming the result
            if "interrupt" in str(exc).lower():
                raise SqlTimeout(_timeout_message(timeout_s)) from exc
            if "no such file" in str(exc).lower():
                raise _Vanished from exc
            raise SqlRefused("query failed: " + _one_line(exc)) from exc
        finally:
            self._watchdog.disarm()
            if not warm:
                cur.close()
            elif fired.is_set():
                # an interrupt that lands as the query ends would stop the connection's
                # next query: a connection that was interrupted is not used again
                self._drop_warm()


class _Watchdog:
    """One thread per engine that calls the running query's stop function at its deadline.

    A threading.Timer per query cost 5-6 ms of a small query on a loaded machine (starting
    a thread waits until the new thread runs); this thread is started once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[float, Callable[[], None]] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, timeout_s: float, stop: Callable[[], None]) -> None:
        """Call ``stop`` in ``timeout_s`` [s] unless :meth:`disarm` comes first."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sql-deadline", daemon=True)
                self._thread.start()
            self._job = (time.monotonic() + timeout_s, stop)
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._job = None
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._job = None
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                if self._job is None:
                    self._cond.wait()
                    continue
                deadline, stop = self._job
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._job = None
                stop()


class _Vanished(Exception):
    """A file listed in a dataset was removed before the scan reached it."""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _timeout_message(timeout_s: float) -> str:
    return (
        f"query stopped at its time limit ({timeout_s:.3g} s left when it started); "
        "narrow the time range or use a rollup view"
    )
