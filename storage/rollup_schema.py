"""Schemas of the rollup tables (1-minute and 1-hour min/mean/max/last)."""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from storage.layout import TableDef
from streams.schema import GPU_SCHEMA, TS_TYPE

STATS: Final = ("min", "mean", "max", "last")

#: GPU metrics rolled up per GPU [unit in the name].
GPU_METRICS: Final = ("power_w", "temp_gpu_c", "temp_mem_c", "util_pct", "sm_clock_mhz")

#: GPU health counters and margin of frames v2 (streams/schema.py GPU_V2_COLUMNS), one
#: aggregate each per bucket: the largest count (counters only grow, so max = the bucket's
#: last count), every remap flag seen (pending 0x1, failure 0x2: OR), and the smallest
#: thermal margin [K]. Column ``{name}_{suffix}``; NULL where no sample carried the field
#: (v1 frames). name -> (SQL aggregate, column suffix).
GPU_HEALTH: Final = {
    "ecc_corrected": ("max", "max"),
    "ecc_uncorrected": ("max", "max"),
    "remapped_rows": ("max", "max"),
    "row_remap_flags": ("bit_or", "or"),
    "nvlink_errors": ("max", "max"),
    "thermal_margin_k": ("min", "min"),
}

#: Rack metrics: per instant over the rack's GPUs first, then per bucket.
#: name -> SQL aggregate over the GPUs of one rack at one instant.
RACK_METRICS: Final = {
    "power_w": "sum(power_w)",  # rack GPU power [W]
    "temp_gpu_max_c": "max(temp_gpu_c)",  # hottest GPU [C]
    "temp_gpu_mean_c": "avg(temp_gpu_c)",  # mean GPU temperature [C]
    "util_mean_pct": "avg(util_pct)",  # mean utilisation [%]
}

#: Bucket widths of the rollups [s].
RESOLUTIONS: Final = {"1m": 60, "1h": 3600}


def _stat_fields(metric: str) -> list[pa.Field]:
    return [pa.field(f"{metric}_{s}", pa.float64()) for s in STATS]


def gpu_rollup_schema() -> pa.Schema:
    fields = [
        pa.field("ts", TS_TYPE, nullable=False),  # bucket start
        pa.field("rack", pa.string(), nullable=False),
        pa.field("gpu", pa.uint16(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),  # samples in the bucket
    ]
    for m in GPU_METRICS:
        fields += _stat_fields(m)
    fields += [
        pa.field("energy_mj_first", pa.uint64()),  # counter at the first sample [mJ]
        pa.field("energy_mj_last", pa.uint64()),  # counter at the last sample [mJ]
    ]
    for col, (_agg, suffix) in GPU_HEALTH.items():
        fields.append(pa.field(f"{col}_{suffix}", GPU_SCHEMA.field(col).type))
    return pa.schema(fields)


def rack_rollup_schema() -> pa.Schema:
    fields = [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("rack", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),  # instants in the bucket
    ]
    for m in RACK_METRICS:
        fields += _stat_fields(m)
    return pa.schema(fields)


def plant_rollup_schema() -> pa.Schema:
    fields = [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("source", pa.string(), nullable=False),  # source table: plant or power
        pa.field("unit", pa.string(), nullable=False),
        pa.field("point", pa.string(), nullable=False),
        pa.field("n", pa.int64(), nullable=False),
        *_stat_fields("value"),
    ]
    return pa.schema(fields)


def rollup_tables() -> dict[str, TableDef]:
    """Rollup table name (gpu_1m, ...) -> definition; written by storage.rollup only."""
    out: dict[str, TableDef] = {}
    for res in RESOLUTIONS:
        out[f"gpu_{res}"] = TableDef(
            f"gpu_{res}", None, gpu_rollup_schema(), ("rack", "gpu", "ts"), ("rack",)
        )
        out[f"rack_{res}"] = TableDef(
            f"rack_{res}", None, rack_rollup_schema(), ("rack", "ts"), ("rack",)
        )
        out[f"plant_{res}"] = TableDef(
            f"plant_{res}",
            None,
            plant_rollup_schema(),
            ("source", "unit", "point", "ts"),
            ("source", "unit", "point"),
        )
    return out
