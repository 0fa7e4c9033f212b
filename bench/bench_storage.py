"""Storage benchmark: bytes per sample, writer and decode throughput, documented query times.

    .venv/bin/python bench/bench_storage.py [--racks 8] [--gpus 72] [--seconds 900]

A sample is one value of one metric of one device at one instant (Prometheus' unit). Bytes
are reported per sensor sample: the 6 sensor columns of a GPU row (power, energy, two
temperatures, SM clock, utilisation), whose bytes are counted alone; the near-constant
columns (throttle bits, XID, power limit, the v2 health counters) cost a few hundredths of a
byte per row and are listed apart. Figures for the files as the sink writes them and after
sealing (storage/compact.py). Data is synthetic at NVML resolution (storage/synth.py).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from storage import synth
from storage.compact import compact_table
from storage.decode import decode_message
from storage.layout import date_dir, day_of_ms, default_tables
from storage.rollup import update_rollups
from storage.site_tables import write_site_tables
from storage.sql import SqlService
from storage.writer import BufferedWriter, WriterOptions

START_MS = 1_789_999_200_000
SENSOR_COLUMNS = ("power_w", "energy_mj", "temp_gpu_c", "temp_mem_c", "sm_clock_mhz", "util_pct")


def column_bytes(table_dir: Path) -> dict[str, int]:
    """Compressed bytes per column over every file of ``table_dir``."""
    acc: dict[str, int] = {}
    for p in table_dir.rglob("[!.]*.parquet"):
        md = pq.read_metadata(p)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                acc[col.path_in_schema] = acc.get(col.path_in_schema, 0) + col.total_compressed_size
    return acc


def report_bytes(label: str, table_dir: Path, rows: int) -> None:
    files = list(table_dir.rglob("[!.]*.parquet"))
    size = sum(p.stat().st_size for p in files)
    cols = column_bytes(table_dir)
    sensor = sum(cols[c] for c in SENSOR_COLUMNS)
    print(
        f"{label}: {size / 1e6:.1f} MB in {len(files)} files, {size / rows:.2f} B/row; "
        f"sensor columns {sensor / rows / len(SENSOR_COLUMNS):.3f} B/sensor sample, "
        f"whole file {size / rows / len(SENSOR_COLUMNS):.3f} B/sensor sample"
    )
    print("  B/row by column: " + ", ".join(f"{k} {v / rows:.3f}" for k, v in cols.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=72)
    ap.add_argument("--seconds", type=int, default=900)
    ap.add_argument("--row-group", type=int, default=500_000)
    args = ap.parse_args()
    tables = default_tables()
    gdef = tables["gpu"]
    t0 = time.perf_counter()
    gpu = synth.gpu_table(args.racks, args.gpus, args.seconds, start_ms=START_MS)
    print(f"generated {gpu.num_rows:,} GPU rows in {time.perf_counter() - t0:.1f} s")
    fr = synth.frames(gpu, "rack")

    t0 = time.perf_counter()
    decoded = [decode_message(gdef, k, v, 0) for k, v in fr]
    dt_dec = time.perf_counter() - t0
    print(f"decode: {len(fr):,} frames, {gpu.num_rows / dt_dec:,.0f} rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # the sink's flushes: at the row-group target or every 60 s of the frames' own clock
        sim_now = [START_MS / 1000.0]
        w = BufferedWriter(
            d, WriterOptions(row_group_rows=args.row_group), clock=lambda: sim_now[0]
        )
        day = day_of_ms(START_MS)
        t0 = time.perf_counter()
        for i, t in enumerate(decoded):
            sim_now[0] = t.column("ts")[0].value / 1000.0
            w.add(gdef, day, t, ("telemetry.gpu", 0), i)
            w.flush_due()
        w.flush_all()
        dt_w = time.perf_counter() - t0
        print(
            f"writer (buffer, sort, encode, fsync, rename): {gpu.num_rows / dt_w:,.0f} rows/s, "
            f"{gpu.num_rows / (dt_w + dt_dec):,.0f} rows/s with decode"
        )
        report_bytes("on disk as flushed", d / "gpu", gpu.num_rows)
        t0 = time.perf_counter()
        compact_table(gdef, d, today=day + dt.timedelta(days=1))
        print(f"sealed in {time.perf_counter() - t0:.1f} s")
        report_bytes("on disk sealed", d / "gpu", gpu.num_rows)
        # Plant, power, residual and site tables for the documented queries.
        steps = args.seconds // 30
        plant = synth.points_table(
            {f"CDU-{i}": {"supply_temp_c": 45.0} for i in range(args.racks)},
            steps,
            start_ms=START_MS,
            dt_ms=30_000,
        )
        from storage.writer import write_file

        write_file(tables["plant"], plant, date_dir(d, "plant", day))
        power = synth.points_table(
            {"site": {"facility_power_w": 1.1e6, "it_power_w": 1.0e6}},
            args.seconds,
            start_ms=START_MS,
        )
        write_file(tables["power"], power, date_dir(d, "power", day))
        write_site_tables(d, {f"R{i:04d}": f"CDU-{i}" for i in range(args.racks)})
        t0 = time.perf_counter()
        update_rollups(d)
        print(f"rollups (1m, 1h; gpu, rack, plant): {time.perf_counter() - t0:.2f} s")
        doc = Path(__file__).resolve().parents[1] / "docs" / "sql-examples.md"
        queries = re.findall(r"```sql\n(.*?)```", doc.read_text(), flags=re.S)
        names = ["hottest GPUs", "PUE by day", "residual trend", "ASOF join", "energy/rack/day"]
        svc = SqlService(d, max_rows=10_000_000)
        for name, q in zip(names, queries, strict=True):
            best = min(_timed(svc, q) for _ in range(3))
            print(f"query {name:16s}: {best * 1000:8.1f} ms")
        raw = (
            "SELECT rack, time_bucket(INTERVAL 1 MINUTE, ts) AS m, max(temp_gpu_c) FROM gpu "
            "GROUP BY ALL"
        )
        roll = "SELECT rack, ts, max(temp_gpu_c_max) FROM gpu_1m GROUP BY ALL"
        for label, q in (("raw scan", raw), ("gpu_1m rollup", roll)):
            best = min(_timed(svc, q) for _ in range(3))
            print(f"per-rack per-minute max, {label:13s}: {best * 1000:8.1f} ms")


def _timed(svc: SqlService, q: str) -> float:
    t0 = time.perf_counter()
    svc.query(q)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
