"""The one parser of times for the whole twin: ISO 8601 text, or epoch numbers in a named unit.

Every time that comes from outside (telemetry.ingest JSON, line protocol, Telegraf JSON, the
store's JSON tables, ``twin replay --from/--to``, ``twin whatif --start``, CSV files) goes
through here, so one rule applies everywhere:

- a number is a count since 1970-01-01T00:00Z in the unit the caller names: ``ns``, ``us``,
  ``ms`` or ``s``. Nothing is guessed from the number's size (1.7e9 read as seconds and
  1.7e12 as milliseconds is how a 1 s Telegraf timestamp became "too old");
- text is ISO 8601 in the RFC 3339 profile: ``YYYY-MM-DD``, then optionally ``T`` (or a
  space) and ``HH:MM``, ``:SS``, a fraction of up to 9 digits, then a zone ``Z`` or
  ``+HH:MM`` (``+HHMM``, ``+HH``). Text without a zone is refused unless the caller says that
  naive times are UTC (a command-line flag, a CSV file), since a zone guessed is an hour off;
- numeric text (``"1764331200"``) is a number only where the caller allows it (:func:`text_ns`);
- the result is integer nanoseconds (or milliseconds, floored) within 1970-01-01 ..
  9999-12-31T23:59:59.999999999 UTC, what the store's date partitions and ``datetime``
  represent. A bool, NaN, infinity, a date that does not exist or a time outside that range
  raises :class:`TimeError` naming the value and what was expected.

Pure: no clock, no I/O. Arithmetic is on integers (a float goes through its shortest decimal
representation), so 1764331200.123 s is exactly ...200_123 ms, never ...200_122.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Final, Literal

from twin.errors import TwinError

Unit = Literal["ns", "us", "ms", "s"]
#: Nanoseconds in one of each unit.
UNIT_NS: Final[dict[str, int]] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
#: The range of a time [ns since epoch]: 1970-01-01T00:00Z .. 9999-12-31T23:59:59.999999999Z.
MIN_NS: Final = 0
MAX_NS: Final = 253_402_300_800 * 1_000_000_000 - 1
MAX_MS: Final = MAX_NS // 1_000_000

TimeProblem = Literal["bad", "not_finite", "too_old", "future"]

_ISO: Final = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[Tt ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?)?"
)
_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class TimeError(TwinError):
    """A time that cannot be read; ``problem`` says which kind (callers map it to a code):
    ``bad`` (malformed, no zone, wrong type), ``not_finite``, ``too_old`` (before 1970),
    ``future`` (after 9999)."""

    def __init__(self, message: str, problem: TimeProblem = "bad") -> None:
        super().__init__(message)
        self.problem: TimeProblem = problem


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_unit(unit: str) -> int:
    """Nanoseconds per ``unit``; TimeError listing the units for any other name."""
    try:
        return UNIT_NS[unit]
    except (KeyError, TypeError):
        raise TimeError(f"time unit must be one of ns, us, ms, s, got {_show(unit)}") from None


def _in_range(ns: int, shown: object) -> int:
    if ns < MIN_NS:
        raise TimeError(f"time {_show(shown)} is before 1970-01-01", "too_old")
    if ns > MAX_NS:
        raise TimeError(f"time {_show(shown)} is after 9999-12-31", "future")
    return ns


def epoch_ns(value: int | float, unit: str) -> int:
    """[ns since epoch] of ``value`` counted in ``unit`` since 1970-01-01T00:00Z.

    A float keeps the digits of its shortest representation; a fraction of a nanosecond is
    dropped (floored).
    """
    per = check_unit(unit)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TimeError(f"time must be a number of {unit} since 1970, got {_show(value)}")
    if isinstance(value, int):
        # compare before multiplying: an int of 4,000 digits costs nothing to refuse
        if value > MAX_NS:
            return _in_range(MAX_NS + 1, value)
        return _in_range(value * per, value)
    if not math.isfinite(value):
        raise TimeError(f"time {value!r} is not finite", "not_finite")
    return _in_range(math.floor(Decimal(repr(value)) * per), value)


def iso_ns(text: str, *, naive_utc: bool = False) -> int:
    """[ns since epoch] of an ISO 8601 time (module docstring for the accepted forms).

    ``naive_utc``: text without a zone (a date alone included) is UTC; otherwise refused.
    """
    if not isinstance(text, str):
        raise TimeError(f"time must be ISO 8601 text, got {_show(text)}")
    m = _ISO.fullmatch(text.strip())
    if m is None:
        raise TimeError(f"time {_show(text)} is not ISO 8601 (like 2026-11-28T12:00:00Z)")
    if m["z"] is None and m["sign"] is None and not naive_utc:
        raise TimeError(f"time {_show(text)} has no time zone; add Z or +00:00")
    try:
        day = dt.datetime(
            int(m["y"]),
            int(m["mo"]),
            int(m["d"]),
            int(m["h"] or 0),
            int(m["mi"] or 0),
            int(m["s"] or 0),
            tzinfo=dt.UTC,
        )
    except ValueError as exc:  # month 13, February 30, hour 24, second 60
        raise TimeError(f"time {_show(text)} does not exist ({exc})") from None
    offset_s = 0
    if m["sign"] is not None:
        oh, om = int(m["oh"]), int(m["om"] or 0)
        if oh > 23 or om > 59:
            raise TimeError(f"time {_show(text)} has an impossible zone offset")
        offset_s = (oh * 3600 + om * 60) * (1 if m["sign"] == "+" else -1)
    delta = day - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds - offset_s
    fraction_ns = int((m["f"] or "").ljust(9, "0"))
    return _in_range(seconds * 1_000_000_000 + fraction_ns, text)


def parse_ns(value: object, *, unit: str | None, naive_utc: bool = False) -> int:
    """[ns since epoch] of a number in ``unit`` or of ISO 8601 text.

    ``unit=None``: only text is a time (a number is refused, its unit unknown).
    """
    if isinstance(value, str):
        return iso_ns(value, naive_utc=naive_utc)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if unit is None:
            raise TimeError(f"time {_show(value)} is a number of unknown unit; give ISO 8601")
        return epoch_ns(value, unit)
    expected = "ISO 8601 text" if unit is None else f"{unit} since 1970 or ISO 8601 text"
    raise TimeError(f"time must be {expected}, got {_show(value)}")


def parse_ms(value: object, *, unit: str | None, naive_utc: bool = False) -> int:
    """[ms since epoch] (floored) of a number in ``unit`` or of ISO 8601 text."""
    return parse_ns(value, unit=unit, naive_utc=naive_utc) // 1_000_000


def text_ns(text: str, *, unit: str | None, naive_utc: bool = False) -> int:
    """[ns since epoch] of text holding either a number in ``unit`` or ISO 8601.

    For text cells and flags, where ``"1764331200"`` is a number (``unit=None``: refused).
    """
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        if unit is None:
            raise TimeError(f"time {_show(text)} is a number of unknown unit; give ISO 8601")
        number = Decimal(stripped)
        if not number.is_finite() or abs(number) > MAX_NS:
            return _in_range(MAX_NS + 1 if number > 0 else -1, text)
        return _in_range(math.floor(number * check_unit(unit)), text)
    return iso_ns(stripped, naive_utc=naive_utc)


def to_datetime(ns: int) -> dt.datetime:
    """A UTC datetime of [ns since epoch] (microseconds: datetime's resolution, floored)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1_000)


def format_iso(ns: int) -> str:
    """RFC 3339 text of [ns since epoch] with milliseconds, ``Z`` (what :func:`iso_ns` reads)."""
    return to_datetime(ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")
