"""``twin sql "SELECT ..."``: query the store from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.cliutil import DEFAULT_DATA_DIR, data_dir_arg, env
from storage.sql import (
    NoStoreError,
    SqlService,
    cell_text,
    require_store,
    to_csv,
    to_json,
    to_parquet_bytes,
    to_text,
)
from twin.errors import TwinError

FORMATS = ("table", "csv", "json", "parquet")


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(value: str) -> float | int:
        try:
            x = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
        if not x > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return x

    return parse


def _fill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help="one SELECT statement over the store's views")
    p.add_argument("--format", choices=FORMATS, default=env("TWIN_SQL_FORMAT", "table"))
    p.add_argument("--out", type=Path, default=None, help="write to FILE instead of stdout")
    p.add_argument("--data-dir", type=data_dir_arg, default=env("TWIN_DATA_DIR", DEFAULT_DATA_DIR))
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=float(env("TWIN_SQL_TIMEOUT_S", "30")),
        help="time limit per query [s]",
    )
    p.add_argument(
        "--max-rows", type=_positive(int), default=int(env("TWIN_SQL_MAX_ROWS", "100000"))
    )


def add_sql_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sql`` on an argparse subparsers object; ``run_sql`` runs it."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sql", help="run a read-only SQL query over the Parquet history"
    )
    _fill_parser(p)
    p.set_defaults(handler=run_sql)
    return p


def _rich_table(table: pa.Table) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_lines=False)
    for name in table.column_names:
        t.add_column(name)
    for row in table.to_pylist():
        t.add_row(*(cell_text(v) for v in row.values()))
    Console().print(t)


def _error(message: object) -> None:
    # DuckDB's messages span lines (caret under the token, candidate lists): one line for
    # scripts that read the last line of stderr.
    print("twin sql: " + " ".join(str(message).split()), file=sys.stderr)


def run_sql(args: argparse.Namespace) -> int:
    """Run the query; 0 on success, 2 on a refused or failed query, 1 if --out fails."""
    try:
        require_store(args.data_dir)
    except NoStoreError as exc:
        _error(exc)
        return 1
    try:
        svc = SqlService(args.data_dir, timeout_s=args.timeout, max_rows=args.max_rows)
        try:
            result = svc.query(args.query)
        finally:
            svc.close()
    except TwinError as exc:
        _error(exc)
        return 2
    try:
        return _emit(args, result)
    except OSError as exc:
        _error(f"cannot write {args.out}: {exc.strerror or exc}")
        return 1


def _emit(args: argparse.Namespace, result: pa.Table) -> int:
    if args.format == "parquet":
        data = to_parquet_bytes(result)
        if args.out is None:
            if sys.stdout.isatty():
                _error("--format parquet needs --out FILE or a pipe")
                return 2
            sys.stdout.buffer.write(data)
        else:
            args.out.write_bytes(data)
        return 0
    if args.format == "table" and args.out is None and sys.stdout.isatty():
        _rich_table(result)
        return 0
    text = {"table": to_text, "csv": to_csv, "json": to_json}[args.format](result)
    if args.out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        args.out.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="twin sql")
    _fill_parser(p)
    return run_sql(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
