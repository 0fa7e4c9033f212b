"""The sink's decoding refuses exactly what the worker refuses, and never raises otherwise."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.decode import (
    Incoming,
    decode_many,
    decode_message,
    reason_code,
    split_by_day,
    table_day,
)
from storage.layout import default_tables
from streams.codec import encode_frame, points_batch
from streams.schema import DLQ_REASONS
from twin.errors import DecodeError

from .bad_inputs import BAD_FRAMES, NOW_MS, frame, year_ms

TABLES = default_tables()
GPU = TABLES["gpu"]


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_gpu_frames_are_refused_with_a_code(name: str) -> None:
    value = BAD_FRAMES[name]()
    key = None if name == "mixed racks" else b"R0001"
    with pytest.raises(DecodeError) as info:
        decode_message(GPU, key, value, NOW_MS, now_ms=NOW_MS)
    assert reason_code(info.value) in DLQ_REASONS
    # The batch path refuses it too, and keeps its good neighbour.
    good = frame()
    got = decode_many(GPU, [Incoming(b"R0001", good, NOW_MS), Incoming(key, value, NOW_MS)], NOW_MS)
    assert isinstance(got[0], pa.Table) and got[0].num_rows == 8
    assert isinstance(got[1], DecodeError)


def test_replay_header_lifts_only_the_age_limit() -> None:
    old = frame(ts_ms=NOW_MS - 3 * 86_400_000)
    with pytest.raises(DecodeError):
        decode_message(GPU, b"R0001", old, NOW_MS, now_ms=NOW_MS)
    assert decode_message(GPU, b"R0001", old, NOW_MS, now_ms=NOW_MS, replay=True).num_rows == 8
    future = frame(ts_ms=year_ms(2300))
    with pytest.raises(DecodeError):
        decode_message(GPU, b"R0001", future, NOW_MS, now_ms=NOW_MS, replay=True)


def test_points_frames_use_the_worker_rules() -> None:
    plant = TABLES["plant"]
    good = encode_frame(points_batch(NOW_MS, "CDU-1", {"supply_temp_c": 30.0, "flow_kg_s": 2.0}))
    assert decode_message(plant, b"CDU-1", good, NOW_MS, now_ms=NOW_MS).num_rows == 2
    for pts in ({"supply_temp_c": float("nan")}, {"supply_temp_c": 1000.0}, {"flow_kg_s": -1.0}):
        bad = encode_frame(points_batch(NOW_MS, "CDU-1", pts))
        with pytest.raises(DecodeError):
            decode_message(plant, b"CDU-1", bad, NOW_MS, now_ms=NOW_MS)


@pytest.mark.parametrize(
    "doc, code",
    [
        ({"ts": -1e15, "scope": "s", "name": "x", "value": 1}, "ts_too_old"),
        ({"ts": 1e300, "scope": "s", "name": "x", "value": 1}, "ts_future"),
        ({"ts": "10000-01-01T00:00:00+00:00", "scope": "s", "name": "x", "value": 1}, "bad_field"),
        ({"ts": "9999-12-31T23:59:59+00:00", "scope": "s", "name": "x", "value": 1}, "ts_future"),
        ({"ts": "1950-01-01T00:00:00+00:00", "scope": "s", "name": "x", "value": 1}, "ts_too_old"),
        ({"ts": 2**70, "scope": "s", "name": "x", "value": 1}, "ts_future"),
        ({"ts": None, "scope": "s", "name": "x", "value": None}, "bad_field"),
        ({"ts": 1_790_000_000_000, "scope": "s", "name": "x", "value": float("nan")}, "not_finite"),
        ({"ts": 1_790_000_000_000, "scope": "s", "name": "x", "value": float("inf")}, "not_finite"),
        ({"ts": 1_790_000_000_000, "scope": "s", "name": "x", "value": 2**70}, "bad_field"),
    ],
)
def test_bad_json_rows(doc: dict[str, object], code: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(TABLES["kpi"], b"s", json.dumps(doc).encode(), NOW_MS)
    assert reason_code(info.value) == code


def test_deep_json_is_refused() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(DecodeError) as info:
        decode_message(TABLES["state"], b"R1", deep, NOW_MS)
    assert reason_code(info.value) == "too_deep"
    nested = ('{"a":' * 5000 + "1" + "}" * 5000).encode()
    with pytest.raises(DecodeError):
        decode_message(TABLES["state"], b"R1", nested, NOW_MS)


def test_null_or_invalid_record_time_is_refused_not_raised() -> None:
    for ts in (-(10**15), 10**18):
        with pytest.raises(DecodeError):
            decode_message(TABLES["state"], b"R1", b'{"a": 1}', ts)


def test_table_day_and_split_by_day() -> None:
    t = decode_message(GPU, b"R0001", frame(ts_ms=1_790_000_000_000), 0)
    assert table_day(t).isoformat() == "2026-09-21"
    two = pa.concat_tables([t, decode_message(GPU, b"R0001", frame(1_790_100_000_000), 0)])
    assert [d.isoformat() for d, _ in split_by_day(two)] == ["2026-09-21", "2026-09-22"]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_frames_never_raise_anything_but_decode_error(data: st.DataObject) -> None:
    value = bytearray(frame())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(value) - 1))
        value[i] = data.draw(st.integers(0, 255))
    try:
        t = decode_message(GPU, b"R0001", bytes(value), NOW_MS, now_ms=NOW_MS)
    except DecodeError as exc:
        assert reason_code(exc)
        return
    assert t.num_rows <= 1024
    assert table_day(t)


def test_every_code_of_the_store_is_a_dlq_reason() -> None:
    import storage.decode as d

    codes = {v for k, v in vars(d).items() if k.startswith("CODE_")}
    assert len(codes) >= 10 and codes <= DLQ_REASONS
