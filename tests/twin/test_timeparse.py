"""twin/timeparse.py: one rule for every time that enters the twin."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin.timeparse import (
    MAX_NS,
    TimeError,
    epoch_ns,
    format_iso,
    iso_ns,
    parse_ms,
    parse_ns,
    text_ns,
    to_datetime,
)

T0_S = 1_764_331_200  # 2025-11-28T12:00:00Z


@pytest.mark.parametrize(
    ("value", "unit", "ns"),
    [
        (T0_S, "s", T0_S * 10**9),
        (T0_S * 1000, "ms", T0_S * 10**9),
        (T0_S * 10**6, "us", T0_S * 10**9),
        (T0_S * 10**9, "ns", T0_S * 10**9),
        (1764331200.123, "s", 1_764_331_200_123_000_000),  # not ...122_999_999 (float error)
        (0, "s", 0),
        (1.5, "ns", 1),  # a fraction of a nanosecond is floored
    ],
)
def test_epoch_numbers_in_the_named_unit(value: float, unit: str, ns: int) -> None:
    assert epoch_ns(value, unit) == ns
    assert parse_ns(value, unit=unit) == ns


def test_the_size_of_a_number_never_changes_its_unit() -> None:
    # the old store rule read a number below 1e11 as seconds: 5 ms was 5 s
    assert parse_ms(5, unit="ms") == 5
    assert parse_ms(T0_S, unit="s") == T0_S * 1000
    assert parse_ms(T0_S, unit="ms") == T0_S  # 1970-01-21: a time, though an unlikely one


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2025-11-28T12:00:00Z", T0_S * 10**9),
        ("2025-11-28T12:00:00z", T0_S * 10**9),
        ("2025-11-28 12:00:00+00:00", T0_S * 10**9),
        ("2025-11-28T13:00:00+01:00", T0_S * 10**9),
        ("2025-11-28T13:00+0100", T0_S * 10**9),
        ("2025-11-28T07:00-05", T0_S * 10**9),
        ("2025-11-28T12:00:00.123456789Z", T0_S * 10**9 + 123_456_789),
        ("2025-11-28T12:00:00,5Z", T0_S * 10**9 + 500_000_000),
        ("1970-01-01T00:00:00Z", 0),
        ("9999-12-31T23:59:59.999999999Z", MAX_NS),
    ],
)
def test_iso_forms(text: str, ns: int) -> None:
    assert iso_ns(text) == ns


def test_naive_text_is_utc_only_where_the_caller_says_so() -> None:
    with pytest.raises(TimeError, match="no time zone"):
        iso_ns("2025-11-28T12:00:00")
    assert iso_ns("2025-11-28T12:00:00", naive_utc=True) == T0_S * 10**9
    assert iso_ns("2025-11-28", naive_utc=True) == (T0_S - 12 * 3600) * 10**9


@pytest.mark.parametrize(
    ("value", "unit", "problem", "message"),
    [
        (True, "ms", "bad", "must be"),
        (None, "ms", "bad", "must be"),
        ([1], "ms", "bad", "must be"),
        (float("nan"), "ms", "not_finite", "not finite"),
        (float("-inf"), "s", "not_finite", "not finite"),
        (-1, "ms", "too_old", "before 1970"),
        (1e300, "s", "future", "after 9999"),
        (10**4000, "ns", "future", "after 9999"),
        (253_402_300_800, "s", "future", "after 9999"),
        (5, "minutes", "bad", "one of ns, us, ms, s"),
        (5, None, "bad", "unknown unit"),
        ("yesterday", "s", "bad", "not ISO 8601"),
        ("2025-13-01T00:00Z", "s", "bad", "does not exist"),
        ("2025-02-29T00:00Z", "s", "bad", "does not exist"),
        ("2025-11-28T24:00Z", "s", "bad", "does not exist"),
        ("2025-11-28T23:59:60Z", "s", "bad", "does not exist"),
        ("2025-11-28T12:00+25:00", "s", "bad", "impossible zone"),
        ("10000-01-01T00:00:00+00:00", "s", "bad", "not ISO 8601"),
        ("1969-12-31T23:59:59Z", "s", "too_old", "before 1970"),
        ("0001-01-01T00:00+01:00", "s", "too_old", "before 1970"),
        ("9999-12-31T23:30-01:00", "s", "future", "after 9999"),
        ("2025-11-28T12:00:00.1234567890Z", "s", "bad", "not ISO 8601"),
        ("20251128T120000Z", "s", "bad", "not ISO 8601"),
        ("2025-W48-5", "s", "bad", "not ISO 8601"),
    ],
)
def test_refusals_say_what_is_wrong(
    value: object, unit: str | None, problem: str, message: str
) -> None:
    with pytest.raises(TimeError, match=message) as info:
        parse_ns(value, unit=unit)
    assert info.value.problem == problem
    assert "\n" not in str(info.value)


def test_numeric_text_only_with_a_unit() -> None:
    assert text_ns(" 1764331200 ", unit="s") == T0_S * 10**9
    assert text_ns("1764331200.5", unit="s") == T0_S * 10**9 + 500_000_000
    assert text_ns("2025-11-28T12:00Z", unit=None) == T0_S * 10**9
    with pytest.raises(TimeError, match="unknown unit"):
        text_ns("1764331200", unit=None)
    with pytest.raises(TimeError) as info:
        text_ns("9" * 5000, unit="s")
    assert info.value.problem == "future"
    with pytest.raises(TimeError) as info:
        text_ns("-5", unit="s")
    assert info.value.problem == "too_old"


NS = st.integers(0, MAX_NS)
ZONES = [
    dt.UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(-dt.timedelta(hours=8)),
]


@given(ns=NS)
def test_iso_round_trip_to_the_millisecond(ns: int) -> None:
    assert iso_ns(format_iso(ns)) == ns // 1_000_000 * 1_000_000


@given(ns=NS, unit=st.sampled_from(["ns", "us", "ms", "s"]))
def test_integer_epochs_round_trip_in_every_unit(ns: int, unit: str) -> None:
    per = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}[unit]
    assert epoch_ns(ns // per, unit) == ns // per * per
    assert text_ns(str(ns // per), unit=unit) == ns // per * per


@given(
    when=st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.sampled_from(ZONES),
    )
)
def test_agrees_with_datetime_on_every_zone(when: dt.datetime) -> None:
    text = when.isoformat()
    assert to_datetime(iso_ns(text)) == when
    expected_ms = (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)
    assert parse_ms(text, unit=None) == expected_ms


@given(value=st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=40))
def test_any_input_is_a_time_in_range_or_a_time_error(value: object) -> None:
    try:
        ns = parse_ns(value, unit="ms")
    except TimeError as exc:
        assert exc.problem in ("bad", "not_finite", "too_old", "future")
        return
    assert 0 <= ns <= MAX_NS
