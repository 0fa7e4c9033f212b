"""Streaming detectors over a time-series table, row by row, with no look-ahead.

The input is rows of text cells (a CSV file, or a SQL result turned into text):

- wide: a timestamp column and one or more numeric columns, one series per column;
- long: exactly the columns ``ts, series, value`` (any timestamp name, see
  :data:`TS_NAMES`), one sample per row; series may appear at any time.

Timestamps are seconds since the Unix epoch or ISO 8601 (a time without an offset is
UTC). Rows must not go back in time. Consecutive rows with the same timestamp form one
step (one vectorised detector call); each series' sample is scored against what the
detector learnt from the samples before it, then learnt. Empty cells and ``nan``, ``NA``,
``null`` are missing samples: their score cell is empty. Every other cell gets one score
in [0, 1].

Bad input raises :class:`DetectInputError` with one line naming the input row (its line
number, the header being line 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from models.base import Detector
from models.registry import DETECTORS, make_detector
from twin.errors import TwinError
from twin.timeparse import TimeError, text_ns

#: Column names taken as the timestamp (case-insensitive), in this order of preference.
TS_NAMES = ("ts", "timestamp", "time", "datetime", "date", "ts_s", "t")
MISSING = frozenset({"", "nan", "na", "n/a", "null", "none"})


class DetectInputError(TwinError):
    """The input table is not a time series the detectors can read; names the row."""


def usable_detectors() -> list[str]:
    """Detectors that score a single series (no companion needed): the ones ``twin detect``
    can run over a table."""
    return sorted(n for n, cls in DETECTORS.items() if getattr(cls, "aux", "no") != "required")


def parse_ts(text: str, line: int) -> float:
    """Seconds since the epoch [s] of a timestamp cell: a number of seconds or ISO 8601
    (no offset = UTC), read by twin/timeparse.py, the one time parser of the code base."""
    try:
        return text_ns(text, unit="s", naive_utc=True) / 1e9
    except TimeError as exc:
        raise DetectInputError(
            f"row {line}: cannot parse timestamp {text.strip()[:40]!r} (seconds since the epoch "
            f"or ISO 8601): {exc}"
        ) from None


def parse_value(text: str, line: int, column: str) -> float:
    """A sample [input unit]; NaN for a missing cell."""
    t = text.strip()
    if t.lower() in MISSING:
        return math.nan
    try:
        return float(t)
    except ValueError:
        raise DetectInputError(
            f"row {line}, column {column!r}: cannot parse {text!r} as a number"
        ) from None


def find_ts_column(header: list[str], ts_column: str | None) -> int:
    """Index of the timestamp column in ``header``."""
    low = [h.strip().lower() for h in header]
    if ts_column is not None:
        if ts_column.lower() not in low:
            raise DetectInputError(f"row 1: no column {ts_column!r}; columns: {', '.join(header)}")
        return low.index(ts_column.lower())
    for name in TS_NAMES:
        if name in low:
            return low.index(name)
    raise DetectInputError(
        f"row 1: no timestamp column (one of {', '.join(TS_NAMES)}); "
        f"columns: {', '.join(header) or '(none)'}"
    )


@dataclass
class _Step:
    ts_s: float
    ts_text: str
    rows: list[tuple[int, list[str], list[float]]] = field(default_factory=list)


def detect_rows(
    header: list[str],
    rows: Iterable[tuple[int, list[str]]],
    *,
    detector: str | Detector = "combined",
    ts_column: str | None = None,
) -> Iterator[list[str]]:
    """Scores of a table: yields the output header, then one output row per input row.

    ``rows`` yields ``(line number, cells)``. Wide input gives ``ts, <each series>`` with
    each cell's score; long input gives ``ts, series, value, score``.
    """
    det = make_detector(detector) if isinstance(detector, str) else detector
    if det.aux == "required":
        raise DetectInputError(
            f"detector {det.name} needs a companion series; a table can use: "
            f"{', '.join(usable_detectors())}"
        )
    its = find_ts_column(header, ts_column)
    names = [h.strip() for i, h in enumerate(header) if i != its]
    if not names:
        raise DetectInputError("row 1: no value columns besides the timestamp")
    long = sorted(n.lower() for n in names) == ["series", "value"]
    if long:
        i_series = next(i for i, h in enumerate(header) if h.strip().lower() == "series")
        i_value = next(i for i, h in enumerate(header) if h.strip().lower() == "value")
        yield [header[its].strip(), "series", "value", "score"]
    else:
        value_idx = [i for i in range(len(header)) if i != its]
        yield [header[its].strip(), *names]
    series: dict[str, int] = {} if long else {n: k for k, n in enumerate(names)}
    step: _Step | None = None
    width = len(header)
    for line, cells in rows:
        if len(cells) != width:
            raise DetectInputError(f"row {line}: {len(cells)} fields, the header has {width}")
        ts = parse_ts(cells[its], line)
        if step is not None and ts < step.ts_s:
            raise DetectInputError(
                f"row {line}: time goes backwards ({cells[its].strip()!r} after {step.ts_text!r})"
            )
        if step is not None and ts > step.ts_s:
            yield from _flush(det, step, long, len(series))
            step = None
        if step is None:
            step = _Step(ts, cells[its].strip())
        if long:
            name = cells[i_series].strip()
            if not name:
                raise DetectInputError(f"row {line}: empty series name")
            values = [parse_value(cells[i_value], line, "value")]
            series.setdefault(name, len(series))
            cells = [cells[its], name, cells[i_value]]
            values.append(float(series[name]))
        else:
            values = [parse_value(cells[i], line, header[i].strip()) for i in value_idx]
        step.rows.append((line, cells, values))
    if step is not None:
        yield from _flush(det, step, long, len(series))


def _flush(det: Detector, step: _Step, long: bool, n: int) -> Iterator[list[str]]:
    x = np.full(n, np.nan)
    seen: set[int] = set()
    for line, cells, values in step.rows:
        if long:
            k = int(values[1])
            if k in seen:
                raise DetectInputError(
                    f"row {line}: second sample of series {cells[1]!r} at time {step.ts_text!r}"
                )
            seen.add(k)
            x[k] = values[0]
        else:
            v = np.array(values)
            both = ~np.isnan(v) & ~np.isnan(x)
            if both.any():
                raise DetectInputError(
                    f"row {line}: a second sample at time {step.ts_text!r} in a column "
                    f"that already has one"
                )
            x = np.where(np.isnan(v), x, v)
    scores = det.update(step.ts_s, x)
    for _line, cells, values in step.rows:
        if long:
            k = int(values[1])
            text = "" if math.isnan(values[0]) else f"{scores[k]:.6g}"
            yield [cells[0].strip(), cells[1], cells[2].strip(), text]
        else:
            out = [cells[0].strip()]
            for j, value in enumerate(values):
                out.append("" if math.isnan(value) else f"{scores[j]:.6g}")
            yield out
