"""``twin detect``: run the streaming detectors over a time-series CSV or a SQL result.

A thin face over :func:`models.backtest.detect_rows` (tests call :func:`run_detect`).
Exit status: 0 done, 2 bad usage or bad input (a one-line error naming the row), 1 the
output could not be written.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from models.backtest import DetectInputError, detect_rows, usable_detectors
from twin.errors import TwinError


def add_detect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``detect`` on an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "detect",
        help="score a time-series CSV (or SQL result) with the streaming detectors",
        description="Run a detector over a table row by row in time order, with no "
        "look-ahead, and write one anomaly score in [0, 1] per input row and column. "
        "Input: a timestamp column (epoch seconds or ISO 8601) and numeric columns, or the "
        "long format ts,series,value.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help="CSV file to score ('-' = stdin; no default)")
    src.add_argument(
        "--from-sql", metavar="SELECT", help="score the result of this query (no default)"
    )
    p.add_argument("--output", default="-", help="CSV file to write (default -: stdout)")
    p.add_argument(
        "--detector",
        default="combined",
        choices=usable_detectors(),
        help="detector (default combined: z-score, drift, stuck and rate of change)",
    )
    p.add_argument(
        "--ts-column",
        default=None,
        help="name of the timestamp column (default: the first column named ts, timestamp, "
        "time, ...)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="Parquet store for --from-sql",
    )
    p.set_defaults(handler=run_detect_args)
    return p


def _csv_rows(f: IO[str]) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        raise DetectInputError("row 1: empty input, expected a header") from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        try:
            for cells in reader:
                if cells:
                    yield reader.line_num, cells
        except csv.Error as exc:
            raise DetectInputError(f"row {reader.line_num}: {exc}") from None

    return header, rows()


def _sql_rows(sql: str, data_dir: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    from storage.sql import SqlService

    svc = SqlService(data_dir)
    try:
        table = svc.query(sql)
    finally:
        svc.close()
    header = list(table.column_names)
    cols = [table.column(i).to_pylist() for i in range(table.num_columns)]

    def cell(v: object) -> str:
        if v is None:
            return ""
        iso = getattr(v, "isoformat", None)
        return iso() if callable(iso) else str(v)

    def rows() -> Iterator[tuple[int, list[str]]]:
        for r in range(table.num_rows):
            yield r + 2, [cell(c[r]) for c in cols]

    return header, rows()


def run_detect(
    *,
    output: str | Path,
    input: str | Path | None = None,
    from_sql: str | None = None,
    data_dir: Path = Path("data"),
    detector: str = "combined",
    ts_column: str | None = None,
) -> int:
    """Score ``input`` (a CSV path, '-' = stdin) or the ``from_sql`` result into ``output``
    (a CSV path, '-' = stdout); returns the exit status, errors in one line on stderr.

    A file output is written beside it as ``<output>.partial`` and renamed when complete:
    an input error half-way leaves no truncated scores behind.
    """
    out_f: IO[str] | None = None
    in_f: IO[str] | None = None
    partial = None if str(output) == "-" else Path(str(output) + ".partial")
    done = False
    try:
        if from_sql is not None:
            header, rows = _sql_rows(from_sql, data_dir)
        else:
            if input is None:
                raise DetectInputError("give --input FILE or --from-sql QUERY")
            in_f = sys.stdin if str(input) == "-" else open(input, newline="")  # noqa: SIM115
            header, rows = _csv_rows(in_f)
        scored = detect_rows(header, rows, detector=detector, ts_column=ts_column)
        out_header = next(scored)
        try:
            out_f = sys.stdout if partial is None else open(partial, "w", newline="")  # noqa: SIM115
            w = csv.writer(out_f, lineterminator="\n")
            w.writerow(out_header)
            for row in scored:
                w.writerow(row)
            out_f.flush()
            if partial is not None:
                out_f.close()
                os.replace(partial, output)
            done = True
        except OSError as exc:
            _error(f"cannot write {output}: {exc.strerror or exc}")
            return 1
    except OSError as exc:
        _error(f"cannot read {input}: {exc.strerror or exc}")
        return 2
    except TwinError as exc:
        _error(str(exc))
        return 2
    finally:
        for f in (in_f, out_f):
            if f is not None and f not in (sys.stdin, sys.stdout):
                f.close()
        if partial is not None and not done:
            with contextlib.suppress(OSError):
                partial.unlink()
    return 0


def _error(message: str) -> None:
    print("twin detect: error: " + " ".join(message.split()), file=sys.stderr)


def run_detect_args(args: argparse.Namespace) -> int:
    return run_detect(
        output=args.output,
        input=args.input,
        from_sql=args.from_sql,
        data_dir=args.data_dir,
        detector=args.detector,
        ts_column=args.ts_column,
    )
