"""telemetry.gpu/v2: the new columns, their bounds, and v1 frames still accepted everywhere."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from storage.decode import Incoming, decode_many, decode_message
from storage.layout import default_tables
from streams.codec import decode_gpu_frame, encode_frame
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.ingest_json import convert_json
from streams.schema import DEFAULT_SLOWDOWN_C, GPU_SCHEMA, GPU_SCHEMA_V1, GPU_V2_COLUMNS
from tests.streams.frames import known_gpu_batch, with_column
from twin.errors import DecodeError

NOW = 1_795_000_000_000


def as_v1(batch: pa.RecordBatch) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [batch.column(f.name) for f in GPU_SCHEMA_V1], schema=GPU_SCHEMA_V1
    )


def test_contract_is_v2_with_the_new_columns_last() -> None:
    assert GPU_SCHEMA.metadata[b"contract"] == b"telemetry.gpu/v2"
    assert GPU_SCHEMA.names[: len(GPU_SCHEMA_V1)] == GPU_SCHEMA_V1.names
    assert GPU_SCHEMA.names[len(GPU_SCHEMA_V1) :] == list(GPU_V2_COLUMNS)


def test_v2_frame_round_trips_the_new_columns() -> None:
    b = known_gpu_batch("R1", NOW, n=4)
    b = with_column(b, "ecc_corrected", np.array([0, 5, 0, 2**40], dtype=np.uint64))
    b = with_column(b, "remapped_rows", np.array([0, 1, 0, 0], dtype=np.uint32))
    b = with_column(b, "row_remap_flags", np.array([0, 1, 0, 2], dtype=np.uint8))
    b = with_column(b, "thermal_margin_k", np.array([30, 20, -2, 10], dtype=np.float32))
    f = decode_gpu_frame(encode_frame(b), key=b"R1", now_ms=NOW)
    assert f.columns["ecc_corrected"].tolist() == [0, 5, 0, 2**40]
    assert f.columns["remapped_rows"].tolist() == [0, 1, 0, 0]
    assert f.columns["row_remap_flags"].tolist() == [0, 1, 0, 2]
    assert f.columns["thermal_margin_k"].tolist() == [30, 20, -2, 10]


@pytest.mark.parametrize(
    ("name", "values", "code"),
    [
        ("thermal_margin_k", np.array([1, np.nan, 1, 1], np.float32), "not_finite"),
        ("thermal_margin_k", np.array([1, 1, 500, 1], np.float32), "out_of_range"),
        ("remapped_rows", np.array([0, 70_000, 0, 0], np.uint32), "out_of_range"),
        ("row_remap_flags", np.array([0, 0, 4, 0], np.uint8), "out_of_range"),
        ("ecc_uncorrected", np.array([0, 2**64 - 1, 0, 0], np.uint64), "out_of_range"),
        ("nvlink_errors", np.array([2**63, 0, 0, 0], np.uint64), "out_of_range"),
    ],
)
def test_bounds_of_the_new_columns(name: str, values: np.ndarray, code: str) -> None:
    bad = with_column(known_gpu_batch("R1", NOW, n=4), name, values)
    with pytest.raises(DecodeError) as info:
        decode_gpu_frame(encode_frame(bad), key=b"R1", now_ms=NOW)
    assert info.value.code == code
    # the batch decoder refuses it with the same code and keeps its neighbours
    good = encode_frame(known_gpu_batch("R2", NOW, n=4))
    out = decode_gpu_frames(
        [GpuMessage(good, b"R2"), GpuMessage(encode_frame(bad), b"R1")], now_ms=NOW
    )
    assert not isinstance(out[0], DecodeError)
    assert isinstance(out[1], DecodeError) and out[1].code == code


def test_a_null_in_a_new_column_is_refused() -> None:
    b = known_gpu_batch("R1", NOW, n=4)
    i = GPU_SCHEMA.get_field_index("nvlink_errors")
    b = b.set_column(i, GPU_SCHEMA.field(i), pa.array([0, None, 0, 0], pa.uint64()))
    with pytest.raises(DecodeError) as info:
        decode_gpu_frame(encode_frame(b), key=b"R1", now_ms=NOW)
    assert info.value.code == "null_value"


def test_v1_frame_is_accepted_with_defaults_by_both_decoders() -> None:
    v2 = known_gpu_batch("R1", NOW, n=8)
    v1 = as_v1(v2)
    temp = v1.column("temp_gpu_c").to_numpy()
    one = decode_gpu_frame(encode_frame(v1), key=b"R1", now_ms=NOW)
    many = decode_gpu_frames(
        [GpuMessage(encode_frame(v1), b"R1"), GpuMessage(encode_frame(v2), b"R2")], now_ms=NOW
    )
    assert not isinstance(many[0], DecodeError)
    for f in (one, many[0]):
        assert set(f.columns) == set(GPU_SCHEMA.names) - {"ts", "rack"}
        np.testing.assert_allclose(f.columns["thermal_margin_k"], DEFAULT_SLOWDOWN_C - temp)
        for n in ("ecc_corrected", "ecc_uncorrected", "remapped_rows", "nvlink_errors"):
            assert (f.columns[n] == 0).all()
        # the batch stays as received: the store keeps NULL (not measured) for v1 rows
        assert f.batch.schema.equals(GPU_SCHEMA_V1, check_metadata=False)
        for n in GPU_SCHEMA_V1.names:
            if n not in ("ts", "rack"):
                np.testing.assert_array_equal(f.columns[n], one.columns[n])


def test_v1_frame_with_a_bad_value_keeps_its_reason() -> None:
    v1 = as_v1(with_column(known_gpu_batch("R1", NOW, n=4), "temp_gpu_c", np.full(4, 300.0)))
    out = decode_gpu_frames([GpuMessage(encode_frame(v1), b"R1")], now_ms=NOW)
    assert isinstance(out[0], DecodeError) and out[0].code == "out_of_range"


def test_sink_stores_v1_rows_with_null_new_columns() -> None:
    gpu = default_tables()["gpu"]
    v1 = encode_frame(as_v1(known_gpu_batch("R1", NOW, n=4)))
    v2 = encode_frame(known_gpu_batch("R2", NOW, n=4))
    for t in (
        decode_message(gpu, b"R1", v1, NOW, now_ms=NOW),
        decode_many(gpu, [Incoming(b"R1", v1, NOW), Incoming(b"R2", v2, NOW)], NOW)[0],
    ):
        assert isinstance(t, pa.Table)
        assert t.schema.equals(GPU_SCHEMA, check_metadata=False)
        for n in GPU_V2_COLUMNS:
            assert t.column(n).null_count == 4
    t2 = decode_many(gpu, [Incoming(b"R2", v2, NOW)], NOW)[0]
    assert isinstance(t2, pa.Table) and t2.column("ecc_corrected").null_count == 0


def test_json_reading_with_and_without_the_new_fields() -> None:
    base = (
        '{"kind": "gpu", "rack": "R1", "gpu": %d, "ts": %d, "power_w": 900, '
        '"energy_mj": 1, "temp_gpu_c": 60, "temp_mem_c": 70, "sm_clock_mhz": 1800, '
        '"util_pct": 90%s}'
    )
    one = base % (0, NOW, "")
    two = base % (1, NOW, ', "ecc_corrected": 7, "remapped_rows": 2, "thermal_margin_k": 25')
    doc = f"[{one}, {two}]"
    [frame] = convert_json(doc.encode(), now_ms=NOW)
    cols = frame.batch.to_pydict()
    assert cols["ecc_corrected"] == [0, 7]
    assert cols["remapped_rows"] == [0, 2]
    assert cols["thermal_margin_k"] == [DEFAULT_SLOWDOWN_C - 60, 25]
    with pytest.raises(DecodeError) as info:
        convert_json((base % (0, NOW, ', "remapped_rows": -1')).encode(), now_ms=NOW)
    assert info.value.code == "out_of_range"


def test_worker_snapshot_from_before_v2_restores() -> None:
    from streams.runtime import TwinRuntime
    from streams.worker_snapshot import restore_runtime
    from twin.snapshot import TwinSnapshot

    v1 = as_v1(known_gpu_batch("R1", NOW, n=4))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, GPU_SCHEMA_V1) as writer:
        writer.write_batch(v1)
    snap = TwinSnapshot()
    snap.extras["worker.racks_arrow"] = np.frombuffer(sink.getvalue().to_pybytes(), np.uint8)
    rt = TwinRuntime(partitions=8)
    assert restore_runtime(rt, snap) == 1
    temp = v1.column("temp_gpu_c").to_numpy()
    np.testing.assert_allclose(rt.racks["R1"].values["thermal_margin_k"], DEFAULT_SLOWDOWN_C - temp)
