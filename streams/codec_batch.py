"""Decode and validate many telemetry.gpu messages at once.

A worker takes GPU frames in batches of up to a few thousand messages (a rack's 72 GPUs in
one, or a host's 4). Checking each frame on its own costs ~20 numpy and Arrow calls a frame
(``decode_gpu_frame``, ~0.15 ms);
here the frames of a batch are read, concatenated and checked as one set of columns, and
each frame gets views of its rows. When any check fails, every frame of the batch goes
through ``decode_gpu_frame`` one by one, so a refused frame gets exactly the reason (and the
dead-letter record) it would get alone and its neighbours are still accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from streams.codec import (
    _GPU_RANGES,
    DEFAULT_LIMITS,
    GpuFrame,
    Limits,
    _read_single_batch,
    decode_gpu_frame,
    gpu_ints_ok,
    v2_defaults,
)
from streams.schema import GPU_SCHEMA, GPU_SCHEMA_V1
from twin.errors import DecodeError

_COLUMNS = [name for name in GPU_SCHEMA.names if name != "rack"]
_V1_COLUMNS = [name for name in GPU_SCHEMA_V1.names if name != "rack"]


@dataclass(frozen=True)
class GpuMessage:
    """One telemetry.gpu message as received: value, key, and whether it is a replay."""

    value: bytes
    key: bytes | None
    replay: bool = False


def decode_gpu_frames(
    messages: Sequence[GpuMessage], *, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> list[GpuFrame | DecodeError]:
    """Decode and validate messages; per message, the frame or the reason it is refused.

    Same rules and reasons as :func:`streams.codec.decode_gpu_frame` with ``now_ms``
    [ms since epoch] bounding the timestamps.
    """
    out: list[GpuFrame | DecodeError | None] = [None] * len(messages)
    # well-formed batches by contract version: v2 and v1 (no v2 columns) are checked as two
    # sets, the v1 set given the v2 defaults once for all its rows
    groups: dict[bool, tuple[list[pa.RecordBatch], list[int]]] = {True: ([], []), False: ([], [])}
    for i, m in enumerate(messages):
        try:
            b = _read_single_batch(m.value, limits)
        except DecodeError as exc:
            out[i] = exc
            continue
        v2 = b.schema.equals(GPU_SCHEMA, check_metadata=False)
        if (
            not (v2 or b.schema.equals(GPU_SCHEMA_V1, check_metadata=False))
            or not 0 < b.num_rows <= limits.max_gpus_per_frame
        ):
            out[i] = _one(m, now_ms, limits)
            continue
        groups[v2][0].append(b)
        groups[v2][1].append(i)
    for v2, (batches, which) in groups.items():
        if not batches:
            continue
        frames = _together(batches, v2, [messages[i] for i in which], now_ms, limits)
        if frames is None:  # something in the batch is wrong: find what, frame by frame
            frames = [_one(messages[i], now_ms, limits) for i in which]
        for i, f in zip(which, frames, strict=True):
            out[i] = f
    return [r if r is not None else DecodeError("not decoded", "internal_error") for r in out]


def _one(m: GpuMessage, now_ms: int, limits: Limits) -> GpuFrame | DecodeError:
    try:
        return decode_gpu_frame(m.value, key=m.key, now_ms=now_ms, limits=limits, replay=m.replay)
    except DecodeError as exc:
        return exc


def _together(
    batches: list[pa.RecordBatch],
    v2: bool,
    messages: list[GpuMessage],
    now_ms: int,
    limits: Limits,
) -> list[GpuFrame | DecodeError] | None:
    """Frames of well-formed batches of one contract version (``v2`` False: v1, given the
    v2 defaults) when every check passes on the whole; else None."""
    table = pa.Table.from_batches(batches)
    if any(c.null_count for c in table.columns):
        return None
    counts = np.fromiter((b.num_rows for b in batches), dtype=np.int64, count=len(batches))
    ends = np.cumsum(counts)
    starts = ends - counts
    # One rack per frame and the rack its key names: the dictionary code of every row must
    # be its frame's first row's code.
    rack_codes = table.column("rack").combine_chunks().dictionary_encode()
    codes = rack_codes.indices.to_numpy()
    if not np.array_equal(codes, np.repeat(codes[starts], counts)):
        return None
    names = rack_codes.dictionary.to_pylist()
    racks = [str(names[c]) for c in codes[starts].tolist()]
    for m, rack in zip(messages, racks, strict=True):
        if m.key is not None and m.key != rack.encode():
            return None
    cols = {n: table.column(n).to_numpy() for n in (_COLUMNS if v2 else _V1_COLUMNS)}
    if not v2:
        cols |= v2_defaults(cols["temp_gpu_c"])
    for name, limit in _GPU_RANGES:
        lo, hi = getattr(limits, limit)
        col = cols[name]
        if not ((col >= lo) & (col <= hi)).all():  # NaN fails too
            return None
    if not gpu_ints_ok(cols, limits):
        return None
    # GPU indices strictly increasing within every frame: a rack's frame (0..71) or a host's
    # (its --gpu-offset onwards, 18 of 4 in an NVL144 rack), so none twice; anything else
    # (unordered, duplicate), one by one.
    gpu = cols["gpu"]
    if not np.array_equal(gpu, np.arange(int(ends[-1])) - np.repeat(starts, counts)):
        rising = np.diff(gpu.astype(np.int32)) > 0
        rising[ends[:-1] - 1] = True  # from one frame's last GPU to the next frame's first
        if not rising.all() or int(gpu.max()) >= limits.max_gpus_per_frame:
            return None
    ts_ms = cols.pop("ts").view(np.int64)
    if int(ts_ms.max()) - now_ms > limits.max_future_skew_s * 1000:
        return None
    if int(ts_ms.min()) < limits.min_ts_ms:
        return None
    live = ~np.repeat(np.fromiter((m.replay for m in messages), dtype=bool), counts)
    if live.any() and now_ms - int(ts_ms[live].min()) > limits.max_age_s * 1000:
        return None
    frames: list[GpuFrame | DecodeError] = []
    for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        frames.append(
            GpuFrame(
                rack=racks[k],
                ts_ms=ts_ms[s:e],
                columns={n: c[s:e] for n, c in cols.items()},
                batch=batches[k],
                raw=messages[k].value,
            )
        )
    return frames
