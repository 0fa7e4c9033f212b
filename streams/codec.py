"""Arrow IPC frame codec and validation of telemetry frames.

One Kafka message carries one Arrow IPC stream holding exactly one RecordBatch. Decoding
checks the schema and the values as whole columns (numpy), so a bad frame costs the same as a
good one and the reason it was refused is precise enough for the dead-letter topic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streams.schema import (
    DEFAULT_SLOWDOWN_C,
    GPU_SCHEMA,
    GPU_SCHEMA_V1,
    GPU_V2_COLUMNS,
    POINTS_SCHEMA,
    ROW_REMAP_FAILURE,
    ROW_REMAP_PENDING,
)
from twin.errors import DecodeError


@dataclass(frozen=True)
class Limits:
    """Plausibility limits of incoming telemetry; values outside go to the dead-letter topic."""

    max_message_bytes: int = 1 << 20  # Kafka's default max.message.bytes
    max_gpus_per_frame: int = 1024
    max_future_skew_s: float = 300.0  # clocks of sources may run a little ahead
    max_age_s: float = 86_400.0  # older frames are refused unless marked as replay
    #: Even replays are refused before 2000-01-01T00:00Z [ms since epoch]: no telemetry of
    #: this twin predates it, and the store partitions by date.
    min_ts_ms: int = 946_684_800_000
    power_w: tuple[float, float] = (0.0, 5_000.0)  # Rubin Ultra is 3.6 kW a package (sources.md S2)
    temp_c: tuple[float, float] = (-40.0, 150.0)  # beyond NVML shutdown (92 C) with margin
    util_pct: tuple[float, float] = (0.0, 100.0)
    #: slowdown minus die temperature [K]: a die at 150 C under a 60 C limit, or at -40 C
    #: under a 120 C one, is still within
    thermal_margin_k: tuple[float, float] = (-100.0, 200.0)
    #: HBM has a few hundred spare rows per stack: more remaps is a garbage reading
    max_remapped_rows: int = 65_535
    #: error counters (ECC, NVLink) [count]: beyond 2^48 is a driver's "not available"
    #: sentinel, not a count
    max_error_count: int = 1 << 48
    point_temp_c: tuple[float, float] = (-60.0, 200.0)  # outdoor -46 C record (docs/sources.md S6)
    point_power_w: tuple[float, float] = (0.0, 1e10)  # 10 GW: beyond any site's plant
    point_flow_kg_s: tuple[float, float] = (0.0, 1e5)
    point_flow_m3_s: tuple[float, float] = (0.0, 100.0)
    point_energy_j: tuple[float, float] = (0.0, 1e20)
    point_speed_rpm: tuple[float, float] = (0.0, 1e5)


DEFAULT_LIMITS = Limits()


def encode_frame(batch: pa.RecordBatch) -> bytes:
    """Encode one record batch as an Arrow IPC stream (the message value)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _flatbuffer_field(meta: bytes, table: int, index: int) -> int:
    """Offset of field ``index`` within a flatbuffer table at ``table``; 0 when absent."""
    vtable = table - struct.unpack_from("<i", meta, table)[0]
    vtable_bytes = struct.unpack_from("<H", meta, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > vtable_bytes:
        return 0
    return int(struct.unpack_from("<H", meta, vtable + slot)[0])


def _batch_header(meta: bytes) -> tuple[int, bool]:
    """(rows, compressed) of a record batch message, read from its flatbuffer metadata.

    Read before the batch itself: a compressed body decompresses to the length its buffers
    declare, so a 7 kB zstd message can claim 200 MB of memory (and a 1 MiB one, tens of GB).
    Frames of the contracts are never compressed and hold at most a few thousand rows.
    Layout: Message {version, header_type, header, ...}; RecordBatch {length, nodes,
    buffers, compression, ...} (Arrow format/Message.fbs).
    """
    message = struct.unpack_from("<I", meta, 0)[0]
    at = _flatbuffer_field(meta, message, 2)
    if not at:
        raise ValueError("record batch message without a header")
    header = message + at + struct.unpack_from("<I", meta, message + at)[0]
    at = _flatbuffer_field(meta, header, 0)
    rows = int(struct.unpack_from("<q", meta, header + at)[0]) if at else 0
    return rows, bool(_flatbuffer_field(meta, header, 3))


#: Schemas of the contracts by the bytes of their IPC schema message: every frame of a
#: source carries the same one, and parsing it is a third of reading a frame. Only schemas
#: equal to a contract's are kept, at most _SCHEMA_CACHE_MAX, so input cannot grow it.
_SCHEMA_CACHE: dict[bytes, pa.Schema] = {}
_SCHEMA_CACHE_MAX: Final = 16


def _read_schema(message: pa.ipc.Message) -> pa.Schema:
    key = bytes(message.metadata)
    schema = _SCHEMA_CACHE.get(key)
    if schema is None:
        schema = pa.ipc.read_schema(message)
        if len(_SCHEMA_CACHE) < _SCHEMA_CACHE_MAX and any(
            schema.equals(c, check_metadata=False)
            for c in (GPU_SCHEMA, GPU_SCHEMA_V1, POINTS_SCHEMA)
        ):
            _SCHEMA_CACHE[key] = schema
    return schema


def _read_single_batch(data: bytes, limits: Limits) -> pa.RecordBatch:
    """The one record batch of an IPC stream, fully validated before any buffer is read.

    A bit flip in a valid frame (a string offset, a buffer length) makes a batch whose
    buffers point outside the message or hold invalid UTF-8; reading those segfaults
    (``column("rack").unique()``) or raises anywhere. ``validate(full=True)`` checks offsets,
    lengths and UTF-8 (~1.5 us a 72-GPU frame, bench/bench_validate.py).
    """
    if len(data) > limits.max_message_bytes:
        raise DecodeError(
            f"oversized payload: {len(data)} bytes > {limits.max_message_bytes}", "oversized"
        )
    if not data:
        raise DecodeError("empty payload", "empty")
    try:
        reader = pa.ipc.MessageReader.open_stream(pa.py_buffer(data))
        head = reader.read_next_message()
        if head.type != "schema":  # read_schema of another message type segfaults
            raise ValueError(f"first message is a {head.type}, not a schema")
        schema = _read_schema(head)
        message = reader.read_next_message()
    except (pa.ArrowException, OSError, ValueError, StopIteration) as exc:
        raise DecodeError(
            f"not an Arrow IPC stream with a record batch: {exc}", "not_arrow"
        ) from None
    if message.type != "record batch":
        raise DecodeError(f"expected a record batch message, got a {message.type}", "not_arrow")
    try:
        rows, compressed = _batch_header(bytes(message.metadata))
    except (struct.error, ValueError) as exc:
        raise DecodeError(f"corrupt record batch header: {exc}", "corrupt") from None
    if compressed:
        raise DecodeError("compressed record batch (frames are sent uncompressed)", "not_arrow")
    if rows > limits.max_gpus_per_frame:
        raise DecodeError(
            f"{rows} rows in one frame > {limits.max_gpus_per_frame}", "too_many_rows"
        )
    try:
        batch = pa.ipc.read_record_batch(message, schema)
        batch.validate(full=True)
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        raise DecodeError(f"corrupt Arrow record batch: {exc}", "corrupt") from None
    try:
        extra = reader.read_next_message()
    except StopIteration:
        return batch
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DecodeError(f"corrupt Arrow IPC stream after first batch: {exc}", "corrupt") from None
    if extra is None:
        return batch
    raise DecodeError("more than one record batch in one message", "not_arrow")


def _check_schema(batch: pa.RecordBatch, expected: pa.Schema, contract: str) -> None:
    if batch.schema.equals(expected, check_metadata=False):
        return
    try:
        got = {f.name: str(f.type) for f in batch.schema}
    except (UnicodeDecodeError, pa.ArrowException) as exc:
        raise DecodeError(
            f"wrong schema for {contract}: unreadable field: {exc}", "schema"
        ) from None
    want = {f.name: str(f.type) for f in expected}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if wrong:
        parts.append("wrong type " + ", ".join(f"{k}: {got[k]} (want {want[k]})" for k in wrong))
    if not parts:
        parts.append("field order or nullability differs")
    raise DecodeError(f"wrong schema for {contract}: " + "; ".join(parts), "schema")


def _check_ts(ts_ms: np.ndarray, now_ms: int, limits: Limits, replay: bool) -> None:
    if ts_ms.size == 0:
        raise DecodeError("frame has no rows", "empty")
    newest = int(ts_ms.max())
    oldest = int(ts_ms.min())
    if newest - now_ms > limits.max_future_skew_s * 1000:
        raise DecodeError(
            f"timestamp {newest} ms is {(newest - now_ms) / 1000:.0f} s in the future "
            f"(limit {limits.max_future_skew_s:.0f} s)",
            "ts_future",
        )
    if oldest < limits.min_ts_ms:
        raise DecodeError(
            f"timestamp {oldest} ms is before {limits.min_ts_ms} ms (2000-01-01)", "ts_too_old"
        )
    if not replay and now_ms - oldest > limits.max_age_s * 1000:
        raise DecodeError(
            f"timestamp {oldest} ms is {(now_ms - oldest) / 1000:.0f} s old "
            f"(limit {limits.max_age_s:.0f} s; mark replays with the twin-replay header)",
            "ts_too_old",
        )


def _check_range(name: str, values: np.ndarray, lo: float, hi: float) -> None:
    bad = (values < lo) | (values > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise DecodeError(
            f"{name} out of range [{lo}, {hi}]: {values[i]} at row {i}", "out_of_range"
        )


_GPU_RANGES: Final = (
    ("power_w", "power_w"),
    ("power_limit_w", "power_w"),
    ("temp_gpu_c", "temp_c"),
    ("temp_mem_c", "temp_c"),
    ("util_pct", "util_pct"),
    ("thermal_margin_k", "thermal_margin_k"),
)
#: Unsigned columns of v2 with an upper bound: column -> Limits attribute or a number.
_GPU_INT_MAX: Final = (
    ("ecc_corrected", "max_error_count"),
    ("ecc_uncorrected", "max_error_count"),
    ("nvlink_errors", "max_error_count"),
    ("remapped_rows", "max_remapped_rows"),
    ("row_remap_flags", ROW_REMAP_PENDING | ROW_REMAP_FAILURE),
)


def _int_max(name: str | int, limits: Limits) -> int:
    return name if isinstance(name, int) else int(getattr(limits, name))


def check_gpu_ints(cols: dict[str, np.ndarray], limits: Limits) -> None:
    """Refuse (``out_of_range``) v2 counters and flags above their bounds."""
    for name, top in _GPU_INT_MAX:
        hi = _int_max(top, limits)
        col = cols[name]
        if col.size and int(col.max()) > hi:
            i = int(np.argmax(col > hi))
            raise DecodeError(
                f"{name} out of range [0, {hi}]: {col[i]} for gpu {cols['gpu'][i]}",
                "out_of_range",
            )


def gpu_ints_ok(cols: dict[str, np.ndarray], limits: Limits) -> bool:
    """True when every v2 counter and flag is within its bound."""
    return all(
        not cols[name].size or int(cols[name].max()) <= _int_max(top, limits)
        for name, top in _GPU_INT_MAX
    )


def v2_defaults(temp_gpu_c: np.ndarray) -> dict[str, np.ndarray]:
    """The v2 columns of rows that do not carry them (a telemetry.gpu/v1 frame): zero error
    counts, no remap flags, and the thermal margin [K] to :data:`DEFAULT_SLOWDOWN_C` of the
    die temperature ``temp_gpu_c`` [C]."""
    n = len(temp_gpu_c)
    return {
        "ecc_corrected": np.zeros(n, dtype=np.uint64),
        "ecc_uncorrected": np.zeros(n, dtype=np.uint64),
        "remapped_rows": np.zeros(n, dtype=np.uint32),
        "row_remap_flags": np.zeros(n, dtype=np.uint8),
        "nvlink_errors": np.zeros(n, dtype=np.uint64),
        "thermal_margin_k": (DEFAULT_SLOWDOWN_C - np.asarray(temp_gpu_c, dtype=np.float64)).astype(
            np.float32
        ),
    }


def fill_v2_nulls(table: pa.Table) -> pa.Table:
    """Rows of a telemetry.gpu table with NULL v2 columns (stored from v1 frames or before
    v2) given the values a v1 frame is decoded with (:func:`v2_defaults`)."""
    if not any(table.column(n).null_count for n in GPU_V2_COLUMNS):
        return table
    temp = table.column("temp_gpu_c").to_numpy()
    defaults = v2_defaults(temp)
    for n in GPU_V2_COLUMNS:
        col = table.column(n)
        if col.null_count:
            filled = pc.if_else(pc.is_null(col), pa.array(defaults[n]), col)
            i = table.schema.get_field_index(n)
            table = table.set_column(i, table.schema.field(n), filled.cast(col.type))
    return table


_ARANGE: Final = np.arange(1 << 16, dtype=np.uint16)


@dataclass(frozen=True)
class GpuFrame:
    """A decoded, validated telemetry.gpu frame as numpy columns (one row per GPU)."""

    rack: str
    ts_ms: np.ndarray  # int64 [ms since epoch]
    columns: dict[str, np.ndarray]  # every GPU_SCHEMA field except ts and rack
    batch: pa.RecordBatch  # as received: a v1 frame's batch lacks the v2 columns
    raw: bytes | None = None  # the message it was decoded from

    @property
    def gpu(self) -> np.ndarray:
        """GPU indices within the rack."""
        return self.columns["gpu"]


def decode_gpu_frame(
    data: bytes,
    *,
    key: bytes | None,
    now_ms: int | None,
    limits: Limits = DEFAULT_LIMITS,
    replay: bool = False,
) -> GpuFrame:
    """Decode and validate one telemetry.gpu message; raise DecodeError with the reason.

    ``now_ms`` [ms since epoch] bounds the timestamps; None skips that check (checkpoints).
    """
    batch = _read_single_batch(data, limits)
    v1 = batch.schema.equals(GPU_SCHEMA_V1, check_metadata=False)
    if not v1:
        _check_schema(batch, GPU_SCHEMA, "telemetry.gpu")
    n = batch.num_rows
    if n == 0:
        raise DecodeError("frame has no rows", "empty")
    if n > limits.max_gpus_per_frame:
        raise DecodeError(f"{n} GPUs in one frame > {limits.max_gpus_per_frame}", "too_many_rows")
    if batch.column("rack").null_count or any(c.null_count for c in batch.columns):
        raise DecodeError("null values in a non-nullable column", "null_value")
    racks = batch.column("rack").unique()
    if len(racks) != 1:
        raise DecodeError(
            f"frame mixes racks {racks.to_pylist()[:5]}; one rack a message", "mixed_key"
        )
    rack = str(racks[0].as_py())
    if key is not None and key.decode("utf-8", "replace") != rack:
        raise DecodeError(
            f"message key {key!r} differs from rack {rack!r} in the frame", "key_mismatch"
        )
    cols = {
        name: batch.column(i).to_numpy(zero_copy_only=False)
        for i, name in enumerate(batch.schema.names)
        if name != "rack"
    }
    if v1:  # converted here, so every consumer sees v2 columns (batch stays as received)
        cols |= v2_defaults(cols["temp_gpu_c"])
    ts_ms = cols.pop("ts").view(np.int64)
    for name, limit in _GPU_RANGES:
        lo, hi = getattr(limits, limit)
        col = cols[name]
        # One test catches NaN and inf too (comparisons with NaN are false); find out which
        # rule failed only when one did.
        if not ((col >= lo) & (col <= hi)).all():
            finite = np.isfinite(col)
            if not finite.all():
                i = int(np.argmin(finite))
                raise DecodeError(
                    f"{name} is not finite ({col[i]}) for gpu {cols['gpu'][i]}", "not_finite"
                )
            _check_range(name, col, lo, hi)
    check_gpu_ints(cols, limits)
    gpu = cols["gpu"]
    if not np.array_equal(gpu, _ARANGE[:n]):  # the usual frame: GPUs 0..n-1 in order
        if np.unique(gpu).size != n:
            raise DecodeError("duplicate gpu index in one frame", "duplicate")
        if int(gpu.max()) >= limits.max_gpus_per_frame:
            raise DecodeError(
                f"gpu index {int(gpu.max())} >= {limits.max_gpus_per_frame}", "out_of_range"
            )
    if now_ms is not None:
        _check_ts(ts_ms, now_ms, limits, replay)
    return GpuFrame(rack=rack, ts_ms=ts_ms, columns=cols, batch=batch, raw=data)


@dataclass(frozen=True)
class PointsFrame:
    """A decoded, validated telemetry.thermal / telemetry.power frame (one plant unit)."""

    unit: str
    ts_ms: np.ndarray
    points: list[str]
    values: np.ndarray  # float64, aligned with points
    batch: pa.RecordBatch


def _point_limits(point: str, limits: Limits) -> tuple[float, float] | None:
    if point.endswith("_c"):
        return limits.point_temp_c
    if point.endswith("_w"):
        return limits.point_power_w
    if point.endswith("_kg_s"):
        return limits.point_flow_kg_s
    if point.endswith("_m3_s"):
        return limits.point_flow_m3_s
    if point.endswith("_j"):
        return limits.point_energy_j
    if point.endswith("_rpm"):
        return limits.point_speed_rpm
    if point.endswith("_bool"):
        return (0.0, 1.0)
    if point.endswith("_frac"):
        return (0.0, 1.5)
    if point.endswith("_pct"):
        return (0.0, 150.0)
    return None


def decode_points_frame(
    data: bytes,
    *,
    key: bytes | None,
    now_ms: int | None,
    limits: Limits = DEFAULT_LIMITS,
    replay: bool = False,
    contract: str = "telemetry.points",
) -> PointsFrame:
    """Decode and validate one plant-unit frame; raise DecodeError with the reason."""
    batch = _read_single_batch(data, limits)
    _check_schema(batch, POINTS_SCHEMA, contract)
    if batch.num_rows == 0:
        raise DecodeError("frame has no rows", "empty")
    if any(c.null_count for c in batch.columns):
        raise DecodeError("null values in a non-nullable column", "null_value")
    units = batch.column("unit").unique()
    if len(units) != 1:
        raise DecodeError(
            f"frame mixes units {units.to_pylist()[:5]}; one unit a message", "mixed_key"
        )
    unit = str(units[0].as_py())
    if key is not None and key.decode("utf-8", "replace") != unit:
        raise DecodeError(
            f"message key {key!r} differs from unit {unit!r} in the frame", "key_mismatch"
        )
    points = batch.column("point").to_pylist()
    if any(not p for p in points):
        raise DecodeError("empty point name", "bad_field")
    if len(set(points)) != len(points):
        raise DecodeError("duplicate point name in one frame", "duplicate")
    values = batch.column("value").to_numpy()
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DecodeError(f"{unit}/{points[i]} is not finite ({values[i]})", "not_finite")
    for i, point in enumerate(points):
        lim = _point_limits(point, limits)
        if lim is not None and not lim[0] <= values[i] <= lim[1]:
            raise DecodeError(
                f"{unit}/{point} out of range [{lim[0]}, {lim[1]}]: {values[i]}", "out_of_range"
            )
    ts_ms = batch.column("ts").to_numpy().view(np.int64)
    if now_ms is not None:
        _check_ts(ts_ms, now_ms, limits, replay)
    return PointsFrame(unit=unit, ts_ms=ts_ms, points=points, values=values, batch=batch)


def gpu_batch(ts_ms: int, rack: str, columns: dict[str, np.ndarray]) -> pa.RecordBatch:
    """Build a telemetry.gpu record batch for one rack from per-GPU numpy columns.

    ``columns`` holds every GPU_SCHEMA field except ts and rack; ``gpu`` defaults to 0..n-1,
    and the v2 columns missing from ``columns`` take :func:`v2_defaults`.
    """
    n = len(columns["power_w"])
    if any(c not in columns for c in GPU_V2_COLUMNS):
        columns = v2_defaults(columns["temp_gpu_c"]) | columns
    arrays = []
    for f in GPU_SCHEMA:
        if f.name == "ts":
            arrays.append(pa.array(np.full(n, ts_ms, dtype=np.int64)).cast(f.type))
        elif f.name == "rack":
            arrays.append(pa.array([rack] * n, type=f.type))
        elif f.name == "gpu" and "gpu" not in columns:
            arrays.append(pa.array(np.arange(n, dtype=np.uint16)))
        else:
            arrays.append(pa.array(np.asarray(columns[f.name]).astype(f.type.to_pandas_dtype())))
    return pa.RecordBatch.from_arrays(arrays, schema=GPU_SCHEMA)


def points_batch(ts_ms: int, unit: str, points: dict[str, float]) -> pa.RecordBatch:
    """Build a telemetry.thermal / telemetry.power record batch for one plant unit."""
    n = len(points)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.full(n, ts_ms, dtype=np.int64)).cast(POINTS_SCHEMA.field("ts").type),
            pa.array([unit] * n, type=pa.string()),
            pa.array(list(points.keys()), type=pa.string()),
            pa.array(np.fromiter(points.values(), dtype=np.float64, count=n)),
        ],
        schema=POINTS_SCHEMA,
    )
