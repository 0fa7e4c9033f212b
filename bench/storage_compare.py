"""Side by side: our Parquet store vs VictoriaMetrics, Prometheus TSDB and PostgreSQL.

    bench/storage_compare.sh [--racks 8] [--seconds 3600] [--pg-seconds 3600] [--repeats 5]

(the .sh installs the Debian packages, then runs this with the project's venv). In one run
the same simulator samples (twin.sim at NVML resolution, 1 s, 9 metrics per GPU row; a sample
is one value of one metric of one device at one instant) go into every system; it prints
bytes on disk per sample and query times, and writes bench/results/storage_compare.md.
Servers listen on 127.0.0.1 only, keep their data in a temp dir, and are stopped on exit.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.parquet as pq
from storage_compare_data import VM_CSV_FORMAT, Exported, generate, utc_ms
from storage_compare_queries import Query, Window, queries
from storage_compare_servers import Postgres, Prometheus, VictoriaMetrics, dir_bytes

from storage.rollup import update_rollups
from storage.sql import SqlService

RESULTS = Path(__file__).resolve().parent / "results" / "storage_compare.md"
PG_TABLE = """CREATE UNLOGGED TABLE gpu (
  ts timestamptz NOT NULL, rack text NOT NULL, gpu smallint NOT NULL,
  power_w real, energy_mj bigint, temp_gpu_c real, temp_mem_c real, sm_clock_mhz smallint,
  util_pct real, clock_event_reasons bigint, xid integer, power_limit_w real)"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--racks", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=3600, help="simulated seconds at 1 Hz")
    ap.add_argument("--pg-seconds", type=int, default=3600, help="last N s loaded into PG")
    ap.add_argument("--start", default="2026-09-21T00:00:00Z")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--systems", default="vm,prom,pg", help="comma list of vm, prom, pg")
    ap.add_argument("--work", type=Path, default=None, help="work dir (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--append", action="store_true", help="add this run's section to --out")
    args = ap.parse_args()
    systems = {s.strip() for s in args.systems.split(",") if s.strip()}
    work = Path(tempfile.mkdtemp(prefix="storage_compare-", dir=args.work))
    os.chmod(work, 0o755)
    servers: list[VictoriaMetrics | Prometheus | Postgres] = []

    def cleanup() -> None:
        for s in reversed(servers):
            s.stop()
        servers.clear()
        shutil.rmtree(work, ignore_errors=True)

    atexit.register(cleanup)
    # timeout(1) sends SIGTERM: turn it into SystemExit so the finally below stops servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        _run(args, systems, work, servers)
    finally:
        cleanup()


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run(
    args: argparse.Namespace,
    systems: set[str],
    work: Path,
    servers: list[VictoriaMetrics | Prometheus | Postgres],
) -> None:
    pg_seconds = min(args.pg_seconds, args.seconds)
    _log(f"generating {args.racks} racks x {args.seconds:,} s with twin.sim, into {work}")
    t0 = time.perf_counter()
    exp = generate(
        work,
        racks=args.racks,
        seconds=args.seconds,
        start_ms=utc_ms(args.start),
        seed=args.seed,
        pg_seconds=pg_seconds,
        progress=_log,
    )
    gen_s = time.perf_counter() - t0
    _log(
        f"{exp.rows:,} GPU rows = {exp.samples:,} samples in {gen_s:.0f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in exp.seconds.items())
        + ")"
    )
    sizes: dict[str, tuple[int, int, str]] = {}  # system -> (bytes, samples, note)
    load_s: dict[str, float] = {}
    gpu_bytes = dir_bytes(exp.store / "gpu")
    n_files = len(list((exp.store / "gpu").rglob("*.parquet")))
    sizes["ours: Parquet gpu table"] = (gpu_bytes, exp.samples, f"{n_files} files")
    load_s["ours: Parquet gpu table"] = exp.seconds["parquet"]
    roll_s = _timed(lambda: update_rollups(exp.store))
    roll_bytes = sum(dir_bytes(exp.store / t) for t in ("gpu_1m", "gpu_1h", "rack_1m", "rack_1h"))
    sizes["ours: + gpu/rack rollups"] = (gpu_bytes + roll_bytes, exp.samples, "1m and 1h")
    load_s["ours: + gpu/rack rollups"] = exp.seconds["parquet"] + roll_s
    per_col = _parquet_columns(exp.store / "gpu", exp.rows)
    _log(f"parquet {gpu_bytes / exp.samples:.3f} B/sample; rollups {roll_s:.1f} s")
    _log("parquet bytes per GPU row by column: " + per_col)

    vm = prom = pg = None
    if "vm" in systems:
        vm = VictoriaMetrics(work)
        servers.append(vm)
        vm.start()
        t_imp = _timed(partial(_vm_import, vm, exp.vm_csv))
        months = sorted({_month(exp.first_ms), _month(exp.last_ms)})
        t_merge = _timed(lambda: vm.flush_and_merge(months, timeout_s=600))
        sizes["VictoriaMetrics"] = (vm.size_bytes(), exp.samples, "after force_flush + merge")
        load_s["VictoriaMetrics"] = t_imp + t_merge
        _log(f"victoria-metrics: import {t_imp:.1f} s, flush+merge {t_merge:.1f} s")
    for p in exp.vm_csv:
        p.unlink()
    if "prom" in systems:
        prom = Prometheus(work)
        servers.append(prom)
        t_bf = _timed(lambda: prom.backfill(exp.openmetrics, timeout_s=3000))
        n_blocks = sum(1 for d in prom.data.iterdir() if d.is_dir())
        sizes["Prometheus TSDB"] = (prom.size_bytes(), exp.samples, f"{n_blocks} 2 h blocks")
        load_s["Prometheus TSDB"] = t_bf
        _log(f"prometheus: promtool backfill {t_bf:.1f} s")
        prom.start()
    exp.openmetrics.unlink()
    if "pg" in systems:
        pg = Postgres(work)
        servers.append(pg)
        pg.start()
        pg.psql(PG_TABLE)
        t_copy = _timed(
            lambda: pg.psql(f"\\copy gpu FROM '{exp.pg_csv}' WITH (FORMAT csv)", timeout_s=3000)
        )
        t_idx = _timed(
            lambda: pg.psql(
                "CREATE INDEX gpu_rack_gpu_ts ON gpu (rack, gpu, ts);\n"
                "CREATE INDEX gpu_ts ON gpu USING brin (ts);\nVACUUM ANALYZE gpu;",
                timeout_s=3000,
            )
        )
        tot, heap = (
            int(x)
            for x in pg.psql("SELECT pg_total_relation_size('gpu'), pg_table_size('gpu');").split(
                "|"
            )
        )
        sizes["PostgreSQL (heap + indexes)"] = (tot, exp.pg_samples, "btree(rack,gpu,ts)+brin(ts)")
        sizes["PostgreSQL (heap only)"] = (heap, exp.pg_samples, "")
        load_s["PostgreSQL (heap + indexes)"] = t_copy + t_idx
        _log(f"postgresql: COPY {t_copy:.1f} s, indexes + vacuum {t_idx:.1f} s")
    exp.pg_csv.unlink()

    load_before = os.getloadavg()[0]
    window = Window(exp.first_ms, exp.last_ms, exp.rack_ids[0])
    svc = SqlService(exp.store, timeout_s=600, max_rows=10_000_000)
    times: dict[str, dict[str, list[float]]] = {}
    checks: dict[str, dict[str, str]] = {}
    for q in queries(window):
        row = times.setdefault(q.key, {})
        for label, sql in q.duck.items():
            row[f"DuckDB {label}"] = _repeat(partial(svc.query, sql), args.repeats)
        for srv in (vm, prom):
            if srv is not None:
                row[srv.name] = _repeat(partial(_promql, srv, q, window), args.repeats)
        if pg is not None and q.pg is not None:
            pg.time_query(q.pg, 1)  # warm-up
            row["PostgreSQL (slice)"] = pg.time_query(q.pg, args.repeats)
        _log(f"{q.key}: " + ", ".join(f"{k} {_ms(v):.1f} ms" for k, v in row.items()))
        checks[q.key] = _cross_check(q, svc, vm, prom, pg, window)
        _log(f"{q.key} answers (rows or points, sum of {q.check}): {checks[q.key]}")
    svc.close()
    args.load = (load_before, os.getloadavg()[0])
    report = _report(args, exp, pg_seconds, gen_s, sizes, load_s, times, checks, queries(window))
    report = report.replace("{per_col}", per_col)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        with args.out.open("a") as fh:
            fh.write("\n" + report.split("\n", 2)[2])  # without the title
    else:
        args.out.write_text(report)
    _log(f"wrote {args.out}")


def _parquet_columns(table_dir: Path, rows: int) -> str:
    """Compressed bytes per GPU row of each column, over all files of ``table_dir``."""
    acc: dict[str, int] = {}
    for p in table_dir.rglob("[!.]*.parquet"):
        md = pq.read_metadata(p)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                acc[col.path_in_schema] = acc.get(col.path_in_schema, 0) + col.total_compressed_size
    return ", ".join(f"{k} {v / rows:.3f}" for k, v in acc.items())


def _vm_import(vm: VictoriaMetrics, files: list[Path]) -> None:
    for p in files:
        vm.import_csv(p, VM_CSV_FORMAT)


def _month(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).strftime("%Y_%m")


def _promql(srv: VictoriaMetrics | Prometheus, q: Query, w: Window) -> Any:
    if q.instant:
        return srv.query(q.promql, w.last_ms / 1000.0)
    # range points at t cover (t - step, t]: the first covers the window's first step
    start_ms = w.t0_ms - 1000 + q.step_s * 1000 if q.step_s > 1 else w.t0_ms
    return srv.query_range(q.promql, start_ms / 1000.0, w.last_ms / 1000.0, q.step_s)


def _cross_check(
    q: Query,
    svc: SqlService,
    vm: VictoriaMetrics | None,
    prom: Prometheus | None,
    pg: Postgres | None,
    w: Window,
) -> dict[str, str]:
    """Size and checksum of each system's answer, so the timings compare equal work."""
    out: dict[str, str] = {}
    for label, sql in q.duck.items():
        t = svc.query(sql)
        col = t.column(q.check).to_pylist() if q.check in t.column_names else []
        out[f"DuckDB {label}"] = f"{t.num_rows}, {sum(float(x) for x in col):.6g}"
    for srv in (vm, prom):
        if srv is not None:
            res = _promql(srv, q, w)
            vals = [float(v) for r in res for _, v in r.get("values", [r.get("value", [0, 0])])]
            out[srv.name] = f"{len(vals)}, {sum(vals):.6g}"
    if pg is not None and q.pg is not None:
        n, total = pg.psql(f"SELECT count(*), sum({q.check}) FROM ({q.pg}) x;").strip().split("|")
        out["PostgreSQL (slice)"] = f"{n}, {float(total or 0):.6g}"
    return out


def _repeat(fn: Callable[[], Any], n: int) -> list[float]:
    fn()  # warm-up: every system answers from a warm page cache
    return [_timed(fn) for _ in range(n)]


def _ms(v: list[float]) -> float:
    return statistics.median(v) * 1000.0


def _report(
    args: argparse.Namespace,
    exp: Exported,
    pg_seconds: int,
    gen_s: float,
    sizes: dict[str, tuple[int, int, str]],
    load_s: dict[str, float],
    times: dict[str, dict[str, list[float]]],
    checks: dict[str, dict[str, str]],
    qs: list[Query],
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ours = sizes["ours: Parquet gpu table"]
    ours_bps = ours[0] / ours[1]
    lines = [
        "# Storage side by side: Parquet store vs VictoriaMetrics, Prometheus, PostgreSQL",
        "",
        f"Run {now} on {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM ({platform.platform()}), "
        "shared with other work; `bench/storage_compare.sh "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in _cli(args).items())
        + "`.",
        "",
        f"Data: twin.sim (seed {args.seed}), {len(exp.rack_ids)} racks x {exp.n_gpus} GPUs "
        f"at 1 s for {args.seconds:,} s from {args.start}: {exp.rows:,} GPU rows x 9 metrics = "
        f"**{exp.samples:,} samples** (sample = one value of one metric of one GPU at one "
        f"instant). PostgreSQL holds the last {pg_seconds:,} s: {exp.pg_samples:,} samples. "
        f"Generation and writing every import format took {gen_s:.0f} s.",
        "",
        "## Bytes on disk per sample",
        "",
        "| system | bytes | samples | B/sample | x ours | load s | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, (b, n, note) in sizes.items():
        bps = b / n
        load = f"{load_s[name]:.1f}" if name in load_s else ""
        lines.append(
            f"| {name} | {b:,} | {n:,} | {bps:.3f} | {bps / ours_bps:.2f} | {load} | {note} |"
        )
    lines += [
        "",
        "Load s: ours = sink writer (sort, encode, fsync, rename) + compaction on the simulated",
        "clock; VictoriaMetrics = /api/v1/import/csv + force_flush + force_merge until the data",
        "dir is stable (data/ + indexdb/ measured); Prometheus = promtool create-blocks-from",
        "openmetrics (block dirs measured, 2 h blocks as backfilled); PostgreSQL = COPY + indexes",
        "+ VACUUM ANALYZE (pg_total_relation_size; wide table, one row per GPU and instant).",
        "",
        "Ours, compressed bytes per GPU row by column (9 samples per row): {per_col}.",
        "",
        "## Query times (median of "
        f"{args.repeats} after one warm-up; ms; ratio = time / DuckDB raw scan)",
        "",
        f"1-min load average {args.load[0]:.1f} before and {args.load[1]:.1f} after the queries "
        f"on {os.cpu_count()} cores: other work shares the machine, so absolute times vary",
        "between runs (2-4x seen); ratios within one run are the figures to compare.",
        "",
    ]
    for q in qs:
        row = times.get(q.key, {})
        if not row:
            continue
        base = _ms(row["DuckDB raw scan (gpu)"])
        lines += [f"**{q.title}** — PromQL `{q.promql}`", ""]
        lines += ["| system | ms (median) | ms (min) | ratio | answer: rows, sum |"]
        lines.append("|---|---:|---:|---:|---|")
        for k, v in row.items():
            chk = checks.get(q.key, {}).get(k, "")
            lines.append(
                f"| {k} | {_ms(v):.1f} | {min(v) * 1000:.1f} | {_ms(v) / base:.2f} | {chk} |"
            )
        lines.append("")
    lines += [
        "PostgreSQL answers over its slice only (the same last hour when --pg-seconds >= 3600;",
        "the energy query then covers that slice, not the whole run).",
        "",
    ]
    return "\n".join(lines)


def _cli(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("racks", "seconds", "pg_seconds", "repeats", "systems")
    return {k: getattr(args, k) for k in keys}


if __name__ == "__main__":
    main()
