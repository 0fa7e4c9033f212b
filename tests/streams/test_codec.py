from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import (
    Limits,
    decode_gpu_frame,
    decode_points_frame,
    encode_frame,
    gpu_batch,
    points_batch,
)
from streams.schema import GPU_SCHEMA
from tests.streams.frames import gpu_columns, known_gpu_batch, with_column
from twin.errors import DecodeError

NOW = 1_795_000_000_000


def test_gpu_round_trip_exact() -> None:
    batch = known_gpu_batch("R0001", NOW)
    frame = decode_gpu_frame(encode_frame(batch), key=b"R0001", now_ms=NOW)
    assert frame.rack == "R0001"
    assert frame.batch.equals(batch)
    np.testing.assert_array_equal(frame.ts_ms, np.full(72, NOW))
    for name, values in gpu_columns().items():
        np.testing.assert_array_equal(frame.columns[name], values)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 144),
    seed=st.integers(0, 2**31),
    ts=st.integers(NOW - 80_000_000, NOW + 200_000),
    rack=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20),
)
def test_gpu_codec_round_trip_property(n: int, seed: int, ts: int, rack: str) -> None:
    batch = gpu_batch(ts, rack, gpu_columns(n, seed))
    frame = decode_gpu_frame(encode_frame(batch), key=rack.encode(), now_ms=NOW)
    assert frame.batch.equals(batch)


@settings(max_examples=40, deadline=None)
@given(
    points=st.dictionaries(
        st.sampled_from(["supply_temp_c", "return_temp_c", "flow_kg_s", "pump_power_w", "x"]),
        st.floats(0, 100, allow_nan=False),
        min_size=1,
    )
)
def test_points_round_trip_property(points: dict[str, float]) -> None:
    batch = points_batch(NOW, "CDU01", points)
    frame = decode_points_frame(encode_frame(batch), key=b"CDU01", now_ms=NOW)
    assert dict(zip(frame.points, frame.values.tolist(), strict=True)) == points


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty payload"),
        (b"\x00garbage\xff" * 10, "not an Arrow IPC stream"),
        (b"x" * (2 << 20), "oversized payload"),
    ],
)
def test_garbage_is_refused_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        decode_gpu_frame(payload, key=None, now_ms=NOW)


def test_wrong_schema_names_the_fields() -> None:
    batch = pa.RecordBatch.from_pydict({"ts": [1], "power": [1.0]})
    with pytest.raises(DecodeError, match=r"wrong schema.*missing.*power_w.*unexpected.*power"):
        decode_gpu_frame(encode_frame(batch), key=None, now_ms=NOW)


def test_wrong_type_is_named() -> None:
    batch = known_gpu_batch("R1", NOW)
    i = GPU_SCHEMA.get_field_index("power_w")
    bad = batch.set_column(i, pa.field("power_w", pa.float64()), batch.column(i).cast(pa.float64()))
    with pytest.raises(DecodeError, match="power_w: double"):
        decode_gpu_frame(encode_frame(bad), key=None, now_ms=NOW)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("power_w", np.nan, "power_w is not finite"),
        ("temp_gpu_c", np.inf, "temp_gpu_c is not finite"),
        ("power_w", -5.0, "power_w out of range"),
        ("temp_mem_c", 400.0, "temp_mem_c out of range"),
        ("util_pct", 101.0, "util_pct out of range"),
    ],
)
def test_bad_values_are_refused(name: str, value: float, reason: str) -> None:
    batch = known_gpu_batch("R1", NOW, n=8)
    col = batch.column(name).to_numpy().copy()
    col[3] = value
    with pytest.raises(DecodeError, match=reason):
        decode_gpu_frame(encode_frame(with_column(batch, name, col)), key=b"R1", now_ms=NOW)


def test_timestamps_far_from_now_are_refused_unless_replay() -> None:
    old = encode_frame(known_gpu_batch("R1", NOW - 2 * 86_400_000, n=4))
    with pytest.raises(DecodeError, match="s old"):
        decode_gpu_frame(old, key=b"R1", now_ms=NOW)
    assert decode_gpu_frame(old, key=b"R1", now_ms=NOW, replay=True).rack == "R1"
    future = encode_frame(known_gpu_batch("R1", NOW + 3_600_000, n=4))
    with pytest.raises(DecodeError, match="in the future"):
        decode_gpu_frame(future, key=b"R1", now_ms=NOW, replay=True)


def test_key_must_match_rack_and_gpus_unique() -> None:
    data = encode_frame(known_gpu_batch("R1", NOW, n=4))
    with pytest.raises(DecodeError, match="differs from rack"):
        decode_gpu_frame(data, key=b"R2", now_ms=NOW)
    batch = with_column(known_gpu_batch("R1", NOW, n=4), "gpu", np.array([0, 1, 1, 2]))
    with pytest.raises(DecodeError, match="duplicate gpu"):
        decode_gpu_frame(encode_frame(batch), key=b"R1", now_ms=NOW)


def test_too_many_gpus_refused() -> None:
    data = encode_frame(known_gpu_batch("R1", NOW, n=20))
    with pytest.raises(DecodeError, match="GPUs in one frame"):
        decode_gpu_frame(data, key=b"R1", now_ms=NOW, limits=Limits(max_gpus_per_frame=16))


def test_points_out_of_range_and_nan() -> None:
    with pytest.raises(DecodeError, match="CDU01/flow_kg_s out of range"):
        decode_points_frame(
            encode_frame(points_batch(NOW, "CDU01", {"flow_kg_s": -1.0})), key=b"CDU01", now_ms=NOW
        )
    with pytest.raises(DecodeError, match="not finite"):
        decode_points_frame(
            encode_frame(points_batch(NOW, "CDU01", {"supply_temp_c": float("nan")})),
            key=b"CDU01",
            now_ms=NOW,
        )


def test_two_batches_in_one_message_refused() -> None:
    batch = known_gpu_batch("R1", NOW, n=2)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
        w.write_batch(batch)
    with pytest.raises(DecodeError, match="more than one record batch"):
        decode_gpu_frame(sink.getvalue().to_pybytes(), key=b"R1", now_ms=NOW)
