"""InfluxDB line protocol: a write body -> metrics, each bad line reported with its number.

A line is ``measurement[,tag=value...] field=value[,field=value...] [timestamp]``, with
backslash escapes, double-quoted string fields, ``i`` (integer) and ``u`` (unsigned)
suffixes, booleans (t, T, true, True, TRUE, f, ...) and an optional integer timestamp in the
write's precision (InfluxDB v2 docs, "Line protocol"). Lines are parsed by
``line-protocol-parser`` (a C extension, MIT); this module splits the body, skips blank and
``#`` comment lines, reads timestamps through twin/timeparse.py in the named precision, and
keeps the first error of each bad line.

Limitations, stated: a string field holding a raw newline splits its line (it is refused,
never misread); InfluxDB accepts it inside quotes.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from typing import Final

from line_protocol_parser import LineFormatError, parse_line

from streams.ingest_map import Metric
from twin.timeparse import UNIT_NS, TimeError, epoch_ns

#: Precisions of InfluxDB v2's /api/v2/write (``precision=``); ns is its default.
PRECISIONS: Final = tuple(UNIT_NS)
#: Longest line kept in an error message or a DLQ record's detail [characters].
SHOWN_CHARS: Final = 200


@dataclass(frozen=True)
class BadLine:
    """A refused line: 1-based number, its text, the reason code and the human reason."""

    number: int
    text: str
    code: str
    reason: str


class BodyTooLarge(Exception):
    """The (decompressed) body is larger than the limit."""


class BadBody(Exception):
    """The body cannot be read at all (corrupt gzip)."""


def gunzip(data: bytes, limit: int) -> bytes:
    """The gzip ``data`` decompressed, at most ``limit`` bytes (BodyTooLarge beyond: a small
    gzip bomb must not fill memory); BadBody when it is not gzip."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
        if len(out) > limit:
            raise BodyTooLarge(f"decompressed body is larger than {limit} bytes")
        if not d.eof:
            raise BadBody("truncated gzip body")
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise BadBody(f"not gzip: {exc}") from None
    return out


def _shown(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def parse_line_protocol(
    body: bytes, precision: str = "ns"
) -> tuple[list[tuple[int, Metric]], list[BadLine]]:
    """(line number, metric) of every good line and the bad lines, in order.

    ``precision``: the unit of the timestamps (ns, us, ms, s); a line without one gets
    ``ts_ns=None`` (the caller stamps it with its clock, as InfluxDB does).
    """
    if precision not in UNIT_NS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    good: list[tuple[int, Metric]] = []
    bad: list[BadLine] = []
    for number, raw in enumerate(body.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip() or raw.lstrip().startswith(b"#"):
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            shown = _shown(raw.decode("utf-8", "backslashreplace"))
            bad.append(BadLine(number, shown, "bad_line", "not UTF-8"))
            continue
        if "\x00" in line:  # the C parser would stop at NUL and read a shorter line
            bad.append(BadLine(number, _shown(line), "bad_line", "a NUL character"))
            continue
        try:
            parsed = parse_line(line)
        except LineFormatError as exc:
            bad.append(BadLine(number, _shown(line), "bad_line", str(exc) or "not line protocol"))
            continue
        ts = parsed.get("time")
        ts_ns: int | None = None
        if ts is not None:
            try:
                ts_ns = epoch_ns(ts, precision)
            except TimeError as exc:
                code = {"too_old": "ts_too_old", "future": "ts_future"}.get(exc.problem, "bad_line")
                bad.append(BadLine(number, _shown(line), code, f"timestamp: {exc}"))
                continue
        metric = Metric(parsed["measurement"], parsed["tags"], parsed["fields"], ts_ns)
        good.append((number, metric))
    return good, bad
