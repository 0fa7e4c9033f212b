from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

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
from streams.schema import GPU_SCHEMA, POINTS_SCHEMA
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


def refused(code: str, match: str, fn: Callable[[], object]) -> DecodeError:
    """The DecodeError ``fn`` raises, checked for its code and detail."""
    with pytest.raises(DecodeError, match=match) as info:
        fn()
    assert info.value.code == code, info.value.reason
    return info.value


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (b"", "empty", "empty payload"),
        (b"\x00garbage\xff" * 10, "not_arrow", "not an Arrow IPC stream"),
        (b"x" * (2 << 20), "oversized", "oversized payload"),
    ],
)
def test_garbage_is_refused_with_reason(payload: bytes, code: str, reason: str) -> None:
    refused(code, reason, lambda: decode_gpu_frame(payload, key=None, now_ms=NOW))


def test_wrong_schema_names_the_fields() -> None:
    batch = pa.RecordBatch.from_pydict({"ts": [1], "power": [1.0]})
    refused(
        "schema",
        r"wrong schema.*missing.*power_w.*unexpected.*power",
        lambda: decode_gpu_frame(encode_frame(batch), key=None, now_ms=NOW),
    )


def test_wrong_type_is_named() -> None:
    batch = known_gpu_batch("R1", NOW)
    i = GPU_SCHEMA.get_field_index("power_w")
    bad = batch.set_column(i, pa.field("power_w", pa.float64()), batch.column(i).cast(pa.float64()))
    refused(
        "schema",
        "power_w: double",
        lambda: decode_gpu_frame(encode_frame(bad), key=None, now_ms=NOW),
    )


@pytest.mark.parametrize(
    ("name", "value", "code", "reason"),
    [
        ("power_w", np.nan, "not_finite", "power_w is not finite"),
        ("temp_gpu_c", np.inf, "not_finite", "temp_gpu_c is not finite"),
        ("power_w", -5.0, "out_of_range", "power_w out of range"),
        ("temp_mem_c", 400.0, "out_of_range", "temp_mem_c out of range"),
        ("util_pct", 101.0, "out_of_range", "util_pct out of range"),
    ],
)
def test_bad_values_are_refused(name: str, value: float, code: str, reason: str) -> None:
    batch = known_gpu_batch("R1", NOW, n=8)
    col = batch.column(name).to_numpy().copy()
    col[3] = value
    data = encode_frame(with_column(batch, name, col))
    refused(code, reason, lambda: decode_gpu_frame(data, key=b"R1", now_ms=NOW))


def test_timestamps_far_from_now_are_refused_unless_replay() -> None:
    old = encode_frame(known_gpu_batch("R1", NOW - 2 * 86_400_000, n=4))
    refused("ts_too_old", "s old", lambda: decode_gpu_frame(old, key=b"R1", now_ms=NOW))
    assert decode_gpu_frame(old, key=b"R1", now_ms=NOW, replay=True).rack == "R1"
    future = encode_frame(known_gpu_batch("R1", NOW + 3_600_000, n=4))
    refused(
        "ts_future",
        "in the future",
        lambda: decode_gpu_frame(future, key=b"R1", now_ms=NOW, replay=True),
    )
    # Even a replay is not older than 2000-01-01 (the store partitions by date).
    ancient = encode_frame(known_gpu_batch("R1", -1_000_000_000_000, n=4))
    refused(
        "ts_too_old",
        "before",
        lambda: decode_gpu_frame(ancient, key=b"R1", now_ms=NOW, replay=True),
    )


def test_key_must_match_rack_and_gpus_unique() -> None:
    data = encode_frame(known_gpu_batch("R1", NOW, n=4))
    refused(
        "key_mismatch", "differs from rack", lambda: decode_gpu_frame(data, key=b"R2", now_ms=NOW)
    )
    batch = with_column(known_gpu_batch("R1", NOW, n=4), "gpu", np.array([0, 1, 1, 2]))
    dup = encode_frame(batch)
    refused("duplicate", "duplicate gpu", lambda: decode_gpu_frame(dup, key=b"R1", now_ms=NOW))


def test_mixed_racks_and_nulls_are_refused() -> None:
    batch = known_gpu_batch("R1", NOW, n=4)

    def replaced(name: str, arr: pa.Array) -> bytes:
        i = GPU_SCHEMA.get_field_index(name)
        cols = [arr if k == i else batch.column(k) for k in range(batch.num_columns)]
        return encode_frame(pa.RecordBatch.from_arrays(cols, schema=GPU_SCHEMA))

    mixed = replaced("rack", pa.array(["R1", "R1", "R2", "R1"]))
    refused("mixed_key", "mixes racks", lambda: decode_gpu_frame(mixed, key=None, now_ms=NOW))
    nulls = replaced("temp_gpu_c", pa.array([50.0, None, 50.0, 50.0], type=pa.float32()))
    refused("null_value", "null values", lambda: decode_gpu_frame(nulls, key=None, now_ms=NOW))


def test_too_many_gpus_refused() -> None:
    data = encode_frame(known_gpu_batch("R1", NOW, n=20))
    refused(
        "too_many_rows",
        "in one frame",
        lambda: decode_gpu_frame(data, key=b"R1", now_ms=NOW, limits=Limits(max_gpus_per_frame=16)),
    )


def test_points_out_of_range_and_nan() -> None:
    def points(values: dict[str, float]) -> Callable[[], object]:
        data = encode_frame(points_batch(NOW, "CDU01", values))
        return lambda: decode_points_frame(data, key=b"CDU01", now_ms=NOW)

    refused("out_of_range", "CDU01/flow_kg_s out of range", points({"flow_kg_s": -1.0}))
    refused("not_finite", "not finite", points({"supply_temp_c": float("nan")}))
    refused("out_of_range", "pump_power_w out of range", points({"pump_power_w": 1e300}))
    refused("out_of_range", "on_battery_bool", points({"on_battery_bool": 2.0}))
    refused(
        "duplicate",
        "duplicate point",
        lambda: decode_points_frame(
            encode_frame(
                pa.RecordBatch.from_arrays(
                    [
                        pa.array([NOW, NOW], type=pa.int64()).cast(POINTS_SCHEMA.field("ts").type),
                        pa.array(["CDU01", "CDU01"]),
                        pa.array(["flow_kg_s", "flow_kg_s"]),
                        pa.array([1.0, 2.0]),
                    ],
                    schema=POINTS_SCHEMA,
                )
            ),
            key=b"CDU01",
            now_ms=NOW,
        ),
    )
    refused("empty", "no rows", points({}))


def test_two_batches_in_one_message_refused() -> None:
    batch = known_gpu_batch("R1", NOW, n=2)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
        w.write_batch(batch)
    data = sink.getvalue().to_pybytes()
    refused(
        "not_arrow",
        "more than one record batch",
        lambda: decode_gpu_frame(data, key=b"R1", now_ms=NOW),
    )


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_batch_is_refused_before_it_is_inflated(codec: str) -> None:
    # 200 MB of zeros compress to ~7 kB and reading the batch would allocate all of it;
    # 16 MB show the same.
    bomb = pa.record_batch([pa.array([b"\0" * (16 << 20)], type=pa.binary())], names=["x"])
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=codec)
    with pa.ipc.new_stream(sink, bomb.schema, options=options) as w:
        w.write_batch(bomb)
    data = sink.getvalue().to_pybytes()
    assert len(data) < 1 << 20
    refused("not_arrow", "compressed", lambda: decode_gpu_frame(data, key=None, now_ms=NOW))


def test_corrupt_string_offsets_are_refused_not_read() -> None:
    # The crash: a string offset pointing past the data buffer. Arrow's full
    # validation refuses it before unique() or to_numpy() can read out of bounds.
    batch = known_gpu_batch("R0001", NOW, n=4)
    rack = batch.column("rack")
    _validity, offsets, values = rack.buffers()
    bad_offsets = np.frombuffer(offsets, dtype=np.int32).copy()
    bad_offsets[2] = 1 << 30
    arr = pa.StringArray.from_buffers(len(rack), pa.py_buffer(bad_offsets.tobytes()), values)
    i = GPU_SCHEMA.get_field_index("rack")
    bad = pa.RecordBatch.from_arrays(
        [arr if k == i else batch.column(k) for k in range(batch.num_columns)], schema=GPU_SCHEMA
    )
    data = encode_frame_unchecked(bad)
    refused(
        "corrupt",
        "corrupt Arrow record batch",
        lambda: decode_gpu_frame(data, key=None, now_ms=NOW),
    )


def encode_frame_unchecked(batch: pa.RecordBatch) -> bytes:
    """IPC bytes of a batch as given, even an invalid one (the writer does not validate)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


def test_bit_flips_of_valid_frames_never_crash() -> None:
    # Each seed: every single-bit flip of a small GPU frame and a points frame, and 1,500
    # random multi-byte mutations of a 72-GPU frame through the single and the batch
    # decoder (seed 7 found a segfault in read_schema). A child process per seed, so a
    # segfault fails this test instead of killing pytest.
    for seed in (1, 7):
        proc = subprocess.run(
            [sys.executable, "-m", "tests.streams.flipcheck", str(seed)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, f"seed {seed}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
        counts = json.loads(proc.stdout)
        assert counts["accepted"] > 0 and counts["corrupt"] > 0 and counts["not_arrow"] > 0
