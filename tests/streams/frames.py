"""Known frames for spine tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streams.codec import gpu_batch
from streams.schema import GPU_SCHEMA


def gpu_columns(n: int = 72, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible, distinct per-GPU readings (NVML resolution)."""
    rng = np.random.default_rng(seed)
    return {
        "power_w": np.round(rng.uniform(200, 1800, n), 3).astype(np.float32),
        "energy_mj": rng.integers(0, 10**12, n).astype(np.uint64),
        "temp_gpu_c": rng.integers(40, 85, n).astype(np.float32),
        "temp_mem_c": rng.integers(45, 90, n).astype(np.float32),
        "sm_clock_mhz": rng.integers(345, 1980, n).astype(np.uint16),
        "util_pct": rng.integers(0, 101, n).astype(np.float32),
        "clock_event_reasons": rng.choice([0, 1, 4, 0x20], n).astype(np.uint64),
        "xid": rng.choice([0, 0, 0, 79], n).astype(np.uint32),
        "power_limit_w": np.full(n, 1800.0, dtype=np.float32),
    }


def known_gpu_batch(rack: str, ts_ms: int, n: int = 72, seed: int = 0) -> pa.RecordBatch:
    """A telemetry.gpu batch whose values are fully determined by (n, seed)."""
    return gpu_batch(ts_ms, rack, gpu_columns(n, seed))


def with_column(batch: pa.RecordBatch, name: str, values: np.ndarray) -> pa.RecordBatch:
    """Replace one column, keeping the contract's type."""
    i = GPU_SCHEMA.get_field_index(name)
    arr = pa.array(values).cast(GPU_SCHEMA.field(name).type)
    return batch.set_column(i, GPU_SCHEMA.field(name), arr)
