"""Data for bench/storage_compare.py: the simulator's telemetry, written once per system.

twin.sim is stepped at NVML resolution (1 s). Every ``plant_dt_s`` (5 s, as a BMS polls and
as ``twin sim`` publishes them) its plant and power readings are kept, and a
:class:`twin.tracker.FacilityTracker` fed with the same readings (as a worker feeds it) gives
the residuals, measured minus the model's expectation of every plant point (the rows the
worker publishes on twin.residuals). Each chunk of steps goes, in the same pass:

- to our Parquet store: ``storage.writer.write_file`` with production options, one file per
  chunk (about 2.8 M GPU rows, within the 2-4 M rows that compaction merges the sink's
  files into), rows built already in the table's sort order (rack, gpu, ts);
- to VictoriaMetrics through ``vm_put`` (JSON lines for /api/v1/import, one line per series
  and chunk, built with Arrow string kernels), streamed while it is generated: nothing of it
  is written to disk; only the GPU metrics in ``vm_metrics``;
- optionally (Prometheus) to one OpenMetrics file for promtool;
- its last ``pg_seconds`` to CSV files for PostgreSQL's COPY.

No per-sample Python anywhere.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from storage.layout import date_dir, day_of_ms, default_tables
from storage.site_tables import write_site_tables
from storage.writer import write_file
from streams.schema import GPU_SCHEMA, GPU_V2_COLUMNS, POINTS_SCHEMA, RESIDUAL_SCHEMA
from twin.sim import Simulator
from twin.site import load_site
from twin.tracker import FacilityTracker

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
#: Plant and power points every 5 s, as streams/sim_source.py DEFAULT_PLANT_DT_S.
PLANT_DT_S = 5
DAY_S = 86_400


@dataclass
class PointSeries:
    """Long-format points sampled at common instants: values[i, j] of key j at ts_ms[i]."""

    keys: list[tuple[str, str]]  # (unit or entity, point or quantity)
    ts_ms: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def values(self) -> np.ndarray:
        if not self.rows:
            return np.empty((0, len(self.keys)))
        return np.vstack(self.rows)


@dataclass
class Exported:
    """Where the generated samples went, and what writing them cost."""

    store: Path
    openmetrics: Path | None
    pg_csv: dict[str, Path]  # PostgreSQL table -> CSV of its slice
    rack_ids: list[str]
    n_gpus: int
    rack_cdu: dict[str, str]
    rows: int = 0
    pg_rows: int = 0
    pg_first_ms: int = 0
    first_ms: int = 0
    last_ms: int = 0
    vm_samples: int = 0  # samples sent to VictoriaMetrics (GPU + plant + power + residual)
    point_rows: dict[str, int] = field(default_factory=dict)  # plant/power/residual rows
    files: int = 0
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


def string_bytes(arr: pa.Array | pa.ChunkedArray) -> bytes:
    """The characters of a string array, concatenated (its data buffer between offsets)."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    offsets_buf, data = arr.buffers()[1:3]
    if offsets_buf is None or data is None or len(arr) == 0:
        return b""
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)
    return bytes(memoryview(data)[offsets[arr.offset] : offsets[arr.offset + len(arr)]])


def vm_json_lines(
    headers: pa.Array, values: np.ndarray, ts_ms: Sequence[int] | np.ndarray
) -> bytes:
    """VictoriaMetrics /api/v1/import JSON lines: one per series (row of ``values``).

    ``headers[i]`` is the series' ``{"metric":{...},"values":[`` prefix; every series has the
    same ``ts_ms`` [ms]. Values are written by Arrow's number formatting (shortest
    round-trip; integers without a decimal point).
    """
    n, k = values.shape
    if n == 0 or k == 0:
        return b""
    tail = '],"timestamps":[' + ",".join(str(int(t)) for t in ts_ms) + "]}\n"
    text = pa.array(np.ascontiguousarray(values).ravel()).cast(pa.string())
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, text), ",")
    return string_bytes(pc.binary_join_element_wise(headers, joined, pa.scalar(tail), ""))


def _json_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def vm_header(name: str, labels: dict[str, str]) -> str:
    body = ",".join(f"{_json_str(k)}:{_json_str(v)}" for k, v in labels.items())
    return (
        '{"metric":{"__name__":' + _json_str(name) + ("," + body if body else "") + '},"values":['
    )


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
            self.fh.write(string_bytes(line))

    def close(self) -> None:
        self.fh.write(b"# EOF\n")
        self.fh.close()


def _flat(units: dict[str, dict[str, float]], keys: list[tuple[str, str]]) -> np.ndarray:
    return np.array([units[u][p] for u, p in keys], dtype=np.float64)


class _Plant:
    """Plant and power readings every PLANT_DT_S, and the tracker's residuals beside them."""

    def __init__(self, sim: Simulator, start_ms: int) -> None:
        self.site = sim.site
        self.tracker = FacilityTracker(sim.site, start_ms=start_ms)
        self.series: dict[str, PointSeries] = {}
        self.res_keys: list[tuple[str, str]] | None = None
        self.measured: list[np.ndarray] = []
        self.expected: list[np.ndarray] = []
        self.gpu_idx = np.arange(sim.site.n_gpus)

    def take(
        self,
        ts_ms: int,
        fr_thermal: dict[str, dict[str, float]],
        fr_power: dict[str, dict[str, float]],
        gpu: dict[str, np.ndarray],
    ) -> None:
        for name, units in (("plant", fr_thermal), ("power", fr_power)):
            ser = self.series.get(name)
            if ser is None:
                ser = self.series[name] = PointSeries(
                    [(u, p) for u, pts in units.items() for p in pts]
                )
            ser.ts_ms.append(ts_ms)
            ser.rows.append(_flat(units, ser.keys))
        # the worker's facility model (streams/facility.py): inputs from the readings, step
        # to the frame's instant, then residual = measured - expected per plant point
        tr = self.tracker
        util, limit, bits = gpu["util_pct"], gpu["power_limit_w"], gpu["clock_event_reasons"]
        for i, rack in enumerate(self.site.rack_ids):
            tr.observe_rack_gpus(rack, self.gpu_idx, util[i], limit[i], clock_event_reasons=bits[i])
        measured = fr_thermal | fr_power
        for unit, pts in measured.items():
            tr.observe_points(unit, pts)
        tr.advance(ts_ms)
        expected = tr.expected_points()
        if self.res_keys is None:
            self.res_keys = [
                (u, p) for u, pts in expected.items() for p in pts if p in measured.get(u, {})
            ]
            self.res_ts: list[int] = []
        self.res_ts.append(ts_ms)
        self.measured.append(_flat(measured, self.res_keys))
        self.expected.append(_flat(expected, self.res_keys))

    def residuals(self) -> PointSeries:
        keys = self.res_keys or []
        ser = PointSeries(keys, list(getattr(self, "res_ts", [])))
        if self.measured:
            ser.rows = [np.vstack(self.measured) - np.vstack(self.expected)]
        return ser

    def residual_table(self) -> pa.Table:
        keys = self.res_keys or []
        if not self.measured:
            return RESIDUAL_SCHEMA.empty_table()
        m, e = np.vstack(self.measured), np.vstack(self.expected)
        return _long_table(
            RESIDUAL_SCHEMA,
            self.res_ts,
            keys,
            {"measured": m, "expected": e, "residual": m - e},
            ("entity", "quantity"),
        )


def _long_table(
    schema: pa.Schema,
    ts_ms: Sequence[int],
    keys: list[tuple[str, str]],
    values: dict[str, np.ndarray],
    key_names: tuple[str, str],
) -> pa.Table:
    """Long-format rows (ts, key0, key1, values...) of (instants, keys) arrays; rows whose
    last value column is not finite are left out (a point the model cannot estimate)."""
    n_t, n_k = len(ts_ms), len(keys)
    ts = np.repeat(np.asarray(ts_ms, dtype=np.int64), n_k)
    cols: dict[str, pa.Array] = {
        "ts": pa.array(ts).cast(schema.field("ts").type),
        key_names[0]: pa.array([k[0] for k in keys]).take(pa.array(np.tile(np.arange(n_k), n_t))),
        key_names[1]: pa.array([k[1] for k in keys]).take(pa.array(np.tile(np.arange(n_k), n_t))),
    }
    last = ""
    for name, arr in values.items():
        cols[name] = pa.array(arr.ravel())
        last = name
    table = pa.table(cols, schema=schema)
    ok = np.isfinite(values[last].ravel())
    return table if bool(ok.all()) else table.filter(pa.array(ok))


def _write_points(store: Path, name: str, table: pa.Table) -> int:
    """``table`` into the store's ``name`` table, one file per UTC day."""
    tdef = default_tables()[name]
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    days = ts // (DAY_S * 1000)
    for d in np.unique(days):
        part = table.filter(pa.array(days == d))
        write_file(tdef, part, date_dir(store, name, day_of_ms(int(d) * DAY_S * 1000)))
    return table.num_rows


def generate(
    work: Path,
    *,
    racks: int,
    seconds: int,
    start_ms: int,
    seed: int,
    pg_seconds: int,
    vm_put: Callable[[bytes], None] | None = None,
    vm_metrics: Sequence[str] = METRICS,
    openmetrics: bool = False,
    chunk_rows: int = 2_800_000,
    progress: Callable[[str], None] = print,
) -> Exported:
    """Step the simulator at 1 s for ``seconds`` and write every system's input."""
    site = load_site(racks=racks)
    # the first frame is one step after start_ms: start one step early so samples sit on
    # whole seconds from start_ms and chunks never straddle a day
    sim = Simulator(site, seed=seed, start_ms=start_ms - 1000)
    rack_ids, n_gpus = list(site.rack_ids), site.n_gpus
    n_racks = len(rack_ids)
    n_series = n_racks * n_gpus
    store = work / "parquet"
    rack_cdu = {r: site.cdu_ids[int(site.rack_cdu[i])] for i, r in enumerate(rack_ids)}
    pg_tables = ("gpu", "plant", "power", "residual")
    exp = Exported(
        store,
        work / "prom.om" if openmetrics else None,
        {t: work / f"pg-{t}.csv" for t in pg_tables},
        rack_ids,
        n_gpus,
        rack_cdu,
    )
    tm = _Timer(exp.seconds)
    gdef = default_tables()["gpu"]
    om = _OpenMetrics(exp.openmetrics.open("wb"), rack_ids, n_gpus) if exp.openmetrics else None
    pg_gpu = exp.pg_csv["gpu"].open("wb")
    csv_opts = pacsv.WriteOptions(include_header=False)
    chunk_steps = max(1, chunk_rows // n_series)
    if chunk_steps >= PLANT_DT_S:
        chunk_steps -= chunk_steps % PLANT_DT_S
    rack_arr = pa.array(rack_ids)
    vm_head = {
        m: pa.array(
            [
                vm_header(PROM_PREFIX + m, {"rack": r, "gpu": str(g), "cdu": rack_cdu[r]})
                for r in rack_ids
                for g in range(n_gpus)
            ]
        )
        for m in vm_metrics
    }
    sorted_cols: dict[int, tuple[pa.Array, pa.Array]] = {}  # k -> (rack, gpu) columns
    plant = _Plant(sim, start_ms)
    pg_from = seconds - pg_seconds  # step index of the slice's first instant
    done = 0
    t_report = time.monotonic()
    try:
        while done < seconds:
            t_now_ms = start_ms + done * 1000
            to_midnight = DAY_S - (t_now_ms // 1000) % DAY_S
            k = min(chunk_steps, seconds - done, to_midnight)
            t0 = time.perf_counter()
            ts_ms = np.empty(k, dtype=np.int64)
            vals = {
                m: np.empty((k, n_racks, n_gpus), dtype=GPU_SCHEMA.field(m).type.to_pandas_dtype())
                for m in METRICS
            }
            for i in range(k):
                fr = sim.step(1.0)
                ts_ms[i] = fr.ts_ms
                for m in METRICS:
                    vals[m][i] = fr.gpu[m]
                if (done + i) % PLANT_DT_S == 0:
                    tm.add("simulate", t0)
                    t0 = time.perf_counter()
                    plant.take(fr.ts_ms, fr.thermal, fr.power, fr.gpu)
                    tm.add("plant+tracker", t0)
                    t0 = time.perf_counter()
            tm.add("simulate", t0)
            # Parquet: one file per chunk, rows built in the sort order (rack, gpu, ts)
            t0 = time.perf_counter()
            if k not in sorted_cols:
                sorted_cols[k] = (
                    rack_arr.take(pa.array(np.repeat(np.arange(n_racks), n_gpus * k))),
                    pa.array(np.tile(np.repeat(np.arange(n_gpus, dtype=np.uint16), k), n_racks)),
                )
            per_series = {m: np.ascontiguousarray(vals[m].transpose(1, 2, 0)) for m in METRICS}
            cols = {
                "ts": pa.array(np.tile(ts_ms, n_series)).cast(GPU_SCHEMA.field("ts").type),
                "rack": sorted_cols[k][0],
                "gpu": sorted_cols[k][1],
                **{m: pa.array(per_series[m].ravel()) for m in METRICS},
            }
            # The v2 health counters are not part of this comparison: NULL, "not measured",
            # as the store holds them for v1 frames.
            n_rows = len(cols["ts"])
            for name in GPU_V2_COLUMNS:
                cols[name] = pa.nulls(n_rows, GPU_SCHEMA.field(name).type)
            table = pa.table(cols, schema=GPU_SCHEMA)
            tm.add("arrow", t0)
            t0 = time.perf_counter()
            write_file(gdef, table, date_dir(store, "gpu", day_of_ms(int(ts_ms[0]))), sort=False)
            exp.files += 1
            del table, cols
            tm.add("parquet", t0)
            if vm_put is not None:
                t0 = time.perf_counter()
                for m in vm_metrics:
                    data = vm_json_lines(vm_head[m], per_series[m].reshape(n_series, k), ts_ms)
                    tm.add("vm_json", t0)
                    t0 = time.perf_counter()
                    vm_put(data)
                    tm.add("vm_wait", t0)
                    t0 = time.perf_counter()
                    exp.vm_samples += n_series * k
            del per_series
            if om is not None:
                t0 = time.perf_counter()
                om.write(ts_ms, vals)
                tm.add("openmetrics", t0)
            if done + k > pg_from:
                t0 = time.perf_counter()
                i0 = max(0, pg_from - done)
                kk = k - i0
                # ts as text, once per instant (Arrow's timestamp formatting is slow)
                ts_txt = pa.array([_iso(int(t)) for t in ts_ms[i0:]])
                pg_tab = pa.table(
                    {
                        "ts": ts_txt.take(pa.array(np.repeat(np.arange(kk), n_series))),
                        "rack": rack_arr.take(
                            pa.array(np.tile(np.repeat(np.arange(n_racks), n_gpus), kk))
                        ),
                        "gpu": pa.array(np.tile(np.arange(n_gpus, dtype=np.uint16), kk * n_racks)),
                        **{m: pa.array(vals[m][i0:].ravel()) for m in METRICS},
                    }
                )
                pacsv.write_csv(pg_tab, pg_gpu, csv_opts)
                if exp.pg_rows == 0:
                    exp.pg_first_ms = int(ts_ms[i0])
                exp.pg_rows += kk * n_series
                tm.add("pg_csv", t0)
            if exp.rows == 0:
                exp.first_ms = int(ts_ms[0])
            exp.last_ms = int(ts_ms[-1])
            exp.rows += k * n_series
            done += k
            if time.monotonic() - t_report > 60:
                progress(
                    f"  generated {done:,}/{seconds:,} s ({exp.rows:,} GPU rows; "
                    + ", ".join(f"{a} {b:.0f} s" for a, b in exp.seconds.items())
                    + ")"
                )
                t_report = time.monotonic()
    finally:
        if om is not None:
            om.close()
        pg_gpu.close()
    # plant, power, residual: Parquet, VictoriaMetrics series, PostgreSQL slice
    t0 = time.perf_counter()
    tables = {
        name: _long_table(
            POINTS_SCHEMA, ser.ts_ms, ser.keys, {"value": ser.values()}, ("unit", "point")
        )
        for name, ser in plant.series.items()
    }
    tables["residual"] = plant.residual_table()
    for name, tab in tables.items():
        exp.point_rows[name] = _write_points(store, name, tab)
        ts_col = tab.column("ts").cast(pa.int64())
        part = tab.filter(pc.greater_equal(ts_col, pa.scalar(exp.pg_first_ms, pa.int64())))
        with exp.pg_csv[name].open("wb") as fh:
            pacsv.write_csv(part, fh, csv_opts)
    write_site_tables(store, rack_cdu)
    tm.add("points", t0)
    if vm_put is not None:
        t0 = time.perf_counter()
        series = {
            "plant": plant.series["plant"],
            "power": plant.series["power"],
            "residual": plant.residuals(),
        }
        label = {"plant": "unit", "power": "unit", "residual": "entity"}
        for name, ser in series.items():
            v = ser.values().T  # (keys, instants)
            ok = np.isfinite(v).all(axis=1)
            heads = pa.array(
                [
                    vm_header(f"{name}_{p}", {label[name]: u})
                    for (u, p), good in zip(ser.keys, ok, strict=True)
                    if good
                ]
            )
            vm_put(vm_json_lines(heads, v[ok], ser.ts_ms))
            exp.vm_samples += int(ok.sum()) * len(ser.ts_ms)
        tm.add("vm_json", t0)
    return exp


def _iso(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}+00"


def utc_ms(iso: str) -> int:
    """Epoch ms of an ISO-8601 time (``Z`` or an offset; naive means UTC)."""
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return round(t.timestamp() * 1000)
