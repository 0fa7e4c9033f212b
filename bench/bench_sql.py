"""SQL service benchmark: SELECT 1 under load, memory after heavy queries, query cost.

    .venv/bin/python bench/bench_sql.py [--racks 8] [--gpus 72] [--seconds 900] [--heavy 4]

1. A pool of 2 worker processes (the web server's, storage.sql.POOL_WORKERS) plus the
   express one; ``--heavy`` CPU-bound queries (30 s limit) are submitted at once, then
   ``SELECT 1`` is timed every 0.5 s while they run. Target: every answer within 1 s.
2. Resident memory of the parent and of every worker process [MB] before, and after each
   of several memory-heavy queries (sort of 3e6 strings, list of 5e7 integers, a large
   hash aggregate). Target: back within 200 MB of the baseline after every query.
3. The five documented example queries (docs/sql-examples.md): the sandboxed engine
   (pyarrow datasets, no DuckDB file access) against DuckDB's own read_parquet on the
   same files, best of 3 [ms]: what the sandbox costs.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import duckdb
import numpy as np
import pyarrow as pa

from storage import synth
from storage.layout import date_dir, day_of_ms, default_tables
from storage.rollup import update_rollups
from storage.site_tables import write_site_tables
from storage.sql import POOL_WORKERS, SqlRefused, SqlService
from storage.sql_worker import rss_bytes
from storage.writer import write_file
from streams.schema import TS_TYPE

START_MS = 1_789_999_200_000
HEAVY = "SELECT count(*) FROM range(1000000000000) a, range(1000) b WHERE a.range % 7 = b.range"
MEMORY_HEAVY = [
    "SELECT count(*) FROM (SELECT repeat('x', 200) || range AS s FROM range(3000000) ORDER BY s)",
    "SELECT length(list(range)) FROM range(50000000)",
    "SELECT count(*) FROM (SELECT range % 5000000 AS k, count(*) FROM range(20000000) GROUP BY k)",
    "SELECT max(length(s)) FROM (SELECT string_agg(rack || gpu, ',') AS s FROM gpu)",
]
MB = 2**20


def _store(d: Path, racks: int, gpus: int, seconds: int) -> None:
    tables = default_tables()
    day = day_of_ms(START_MS)
    gpu = synth.gpu_table(racks, gpus, seconds, start_ms=START_MS)
    write_file(tables["gpu"], gpu, date_dir(d, "gpu", day))
    plant = synth.points_table(
        {f"CDU-{i}": {"supply_temp_c": 45.0} for i in range(racks)},
        seconds // 3,
        start_ms=START_MS,
        dt_ms=3000,
    )
    write_file(tables["plant"], plant, date_dir(d, "plant", day))
    power = synth.points_table(
        {"SITE": {"facility_power_w": 1.1e6, "it_power_w": 1.0e6}}, seconds, start_ms=START_MS
    )
    write_file(tables["power"], power, date_dir(d, "power", day))
    n = seconds // 60
    resid = pa.table(
        {
            "ts": pa.array(START_MS + 60_000 * np.arange(n), pa.int64()).cast(TS_TYPE),
            "entity": ["R0001"] * n,
            "quantity": ["outlet_temp_c"] * n,
            "measured": np.full(n, 40.0),
            "expected": np.full(n, 39.0),
            "residual": np.arange(n) * 0.1,
        }
    )
    write_file(tables["residual"], resid, date_dir(d, "residual", day))
    write_site_tables(d, {f"R{i:04d}": f"CDU-{i}" for i in range(racks)})
    update_rollups(d)
    print(f"store: {gpu.num_rows:,} GPU rows")


def _rss(svc: SqlService) -> tuple[float, float]:
    """(parent, sum of workers) resident memory [MB]."""
    assert svc.pool is not None
    return rss_bytes() / MB, sum(svc.pool.worker_rss_bytes().values()) / MB


def _latency_under_load(svc: SqlService, heavy: int) -> None:
    ends: list[str] = []

    def run() -> None:
        try:
            svc.query(HEAVY)
            ends.append("finished")
        except SqlRefused as exc:
            ends.append(str(exc)[:60])

    threads = [threading.Thread(target=run) for _ in range(heavy)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    lat: list[float] = []
    while any(th.is_alive() for th in threads) and len(lat) < 40:
        t0 = time.perf_counter()
        svc.query("SELECT 1")
        lat.append(time.perf_counter() - t0)
        time.sleep(0.5)
    for th in threads:
        th.join()
    print(
        f"SELECT 1 with {heavy} heavy queries running on {POOL_WORKERS} workers + express "
        f"({os.cpu_count()} CPUs): n={len(lat)} median {statistics.median(lat) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms, over 1 s: {sum(x > 1.0 for x in lat)}"
    )
    print(f"heavy queries ended: {sorted(set(ends))}")


def _memory(svc: SqlService) -> None:
    assert svc.pool is not None
    parent0, workers0 = _rss(svc)
    print(f"memory baseline: parent {parent0:.0f} MB, workers {workers0:.0f} MB")
    worst = 0.0
    for q in MEMORY_HEAVY:
        peak = 0.0
        stop = threading.Event()

        def sample(stop: threading.Event = stop) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, sum(_rss(svc)))
                time.sleep(0.05)

        th = threading.Thread(target=sample)
        th.start()
        t0 = time.perf_counter()
        try:
            svc.query(q)
            outcome = "ok"
        except SqlRefused as exc:
            outcome = str(exc)[:50]
        took = time.perf_counter() - t0
        stop.set()
        th.join()
        svc.pool.wait_ready()
        parent, workers = _rss(svc)
        delta = parent + workers - parent0 - workers0
        worst = max(worst, delta)
        print(
            f"  {q[:60]:60s} {took:5.1f} s {outcome:10s} peak {peak:6.0f} MB, "
            f"after: parent {parent:.0f} MB, workers {workers:.0f} MB, delta {delta:+.0f} MB"
        )
    print(f"largest total delta after a query: {worst:+.0f} MB (target < 200 MB)")


def _query_cost(d: Path) -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "sql-examples.md"
    queries = re.findall(r"```sql\n(.*?)```", doc.read_text(), flags=re.S)
    names = ["hottest GPUs", "PUE by day", "residual trend", "ASOF join", "energy/rack/day"]
    svc = SqlService(d, max_rows=10_000_000)
    native = duckdb.connect()
    native.execute("SET TimeZone = 'UTC'")
    for name in ("gpu", "plant", "power", "residual", "gpu_1m", "gpu_1h"):
        files = sorted(str(p) for p in (d / name).glob("date=*/*.parquet"))
        native.execute(
            f"CREATE VIEW {name} AS SELECT * FROM read_parquet({files!r}, "
            "hive_partitioning = true, hive_types = {'date': DATE})"
        )
    native.execute(f"CREATE VIEW site_racks AS SELECT * FROM '{d}/site_racks/*.parquet'")

    def best(f: object) -> float:
        out = []
        for _ in range(3):
            t0 = time.perf_counter()
            f()  # type: ignore[operator]
            out.append(time.perf_counter() - t0)
        return min(out) * 1000

    for name, q in zip(names, queries, strict=True):
        try:
            ours = best(lambda q=q: svc.query(q))
            theirs = best(lambda q=q: native.sql(q).to_arrow_table())
            print(f"  {name:16s} sandboxed {ours:8.1f} ms   DuckDB read_parquet {theirs:8.1f} ms")
        except (SqlRefused, duckdb.Error) as exc:
            print(f"  {name:16s} failed: {exc}")
    raw = "SELECT rack, max(temp_gpu_c) AS t FROM gpu GROUP BY rack"
    ours = best(lambda: svc.query(raw))
    theirs = best(lambda: native.sql(raw).to_arrow_table())
    print(
        f"  {'full gpu scan':16s} sandboxed {ours:8.1f} ms   DuckDB read_parquet {theirs:8.1f} ms"
    )
    svc.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=8)
    ap.add_argument("--gpus", type=int, default=72)
    ap.add_argument("--seconds", type=int, default=900)
    ap.add_argument("--heavy", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _store(d, args.racks, args.gpus, args.seconds)
        svc = SqlService(d, timeout_s=30.0, workers=POOL_WORKERS, memory_limit="2GB")
        assert svc.pool is not None
        t0 = time.perf_counter()
        svc.pool.wait_ready()
        print(f"pool ready in {time.perf_counter() - t0:.1f} s")
        try:
            _latency_under_load(svc, args.heavy)
            _memory(svc)
        finally:
            svc.close()
        print("example queries, best of 3:")
        _query_cost(d)


if __name__ == "__main__":
    main()
