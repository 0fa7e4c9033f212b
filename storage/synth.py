"""Seeded synthetic history at NVML resolution, for tests, docs examples and bench/.

Not the twin's physics: a statistical stand-in with the value resolution and noise of real
sensors, so compression and query figures are honest. NVML reports temperatures as integer
C, power as integer mW and energy as a monotone mJ counter; SM clocks move in 15 MHz steps
(docs/sources.md S7).
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from streams.schema import DEFAULT_SLOWDOWN_C, GPU_SCHEMA, GPU_SCHEMA_V1, POINTS_SCHEMA, TS_TYPE


def gpu_table(
    n_racks: int,
    n_gpus: int,
    n_steps: int,
    *,
    start_ms: int = 1_790_000_000_000,
    dt_ms: int = 1000,
    seed: int = 0,
    rack_prefix: str = "R",
    version: int = 2,
) -> pa.Table:
    """GPU rows for ``n_racks`` x ``n_gpus`` GPUs over ``n_steps`` samples, in GPU_SCHEMA
    (``version=1``: GPU_SCHEMA_V1, as stored before the v2 columns).

    Rows come in time order (one rack frame after another), as the sink receives them. A few
    GPUs show corrected ECC errors and NVLink CRC errors at a low rate, as a healthy fleet
    does; nothing uncorrectable.
    """
    rng = np.random.default_rng(seed)
    shape = (n_steps, n_racks, n_gpus)
    temp = np.clip(60 + np.cumsum(rng.normal(0, 0.3, shape), axis=0), 30, 90).round()
    temp_mem = np.clip(temp + 5 + rng.normal(0, 0.5, shape).round(), 30, 95)
    # Board power: slow random walk plus fast noise, at NVML's 1 mW resolution.
    power_mw = np.clip(
        1_400_000 + np.cumsum(rng.normal(0, 3_000, shape), axis=0) + rng.normal(0, 20_000, shape),
        100_000,
        1_800_000,
    ).round()
    energy_mj = 10**9 + np.cumsum(power_mw * (dt_ms / 1000.0), axis=0).astype(np.uint64)
    clock = np.clip(1800 + 15 * np.cumsum(rng.integers(-1, 2, shape), axis=0), 600, 2100)
    util = np.clip(90 + rng.normal(0, 5, shape).round(), 0, 100)
    ts = start_ms + dt_ms * np.arange(n_steps, dtype=np.int64)
    racks = np.array([f"{rack_prefix}{i:04d}" for i in range(n_racks)])
    n = n_steps * n_racks * n_gpus
    cols = {
        "ts": pa.array(np.repeat(ts, n_racks * n_gpus), type=pa.int64()).cast(TS_TYPE),
        "rack": pa.array(np.tile(np.repeat(racks, n_gpus), n_steps)),
        "gpu": pa.array(np.tile(np.arange(n_gpus, dtype=np.uint16), n_steps * n_racks)),
        "power_w": pa.array((power_mw / 1000).astype(np.float32).ravel()),
        "energy_mj": pa.array(energy_mj.astype(np.uint64).ravel()),
        "temp_gpu_c": pa.array(temp.astype(np.float32).ravel()),
        "temp_mem_c": pa.array(temp_mem.astype(np.float32).ravel()),
        "sm_clock_mhz": pa.array(clock.astype(np.uint16).ravel()),
        "util_pct": pa.array(util.astype(np.float32).ravel()),
        "clock_event_reasons": pa.array(np.zeros(n, np.uint64)),
        "xid": pa.array(np.zeros(n, np.uint32)),
        "power_limit_w": pa.array(np.full(n, 1800.0, np.float32)),
    }
    if version == 1:
        return pa.table(cols, schema=GPU_SCHEMA_V1)
    # counters: per GPU a Poisson rate (most GPUs 0 /s), accumulated over time [count]
    gpu_shape = (n_racks, n_gpus)
    sbe_rate = np.where(rng.random(gpu_shape) < 0.02, 0.01, 0.0)
    crc_rate = np.where(rng.random(gpu_shape) < 0.01, 0.05, 0.0)
    sbe = np.cumsum(rng.poisson(sbe_rate * dt_ms / 1000.0, shape), axis=0)
    crc = np.cumsum(rng.poisson(crc_rate * dt_ms / 1000.0, shape), axis=0)
    cols |= {
        "ecc_corrected": pa.array(sbe.astype(np.uint64).ravel()),
        "ecc_uncorrected": pa.array(np.zeros(n, np.uint64)),
        "remapped_rows": pa.array(np.zeros(n, np.uint32)),
        "row_remap_flags": pa.array(np.zeros(n, np.uint8)),
        "nvlink_errors": pa.array(crc.astype(np.uint64).ravel()),
        "thermal_margin_k": pa.array((DEFAULT_SLOWDOWN_C - temp).astype(np.float32).ravel()),
    }
    return pa.table(cols, schema=GPU_SCHEMA)


def points_table(
    units: dict[str, dict[str, float]],
    n_steps: int,
    *,
    start_ms: int = 1_790_000_000_000,
    dt_ms: int = 1000,
    noise: float = 0.05,
    seed: int = 0,
) -> pa.Table:
    """Long-format plant rows: ``units`` maps unit -> {point: mean value}, in POINTS_SCHEMA."""
    rng = np.random.default_rng(seed)
    pairs = [(u, p, v) for u, pts in units.items() for p, v in pts.items()]
    k = len(pairs)
    ts = start_ms + dt_ms * np.arange(n_steps, dtype=np.int64)
    base = np.array([v for _, _, v in pairs])
    values = base[None, :] + np.cumsum(rng.normal(0, noise, (n_steps, k)), axis=0)
    cols = {
        "ts": pa.array(np.repeat(ts, k), type=pa.int64()).cast(TS_TYPE),
        "unit": pa.array(np.tile([u for u, _, _ in pairs], n_steps)),
        "point": pa.array(np.tile([p for _, p, _ in pairs], n_steps)),
        "value": pa.array(values.ravel()),
    }
    return pa.table(cols, schema=POINTS_SCHEMA)


def frames(table: pa.Table, key_column: str) -> list[tuple[bytes, bytes]]:
    """Split rows into Kafka messages: one Arrow IPC stream per (instant, key), in order."""
    out: list[tuple[bytes, bytes]] = []
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    keys = table.column(key_column).to_numpy(zero_copy_only=False)
    change = np.flatnonzero((ts[1:] != ts[:-1]) | (keys[1:] != keys[:-1])) + 1
    bounds = np.concatenate([[0], change, [len(ts)]])
    for a, b in itertools.pairwise(bounds):
        batch = table.slice(int(a), int(b - a)).combine_chunks().to_batches()[0]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        out.append((str(keys[a]).encode(), sink.getvalue().to_pybytes()))
    return out
