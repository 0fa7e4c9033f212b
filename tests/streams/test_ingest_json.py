from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import decode_gpu_frame, decode_points_frame
from streams.ingest_json import convert_json, parse_ts_ms
from streams.schema import DLQ_REASONS, TOPIC_GPU, TOPIC_THERMAL
from twin.errors import DecodeError


def test_gpu_readings_of_one_instant_become_one_frame() -> None:
    readings = [
        {
            "kind": "gpu",
            "rack": "R7",
            "gpu": g,
            "ts": "2026-11-28T12:00:00Z",
            "power_w": 100.0 + g,
            "energy_mj": 5,
            "temp_gpu_c": 50,
            "temp_mem_c": 60,
            "sm_clock_mhz": 1500,
            "util_pct": 40,
        }
        for g in (3, 1)
    ]
    frames = convert_json(json.dumps(readings).encode())
    assert len(frames) == 1
    f = frames[0]
    assert (f.topic, f.key, f.batch.num_rows) == (TOPIC_GPU, "R7", 2)
    np.testing.assert_array_equal(f.batch.column("gpu").to_numpy(), [3, 1])
    np.testing.assert_array_equal(f.batch.column("power_w").to_numpy(), [103.0, 101.0])
    assert f.batch.column("ts").cast("int64")[0].as_py() == 1_795_867_200_000


def test_point_reading() -> None:
    doc = {"kind": "thermal", "unit": "CDU01", "point": "supply_temp_c", "value": 45.1, "ts": 17}
    (f,) = convert_json(json.dumps(doc).encode())
    assert (f.topic, f.key) == (TOPIC_THERMAL, "CDU01")
    assert f.batch.column("value").to_pylist() == [45.1]


@pytest.mark.parametrize(
    ("doc", "code", "reason"),
    [
        (b"{not json", "not_json", "not JSON"),
        (b"[]", "empty", "empty list"),
        (b"", "empty", "empty payload"),
        (b'{"kind": "gas", "ts": 1}', "unknown_kind", "kind must be gpu, thermal or power"),
        (b'{"kind": "gpu", "rack": "R1", "gpu": 1, "ts": "yesterday"}', "bad_field", "ISO 8601"),
        (
            b'{"kind": "gpu", "rack": "R1", "gpu": 1, "ts": "2026-01-01T00:00:00"}',
            "bad_field",
            "no time zone",
        ),
        (
            b'{"kind": "gpu", "rack": "R1", "gpu": -1, "ts": 1}',
            "bad_field",
            "gpu must be an integer",
        ),
        (
            b'{"kind": "gpu", "rack": "R1", "gpu": 1, "ts": 1, "power_w": "hot"}',
            "bad_field",
            "must be a number",
        ),
        (
            b'{"kind": "power", "unit": "", "point": "p_w", "value": 1, "ts": 1}',
            "bad_field",
            "non-empty",
        ),
    ],
)
def test_bad_json_is_refused_with_reason(doc: bytes, code: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        convert_json(doc)
    assert info.value.code == code


NOW = 1_795_000_000_000
GOOD = {
    "kind": "gpu", "rack": "R0001", "gpu": 1, "ts": NOW, "power_w": 300, "energy_mj": 5,
    "temp_gpu_c": 50, "temp_mem_c": 60, "sm_clock_mhz": 1500, "util_pct": 40,
}  # fmt: skip


def _gpu(**changes: object) -> bytes:
    return json.dumps(GOOD | changes).encode()


def _swap(old: bytes, new: bytes) -> bytes:
    good = _gpu()
    assert old in good
    return good.replace(old, new)


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "too_deep", id="deep-list"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "too_deep", id="deep-object"),
        pytest.param(_gpu(ts=1e300), "ts_future", id="ts-1e300"),
        pytest.param(_gpu(ts=-1e15), "ts_too_old", id="ts-minus-1e15"),
        pytest.param(_gpu(ts="0001-01-01T00:00+01:00"), "ts_too_old", id="ts-year-1"),
        pytest.param(_gpu(ts=NOW - 3 * 86_400_000), "ts_too_old", id="ts-3-days-old"),
        pytest.param(_gpu(ts=NOW + 3_600_000), "ts_future", id="ts-1-hour-ahead"),
        pytest.param(_swap(b'"power_w": 300', b'"power_w": NaN'), "not_finite", id="nan"),
        pytest.param(_swap(b'"power_w": 300', b'"power_w": -Infinity'), "not_finite", id="inf"),
        pytest.param(_swap(b'"power_w": 300', b'"power_w": 1e400'), "not_finite", id="1e400"),
        pytest.param(_gpu(ts=float("nan")), "not_finite", id="ts-nan"),
        pytest.param(_gpu(energy_mj=2**70), "out_of_range", id="energy-2-70"),
        pytest.param(_gpu(energy_mj=-1), "out_of_range", id="energy-negative"),
        pytest.param(_gpu(sm_clock_mhz=10**9), "out_of_range", id="clock-1e9-mhz"),
        pytest.param(_gpu(sm_clock_mhz=1e9), "out_of_range", id="clock-1e9-float"),
        pytest.param(_gpu(xid=2**32), "out_of_range", id="xid-2-32"),
        pytest.param(_gpu(xid="79"), "bad_field", id="xid-string"),
        pytest.param(_gpu(clock_event_reasons=None), "bad_field", id="reasons-null"),
        pytest.param(_gpu(power_limit_w="x"), "bad_field", id="limit-string"),
        pytest.param(_gpu(power_w=1e300), "out_of_range", id="power-1e300"),
        pytest.param(_gpu(power_w=-5), "out_of_range", id="power-negative"),
        pytest.param(_gpu(temp_gpu_c=1000), "out_of_range", id="temp-1000"),
        pytest.param(_gpu(util_pct=250), "out_of_range", id="util-250"),
        pytest.param(
            _swap(b'"power_w": 300', b'"power_w": ' + b"9" * 400), "out_of_range", id="400-digits"
        ),
        pytest.param(b'{"ts": ' + b"9" * 5000 + b"}", "not_json", id="int-5000-digits"),
        pytest.param(_gpu(rack="\ud800"), "bad_field", id="lone-surrogate"),
        pytest.param(_gpu(gpu=5000), "out_of_range", id="gpu-5000"),
        pytest.param(json.dumps([GOOD, GOOD]).encode(), "duplicate", id="duplicate-gpu"),
        pytest.param(json.dumps([GOOD] * 5000).encode(), "too_many_rows", id="5000-readings"),
        pytest.param(b"[1, 2, 3]", "bad_field", id="not-objects"),
        pytest.param(b'"text"', "bad_field", id="string"),
        pytest.param(b"null", "bad_field", id="null"),
        pytest.param(b"\xff\xfe{}", "not_json", id="not-utf8"),
        pytest.param(b" " * (2 << 20), "oversized", id="oversized"),
        pytest.param(
            json.dumps(
                {
                    "kind": "thermal",
                    "unit": "CDU01",
                    "point": "pump_power_w",
                    "value": 1e300,
                    "ts": NOW,
                }
            ).encode(),
            "out_of_range",
            id="pump-power-1e300",
        ),
        pytest.param(
            json.dumps(
                {"kind": "thermal", "unit": "CDU01", "point": "flow_kg_s", "value": True, "ts": NOW}
            ).encode(),
            "bad_field",
            id="bool-value",
        ),
    ],
)
def test_adversarial_readings_are_refused_with_a_code(doc: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        convert_json(doc, now_ms=NOW)
    assert info.value.code == code, info.value.reason
    assert info.value.code in DLQ_REASONS


def test_converted_frames_pass_the_arrow_decoder() -> None:
    readings = [GOOD | {"gpu": g} for g in range(4)] + [
        {"kind": "thermal", "unit": "CDU01", "point": "flow_kg_s", "value": 40.0, "ts": NOW}
    ]
    frames = convert_json(json.dumps(readings).encode(), now_ms=NOW)
    gpu = decode_gpu_frame(frames[0].value, key=b"R0001", now_ms=NOW)
    assert gpu.rack == "R0001" and gpu.batch.equals(frames[0].batch)
    pts = decode_points_frame(frames[1].value, key=b"CDU01", now_ms=NOW)
    assert pts.points == ["flow_kg_s"] and pts.values.tolist() == [40.0]
    # A replay may be old (but not before 2000); live readings may not.
    old = _gpu(ts=NOW - 3 * 86_400_000)
    assert convert_json(old, now_ms=NOW, replay=True)[0].key == "R0001"


def test_parse_ts_forms() -> None:
    assert parse_ts_ms(1000) == 1000
    assert parse_ts_ms("1970-01-01T00:00:01+00:00") == 1000


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(-(2**80), 2**80) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


POINT = {"kind": "thermal", "unit": "CDU01", "point": "flow_kg_s", "value": 40.0, "ts": NOW}


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from([GOOD, POINT]),
    field=st.sampled_from([*GOOD, *POINT, "power_limit_w", "xid", "clock_event_reasons"]),
    value=JSON_VALUES,
)
def test_any_value_in_any_field_is_converted_or_refused_with_a_code(
    base: dict[str, object], field: str, value: object
) -> None:
    doc = json.dumps([base | {"gpu": 0}, base | {field: value}]).encode()
    try:
        frames = convert_json(doc, now_ms=NOW)
    except DecodeError as exc:
        assert exc.code in DLQ_REASONS, exc.reason
        return
    for f in frames:  # what is accepted is what the Arrow decoder accepts
        decoder = decode_gpu_frame if f.topic == TOPIC_GPU else decode_points_frame
        decoder(f.value, key=f.key.encode(), now_ms=NOW)


@settings(max_examples=200, deadline=None)
@given(doc=JSON_VALUES)
def test_any_json_document_is_converted_or_refused_with_a_code(doc: object) -> None:
    try:
        convert_json(json.dumps(doc).encode(), now_ms=NOW)
    except DecodeError as exc:
        assert exc.code in DLQ_REASONS, exc.reason
