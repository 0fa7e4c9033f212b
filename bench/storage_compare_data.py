"""Data for bench/storage_compare.py: simulator GPU telemetry, written once per system.

The simulator (twin.sim) is stepped at NVML resolution; each chunk of steps goes, in the
same pass, to our Parquet store (the sink's BufferedWriter with production settings, on the
simulated clock, with compaction every maintenance interval as the sink runs it), to CSV
files for VictoriaMetrics' /api/v1/import/csv, to one OpenMetrics file for promtool, and
(its last ``pg_seconds``) to a CSV file for PostgreSQL's COPY. Import formats are streamed
chunk by chunk with vectorised Arrow string kernels: no per-sample Python.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from storage.compact import compact_table
from storage.layout import day_of_ms, default_tables
from storage.writer import BufferedWriter, WriterOptions
from streams.schema import GPU_SCHEMA
from twin.sim import Simulator
from twin.site import load_site

#: The 9 metric columns of a GPU row; a sample is one of them for one GPU at one instant.
METRICS = (
    "power_w",
    "energy_mj",
    "temp_gpu_c",
    "temp_mem_c",
    "sm_clock_mhz",
    "util_pct",
    "clock_event_reasons",
    "xid",
    "power_limit_w",
)
PROM_PREFIX = "gpu_"  # metric name in VictoriaMetrics / Prometheus: gpu_<column>
VM_CSV_FORMAT = ",".join(
    ["1:time:unix_ms", "2:label:rack", "3:label:gpu"]
    + [f"{i + 4}:metric:{PROM_PREFIX}{m}" for i, m in enumerate(METRICS)]
)


@dataclass
class Exported:
    """Where the generated samples went, and what writing them cost."""

    store: Path
    vm_csv: list[Path]
    openmetrics: Path
    pg_csv: Path
    rack_ids: list[str]
    n_gpus: int
    rows: int = 0
    pg_rows: int = 0
    first_ms: int = 0
    last_ms: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return self.rows * len(METRICS)

    @property
    def pg_samples(self) -> int:
        return self.pg_rows * len(METRICS)


class _Timer:
    def __init__(self, acc: dict[str, float]) -> None:
        self.acc = acc

    def add(self, key: str, t0: float) -> None:
        self.acc[key] = self.acc.get(key, 0.0) + time.perf_counter() - t0


def _write_buffer(fh: BinaryIO, arr: pa.Array) -> None:
    """Write the characters of a freshly built string array (its data buffer) to ``fh``."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    offsets_buf, data = arr.buffers()[1:3]
    if offsets_buf is None or data is None or len(arr) == 0:
        return
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)
    fh.write(memoryview(data)[offsets[arr.offset] : offsets[arr.offset + len(arr)]])


class _OpenMetrics:
    """Streams chunks as OpenMetrics lines ``name{rack="..",gpu=".."} value ts_s``."""

    def __init__(self, fh: BinaryIO, rack_ids: list[str], n_gpus: int) -> None:
        self.fh = fh
        labels = [f'{{rack="{r}",gpu="{g}"}} ' for r in rack_ids for g in range(n_gpus)]
        self.prefix = {m: pa.array([PROM_PREFIX + m + lab for lab in labels]) for m in METRICS}
        self.n_series = len(labels)

    def write(self, ts_ms: np.ndarray, values: dict[str, np.ndarray]) -> None:
        k = len(ts_ms)
        ts_txt = pa.array([f" {t // 1000}.{t % 1000:03d}\n" for t in ts_ms.tolist()])
        series_idx = pa.array(np.tile(np.arange(self.n_series), k))
        ts_col = ts_txt.take(pa.array(np.repeat(np.arange(k), self.n_series)))
        for m in METRICS:
            val = pa.array(values[m].ravel()).cast(pa.string())
            line = pc.binary_join_element_wise(self.prefix[m].take(series_idx), val, ts_col, "")
            _write_buffer(self.fh, line)

    def close(self) -> None:
        self.fh.write(b"# EOF\n")
        self.fh.close()


def generate(
    work: Path,
    *,
    racks: int,
    seconds: int,
    start_ms: int,
    seed: int,
    pg_seconds: int,
    chunk_steps: int = 60,
    maintenance_s: float = 300.0,
    vm_file_rows: int = 2_000_000,
    progress: Callable[[str], None] = print,
) -> Exported:
    """Step the simulator at 1 s for ``seconds`` and write every system's input."""
    site = load_site(racks=racks)
    dt_s = 1.0
    # the first frame is one step after start_ms: start one step early so samples sit on
    # whole seconds from start_ms and chunks never straddle a day
    sim = Simulator(site, seed=seed, start_ms=start_ms - round(dt_s * 1000))
    rack_ids, n_gpus = list(site.rack_ids), site.n_gpus
    n_series = len(rack_ids) * n_gpus
    store = work / "parquet"
    exp = Exported(store, [], work / "prom.om", work / "pg.csv", rack_ids, n_gpus)
    tm = _Timer(exp.seconds)
    gdef = default_tables()["gpu"]
    clock = [0.0]
    writer = BufferedWriter(store, WriterOptions(), clock=lambda: clock[0])
    om = _OpenMetrics(exp.openmetrics.open("wb"), rack_ids, n_gpus)
    pg_fh = exp.pg_csv.open("wb")
    vm_fh: BinaryIO | None = None
    vm_rows = 0
    rack_col = pa.array(np.tile(np.repeat(np.array(rack_ids), n_gpus), chunk_steps))
    gpu_col = pa.array(np.tile(np.arange(n_gpus, dtype=np.uint16), chunk_steps * len(rack_ids)))
    csv_opts = pacsv.WriteOptions(include_header=False)
    last_maint = 0.0
    done = 0
    t_report = time.monotonic()
    try:
        while done < seconds:
            k = min(chunk_steps, seconds - done)
            t0 = time.perf_counter()
            ts_ms = np.empty(k, dtype=np.int64)
            vals = {
                m: np.empty(
                    (k, len(rack_ids), n_gpus), dtype=GPU_SCHEMA.field(m).type.to_pandas_dtype()
                )
                for m in METRICS
            }
            for i in range(k):
                fr = sim.step(dt_s)
                ts_ms[i] = fr.ts_ms
                for m in METRICS:
                    vals[m][i] = fr.gpu[m]
            tm.add("simulate", t0)
            n = k * n_series
            t0 = time.perf_counter()
            ts_rows = np.repeat(ts_ms, n_series)
            cols = {
                "ts": pa.array(ts_rows).cast(GPU_SCHEMA.field("ts").type),
                "rack": rack_col.slice(0, n),
                "gpu": gpu_col.slice(0, n),
                **{m: pa.array(vals[m].ravel()) for m in METRICS},
            }
            table = pa.table(cols, schema=GPU_SCHEMA)
            tm.add("arrow", t0)
            # Parquet: the sink's writer, one frame batch per instant, on simulated time
            t0 = time.perf_counter()
            for i in range(k):
                clock[0] = ts_ms[i] / 1000.0
                writer.add(gdef, day_of_ms(int(ts_ms[i])), table.slice(i * n_series, n_series))
                writer.flush_due()
                if clock[0] - last_maint >= maintenance_s:
                    compact_table(gdef, store)
                    last_maint = clock[0]
            tm.add("parquet", t0)
            # VictoriaMetrics CSV (epoch ms), rotated every vm_file_rows rows
            t0 = time.perf_counter()
            if vm_fh is None or vm_rows >= vm_file_rows:
                if vm_fh is not None:
                    vm_fh.close()
                exp.vm_csv.append(work / f"vm-{len(exp.vm_csv):04d}.csv")
                vm_fh = exp.vm_csv[-1].open("wb")
                vm_rows = 0
            pacsv.write_csv(table.set_column(0, "ts", pa.array(ts_rows)), vm_fh, csv_opts)
            vm_rows += n
            tm.add("vm_csv", t0)
            t0 = time.perf_counter()
            om.write(ts_ms, vals)
            tm.add("openmetrics", t0)
            if done + k > seconds - pg_seconds:
                t0 = time.perf_counter()
                skip = max(0, seconds - pg_seconds - done) * n_series
                pacsv.write_csv(table.slice(skip), pg_fh, csv_opts)
                exp.pg_rows += n - skip
                tm.add("pg_csv", t0)
            if exp.rows == 0:
                exp.first_ms = int(ts_ms[0])
            exp.last_ms = int(ts_ms[-1])
            exp.rows += n
            done += k
            if time.monotonic() - t_report > 30:
                progress(f"  generated {done:,}/{seconds:,} s ({exp.rows:,} GPU rows)")
                t_report = time.monotonic()
        t0 = time.perf_counter()
        writer.flush_all()
        compact_table(gdef, store)
        tm.add("parquet", t0)
    finally:
        om.close()
        pg_fh.close()
        if vm_fh is not None:
            vm_fh.close()
    return exp


def utc_ms(iso: str) -> int:
    """Epoch ms of an ISO-8601 time (``Z`` or an offset; naive means UTC)."""
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return round(t.timestamp() * 1000)
