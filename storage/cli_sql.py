"""``twin sql "SELECT ..."``: query the store from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa

from storage.cliutil import add_data_dir_flag
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
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="output format (parquet needs --out)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write to FILE (default: stdout)",
    )
    add_data_dir_flag(p, "to query (as the sink's --data-dir)")
    p.add_argument(
        "--timeout", type=_positive(float), default=30.0, help="time limit per query [s]"
    )
    p.add_argument(
        "--max-rows",
        type=_positive(int),
        default=100_000,
        help="refuse a result of more rows than this",
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
    """Run the query; 0 on success, 2 on a refused or failed query (or parquet without
    --out), 1 if --out fails."""
    if args.format == "parquet" and args.out is None:
        _error("--format parquet needs --out FILE (Parquet is binary; --out /dev/stdout to pipe)")
        return 2
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
        args.out.write_bytes(to_parquet_bytes(result))
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
    from streams.cli import add_common_flags
    from streams.config import parse

    p = argparse.ArgumentParser(prog="twin sql")
    _fill_parser(p)
    add_common_flags(p)
    return run_sql(parse(p, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
