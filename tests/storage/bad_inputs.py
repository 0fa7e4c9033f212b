"""Telemetry frames the worker refuses, one per class of bad input (shared by storage tests)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from streams.codec import encode_frame, gpu_batch
from streams.schema import GPU_SCHEMA

NOW_MS = int(time.time() * 1000)


def _cols(n: int = 8) -> dict[str, np.ndarray]:
    return {
        "power_w": np.full(n, 1000.0),
        "energy_mj": np.arange(n, dtype=np.uint64) + 10**9,
        "temp_gpu_c": np.full(n, 60.0),
        "temp_mem_c": np.full(n, 65.0),
        "sm_clock_mhz": np.full(n, 1800),
        "util_pct": np.full(n, 90.0),
        "clock_event_reasons": np.zeros(n, np.uint64),
        "xid": np.zeros(n, np.uint32),
        "power_limit_w": np.full(n, 1800.0),
    }


def frame(ts_ms: int = NOW_MS, rack: str = "R0001", **over: object) -> bytes:
    cols = _cols(len(over["gpu"]) if "gpu" in over else 8)  # type: ignore[arg-type]
    cols.update({k: np.asarray(v) for k, v in over.items()})
    return encode_frame(gpu_batch(ts_ms, rack, cols))


def _with_nulls(column: str) -> bytes:
    batch = gpu_batch(NOW_MS, "R0001", _cols(4))
    arrays = list(batch.columns)
    i = GPU_SCHEMA.get_field_index(column)
    arrays[i] = pa.array([None, *arrays[i].to_pylist()[1:]], type=arrays[i].type)
    loose = pa.schema([f.with_nullable(True) for f in GPU_SCHEMA])
    return encode_frame(pa.RecordBatch.from_arrays(arrays, schema=loose))


def year_ms(year: int) -> int:
    return int((np.datetime64(f"{year}-01-01", "ms") - np.datetime64(0, "ms")).astype(np.int64))


def _mixed_racks() -> bytes:
    a = gpu_batch(NOW_MS, "R0001", _cols(4))
    b = gpu_batch(NOW_MS, "R0002", _cols(4))
    return encode_frame(pa.Table.from_batches([a, b]).combine_chunks().to_batches()[0])


BAD_FRAMES = {
    "nan power": lambda: frame(power_w=np.full(8, np.nan)),
    "inf temperature": lambda: frame(temp_gpu_c=np.full(8, np.inf)),
    "-500 W": lambda: frame(power_w=np.full(8, -500.0)),
    "1e30 W": lambda: frame(power_w=np.full(8, 1e30)),
    "1000 C": lambda: frame(temp_gpu_c=np.full(8, 1000.0)),
    "250 % util": lambda: frame(util_pct=np.full(8, 250.0)),
    "duplicated gpu index": lambda: frame(gpu=np.zeros(200, np.uint16)),
    "2,000-GPU frame": lambda: frame(gpu=np.arange(2000, dtype=np.uint16)),
    "mixed racks": _mixed_racks,
    "ts 1950": lambda: frame(ts_ms=year_ms(1950)),
    "ts 2300": lambda: frame(ts_ms=year_ms(2300)),
    "ts 9999": lambda: frame(ts_ms=year_ms(9999)),
    "null ts": lambda: _with_nulls("ts"),
    "null temperature": lambda: _with_nulls("temp_gpu_c"),
    "corrupt arrow": lambda: b"\xff\xff\xff\xff" + b"\x00" * 40,
    "truncated arrow": lambda: frame()[:-30],
}
