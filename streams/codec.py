"""Arrow IPC frame codec and validation of telemetry frames.

One Kafka message carries one Arrow IPC stream holding exactly one RecordBatch. Decoding
checks the schema and the values as whole columns (numpy), so a bad frame costs the same as a
good one and the reason it was refused is precise enough for the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa

from streams.schema import GPU_SCHEMA, POINTS_SCHEMA
from twin.errors import DecodeError


@dataclass(frozen=True)
class Limits:
    """Plausibility limits of incoming telemetry; values outside go to the dead-letter topic."""

    max_message_bytes: int = 1 << 20  # Kafka's default max.message.bytes
    max_gpus_per_frame: int = 1024
    max_future_skew_s: float = 300.0  # clocks of sources may run a little ahead
    max_age_s: float = 86_400.0  # older frames are refused unless marked as replay
    power_w: tuple[float, float] = (0.0, 5_000.0)  # Rubin Ultra is 3.6 kW a package (FACTS.md 2)
    temp_c: tuple[float, float] = (-40.0, 150.0)  # beyond NVML shutdown (92 C) with margin
    util_pct: tuple[float, float] = (0.0, 100.0)
    point_temp_c: tuple[float, float] = (-60.0, 200.0)  # outdoor -46 C record (FACTS.md 6)


DEFAULT_LIMITS = Limits()


def encode_frame(batch: pa.RecordBatch) -> bytes:
    """Encode one record batch as an Arrow IPC stream (the message value)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _read_single_batch(data: bytes, limits: Limits) -> pa.RecordBatch:
    if len(data) > limits.max_message_bytes:
        raise DecodeError(f"oversized payload: {len(data)} bytes > {limits.max_message_bytes}")
    if not data:
        raise DecodeError("empty payload")
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(data))
        batch = reader.read_next_batch()
    except (pa.ArrowInvalid, OSError, StopIteration) as exc:
        raise DecodeError(f"not an Arrow IPC stream with a record batch: {exc}") from None
    try:
        reader.read_next_batch()
    except StopIteration:
        return batch
    except (pa.ArrowInvalid, OSError) as exc:
        raise DecodeError(f"corrupt Arrow IPC stream after first batch: {exc}") from None
    raise DecodeError("more than one record batch in one message")


def _check_schema(batch: pa.RecordBatch, expected: pa.Schema, contract: str) -> None:
    if batch.schema.equals(expected, check_metadata=False):
        return
    got = {f.name: str(f.type) for f in batch.schema}
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
    raise DecodeError(f"wrong schema for {contract}: " + "; ".join(parts))


def _check_ts(ts_ms: np.ndarray, now_ms: int, limits: Limits, replay: bool) -> None:
    if ts_ms.size == 0:
        raise DecodeError("frame has no rows")
    newest = int(ts_ms.max())
    oldest = int(ts_ms.min())
    if newest - now_ms > limits.max_future_skew_s * 1000:
        raise DecodeError(
            f"timestamp {newest} ms is {(newest - now_ms) / 1000:.0f} s in the future "
            f"(limit {limits.max_future_skew_s:.0f} s)"
        )
    if not replay and now_ms - oldest > limits.max_age_s * 1000:
        raise DecodeError(
            f"timestamp {oldest} ms is {(now_ms - oldest) / 1000:.0f} s old "
            f"(limit {limits.max_age_s:.0f} s; mark replays with the twin-replay header)"
        )


def _check_range(name: str, values: np.ndarray, lo: float, hi: float) -> None:
    bad = (values < lo) | (values > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise DecodeError(f"{name} out of range [{lo}, {hi}]: {values[i]} at row {i}")


_GPU_RANGES: Final = (
    ("power_w", "power_w"),
    ("power_limit_w", "power_w"),
    ("temp_gpu_c", "temp_c"),
    ("temp_mem_c", "temp_c"),
    ("util_pct", "util_pct"),
)
_ARANGE: Final = np.arange(1 << 16, dtype=np.uint16)


@dataclass(frozen=True)
class GpuFrame:
    """A decoded, validated telemetry.gpu frame as numpy columns (one row per GPU)."""

    rack: str
    ts_ms: np.ndarray  # int64 [ms since epoch]
    columns: dict[str, np.ndarray]  # every GPU_SCHEMA field except ts and rack
    batch: pa.RecordBatch
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
    _check_schema(batch, GPU_SCHEMA, "telemetry.gpu")
    n = batch.num_rows
    if n == 0:
        raise DecodeError("frame has no rows")
    if n > limits.max_gpus_per_frame:
        raise DecodeError(f"{n} GPUs in one frame > {limits.max_gpus_per_frame}")
    if batch.column("rack").null_count or any(c.null_count for c in batch.columns):
        raise DecodeError("null values in a non-nullable column")
    racks = batch.column("rack").unique()
    if len(racks) != 1:
        raise DecodeError(f"frame mixes racks {racks.to_pylist()[:5]}; one rack a message")
    rack = str(racks[0].as_py())
    if key is not None and key.decode("utf-8", "replace") != rack:
        raise DecodeError(f"message key {key!r} differs from rack {rack!r} in the frame")
    cols = {
        name: batch.column(i).to_numpy(zero_copy_only=False)
        for i, name in enumerate(GPU_SCHEMA.names)
        if name != "rack"
    }
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
                raise DecodeError(f"{name} is not finite ({col[i]}) for gpu {cols['gpu'][i]}")
            _check_range(name, col, lo, hi)
    gpu = cols["gpu"]
    if not np.array_equal(gpu, _ARANGE[:n]):  # the usual frame: GPUs 0..n-1 in order
        if np.unique(gpu).size != n:
            raise DecodeError("duplicate gpu index in one frame")
        if int(gpu.max()) >= limits.max_gpus_per_frame:
            raise DecodeError(f"gpu index {int(gpu.max())} >= {limits.max_gpus_per_frame}")
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
    if point.endswith(("_w", "_kg_s", "_m3_s", "_j", "_rpm")):
        return (0.0, float("inf"))
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
    if any(c.null_count for c in batch.columns):
        raise DecodeError("null values in a non-nullable column")
    units = batch.column("unit").unique()
    if len(units) != 1:
        raise DecodeError(f"frame mixes units {units.to_pylist()[:5]}; one unit a message")
    unit = str(units[0].as_py())
    if key is not None and key.decode("utf-8", "replace") != unit:
        raise DecodeError(f"message key {key!r} differs from unit {unit!r} in the frame")
    points = batch.column("point").to_pylist()
    if any(not p for p in points):
        raise DecodeError("empty point name")
    if len(set(points)) != len(points):
        raise DecodeError("duplicate point name in one frame")
    values = batch.column("value").to_numpy()
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        raise DecodeError(f"{unit}/{points[i]} is not finite ({values[i]})")
    for i, point in enumerate(points):
        lim = _point_limits(point, limits)
        if lim is not None and not lim[0] <= values[i] <= lim[1]:
            raise DecodeError(f"{unit}/{point} out of range [{lim[0]}, {lim[1]}]: {values[i]}")
    ts_ms = batch.column("ts").to_numpy().view(np.int64)
    if now_ms is not None:
        _check_ts(ts_ms, now_ms, limits, replay)
    return PointsFrame(unit=unit, ts_ms=ts_ms, points=points, values=values, batch=batch)


def gpu_batch(ts_ms: int, rack: str, columns: dict[str, np.ndarray]) -> pa.RecordBatch:
    """Build a telemetry.gpu record batch for one rack from per-GPU numpy columns.

    ``columns`` holds every GPU_SCHEMA field except ts and rack; ``gpu`` defaults to 0..n-1.
    """
    n = len(columns["power_w"])
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
