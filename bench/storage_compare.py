"""Side by side: our Parquet store vs VictoriaMetrics, Prometheus TSDB and PostgreSQL.

    bench/storage_compare.sh [--racks 8] [--seconds 3600] [--pg-seconds 3600] [--repeats 5]
        [--systems vm,prom,pg] [--vm-metrics all|temp_gpu_c,energy_mj,...]

(the .sh installs the Debian packages, then runs this with the project's venv). In one run
the same simulator samples (twin.sim at NVML resolution, 1 s, 9 metrics per GPU row; a sample
is one value of one metric of one device at one instant; plant and power points every 5 s
and the facility tracker's residuals beside them) go into every system; it prints bytes on
disk per sample and the times of the five documented queries of docs/sql-examples.md (and
two more), and writes bench/results/storage_compare.md. VictoriaMetrics is fed while the
data is generated (nothing of it on disk); PostgreSQL gets the last --pg-seconds. The full
sizes of issue 4 (about 20-25 min each on the shared 2-core machine):

    bench/storage_compare.sh --racks 64 --seconds 86400 --pg-seconds 3600 --repeats 3 \
        --systems vm,pg --vm-metrics temp_gpu_c,energy_mj --out /tmp/day.md
    bench/storage_compare.sh --racks 1250 --seconds 3600 --pg-seconds 180 --repeats 3 \
        --systems vm,pg --vm-metrics temp_gpu_c,energy_mj --out /tmp/campus.md

Servers listen on 127.0.0.1 only, keep their data in a temp dir, and are stopped on exit.
While the timed queries run, /tmp/storage_bench_queries_running exists and (as root) the
benchmark and its servers run at nice 0 even when it was started under nice. Prints
figures; asserts nothing.
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
from storage_compare_data import METRICS, PLANT_DT_S, Exported, generate, utc_ms
from storage_compare_queries import Query, Window, queries
from storage_compare_servers import (
    Postgres,
    Prometheus,
    VictoriaMetrics,
    VmStream,
    dir_bytes,
    set_priority,
)

import storage.rollup
from storage.compact import compact_table
from storage.layout import default_tables
from storage.rollup import update_rollups
from storage.sql import SqlService

RESULTS = Path(__file__).resolve().parent / "results" / "storage_compare.md"
PG_TABLES = """CREATE UNLOGGED TABLE gpu (
  ts timestamptz NOT NULL, rack text NOT NULL, gpu smallint NOT NULL,
  power_w real, energy_mj bigint, temp_gpu_c real, temp_mem_c real, sm_clock_mhz smallint,
  util_pct real, clock_event_reasons bigint, xid integer, power_limit_w real);
CREATE UNLOGGED TABLE plant (ts timestamptz NOT NULL, unit text NOT NULL, point text NOT NULL,
  value double precision NOT NULL);
CREATE UNLOGGED TABLE power (LIKE plant);
CREATE UNLOGGED TABLE residual (ts timestamptz NOT NULL, entity text NOT NULL,
  quantity text NOT NULL, measured double precision, expected double precision,
  residual double precision NOT NULL);
CREATE UNLOGGED TABLE site_racks (rack text PRIMARY KEY, cdu text NOT NULL);"""
PG_INDEXES = """CREATE INDEX gpu_rack_gpu_ts ON gpu (rack, gpu, ts);
CREATE INDEX gpu_ts ON gpu USING brin (ts);
CREATE INDEX plant_unit_point_ts ON plant (unit, point, ts);
CREATE INDEX power_unit_point_ts ON power (unit, point, ts);
CREATE INDEX residual_entity_quantity_ts ON residual (entity, quantity, ts);
VACUUM ANALYZE;"""
#: Present while the timed queries run, so that other benchmarks on the machine wait.
MARKER = Path("/tmp/storage_bench_queries_running")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--racks", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=3600, help="simulated seconds at 1 Hz")
    ap.add_argument("--pg-seconds", type=int, default=3600, help="last N s loaded into PG")
    ap.add_argument("--start", default="2026-09-21T00:00:00Z")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--systems", default="vm,prom,pg", help="comma list of vm, prom, pg")
    ap.add_argument(
        "--vm-metrics",
        default="all",
        help="GPU metrics loaded into VictoriaMetrics: 'all' or a comma list "
        "(e.g. temp_gpu_c,energy_mj: the ones the queries read)",
    )
    ap.add_argument("--rollup-memory", default="4GB", help="DuckDB memory for the rollups")
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
    vm_metrics = METRICS if args.vm_metrics == "all" else tuple(args.vm_metrics.split(","))
    unknown = sorted(set(vm_metrics) - set(METRICS))
    if unknown:
        raise SystemExit(f"--vm-metrics: unknown {unknown}; expected 'all' or some of {METRICS}")
    vm = prom = pg = None
    stream: VmStream | None = None
    if "vm" in systems:
        vm = VictoriaMetrics(work)
        servers.append(vm)
        vm.start()
        stream = vm.stream_import()
    _log(f"generating {args.racks} racks x {args.seconds:,} s with twin.sim, into {work}")
    t0 = time.perf_counter()
    exp = generate(
        work,
        racks=args.racks,
        seconds=args.seconds,
        start_ms=utc_ms(args.start),
        seed=args.seed,
        pg_seconds=pg_seconds,
        vm_put=stream.put if stream is not None else None,
        vm_metrics=vm_metrics,
        openmetrics="prom" in systems,
        progress=_log,
    )
    gen_s = time.perf_counter() - t0
    args.gen_s = gen_s
    args.gen_parts = dict(exp.seconds)
    _log(
        f"{exp.rows:,} GPU rows = {exp.samples:,} samples in {gen_s:.0f} s ("
        + ", ".join(f"{k} {v:.1f} s" for k, v in exp.seconds.items())
        + ")"
    )
    sizes: dict[str, tuple[int, int, str]] = {}  # system -> (bytes, samples, note)
    load_s: dict[str, float] = {}
    gpu_bytes = dir_bytes(exp.store / "gpu")
    sizes["ours: Parquet gpu table"] = (gpu_bytes, exp.samples, f"{exp.files} files")
    load_s["ours: Parquet gpu table"] = exp.seconds["parquet"]
    # a batch load, not the sink beside its buffers: let DuckDB hold a campus hour's
    # 5.4 M per-GPU minutes in memory instead of spilling (storage.rollup reads this global)
    storage.rollup.ROLLUP_MEMORY_LIMIT = args.rollup_memory
    roll_s = _timed(lambda: update_rollups(exp.store))
    roll_bytes = sum(dir_bytes(exp.store / t) for t in ("gpu_1m", "gpu_1h", "rack_1m", "rack_1h"))
    sizes["ours: + gpu/rack rollups"] = (gpu_bytes + roll_bytes, exp.samples, "1m and 1h")
    load_s["ours: + gpu/rack rollups"] = exp.seconds["parquet"] + roll_s
    args.roll_s = roll_s
    _log(f"parquet {gpu_bytes / exp.samples:.3f} B/sample; rollups {roll_s:.1f} s")
    # what the sink's maintenance does to a finished day (storage/compact.py): seal every
    # partition into one file sorted by the table's keys; the queries below read that
    seal_s = _timed(lambda: _seal(exp.store, exp.last_ms))
    sealed_bytes = dir_bytes(exp.store / "gpu")
    n_sealed = sum(1 for _ in (exp.store / "gpu").rglob("[!.]*.parquet"))
    sizes["ours: gpu table, sealed"] = (sealed_bytes, exp.samples, f"{n_sealed} files")
    load_s["ours: gpu table, sealed"] = exp.seconds["parquet"] + seal_s
    args.seal_s = seal_s
    per_col = _parquet_columns(exp.store / "gpu", exp.rows)
    _log(f"sealed: {sealed_bytes / exp.samples:.3f} B/sample in {seal_s:.1f} s")
    _log("parquet bytes per GPU row by column: " + per_col)

    if vm is not None and stream is not None:
        t_tail = _timed(stream.close)
        months = sorted({_month(exp.first_ms), _month(exp.last_ms)})
        t_merge = _timed(lambda: vm.flush_and_merge(months, timeout_s=1800))
        what = "all 9 GPU metrics" if len(vm_metrics) == len(METRICS) else ", ".join(vm_metrics)
        sizes["VictoriaMetrics"] = (
            vm.size_bytes(),
            exp.vm_samples,
            f"{what} + plant/power/residual series; after force_flush + merge",
        )
        load_s["VictoriaMetrics"] = stream.busy_s + t_merge
        args.vm_load = (stream.busy_s, t_tail, t_merge, stream.sent_bytes, stream.requests)
        _log(
            f"victoria-metrics: {exp.vm_samples:,} samples, {stream.sent_bytes / 1e9:.1f} GB "
            f"JSON in {stream.requests} requests; sender busy {stream.busy_s:.1f} s, "
            f"{t_tail:.1f} s after generation ended; flush+merge {t_merge:.1f} s"
        )
    if "prom" in systems and exp.openmetrics is not None:
        prom = Prometheus(work)
        servers.append(prom)
        om_path = exp.openmetrics
        t_bf = _timed(lambda: prom.backfill(om_path, timeout_s=3000))
        n_blocks = sum(1 for d in prom.data.iterdir() if d.is_dir())
        sizes["Prometheus TSDB"] = (prom.size_bytes(), exp.samples, f"{n_blocks} 2 h blocks")
        load_s["Prometheus TSDB"] = t_bf
        _log(f"prometheus: promtool backfill {t_bf:.1f} s")
        om_path.unlink()
        prom.start()
    if "pg" in systems:
        pg = Postgres(work)
        servers.append(pg)
        pg.start()
        pg.psql(PG_TABLES + "\n" + _site_racks_sql(exp.rack_cdu))
        t_copy = _timed(
            lambda: pg.psql(
                "".join(
                    f"\\copy {t} FROM '{p}' WITH (FORMAT csv)\n" for t, p in exp.pg_csv.items()
                ),
                timeout_s=3000,
            )
        )
        t_idx = _timed(lambda: pg.psql(PG_INDEXES, timeout_s=3000))
        tot, heap = (
            int(x)
            for x in pg.psql("SELECT pg_total_relation_size('gpu'), pg_table_size('gpu');").split(
                "|"
            )
        )
        sizes["PostgreSQL (heap + indexes)"] = (tot, exp.pg_samples, "btree(rack,gpu,ts)+brin(ts)")
        sizes["PostgreSQL (heap only)"] = (heap, exp.pg_samples, "")
        load_s["PostgreSQL (heap + indexes)"] = t_copy + t_idx
        args.pg_load = (t_copy, t_idx)
        _log(f"postgresql: COPY {t_copy:.1f} s, indexes + vacuum {t_idx:.1f} s")
    for csv_path in exp.pg_csv.values():
        csv_path.unlink(missing_ok=True)

    window = Window(exp.first_ms, exp.last_ms, exp.rack_ids[0], pg_first_ms=exp.pg_first_ms)
    svc = SqlService(exp.store, timeout_s=600, max_rows=10_000_000)
    times: dict[str, dict[str, list[float]]] = {}
    checks: dict[str, dict[str, str]] = {}
    procs = [os.getpid()]
    procs += [s.proc.pid for s in (vm, prom) if s is not None and s.proc is not None]
    procs += pg.pids() if pg is not None else []
    MARKER.touch()
    nice_before = os.nice(0)
    if os.geteuid() == 0:  # the heavy steps ran niced; the timed queries run at nice 0
        set_priority(procs, 0)
    load_before = os.getloadavg()
    try:
        for q in queries(window):
            row = times.setdefault(q.key, {})
            for label, sql in q.duck.items():
                row[f"DuckDB {label}"] = _repeat(partial(svc.query, sql), args.repeats)
            for srv in _tsdbs(q, vm, prom):
                row[srv.name] = _repeat(partial(_promql, srv, q, window), args.repeats)
            if pg is not None and q.pg is not None:
                pg.time_query(q.pg, 1)  # warm-up
                row["PostgreSQL (slice)"] = pg.time_query(q.pg, args.repeats)
                if _slice_differs(q, window) and q.duck_slice is not None:
                    row[SLICE] = _repeat(partial(svc.query, q.duck_slice), args.repeats)
            _log(f"{q.key}: " + ", ".join(f"{k} {_ms(v):.1f} ms" for k, v in row.items()))
            checks[q.key] = _cross_check(q, svc, vm, prom, pg, window)
            _log(f"{q.key} answers (rows or points, sum of {q.check}): {checks[q.key]}")
    finally:
        args.load = (load_before[0], os.getloadavg()[0])
        MARKER.unlink(missing_ok=True)
        if os.geteuid() == 0:
            set_priority(procs, nice_before)
    svc.close()
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


def _seal(store: Path, last_ms: int) -> None:
    """Seal every partition of every table, as maintenance does once their day is over."""
    after = dt.datetime.fromtimestamp(last_ms / 1000.0, tz=dt.UTC).date() + dt.timedelta(days=1)
    for tdef in default_tables().values():
        compact_table(tdef, store, today=after)


def _site_racks_sql(rack_cdu: dict[str, str]) -> str:
    rows = ", ".join(f"('{r}', '{c}')" for r, c in sorted(rack_cdu.items()))
    return f"INSERT INTO site_racks VALUES {rows};"


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


def _month(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000.0, tz=dt.UTC).strftime("%Y_%m")


def _promql(srv: VictoriaMetrics | Prometheus, q: Query, w: Window) -> Any:
    if q.instant:
        return srv.query(q.promql, w.last_ms / 1000.0)
    # range points at t cover (t - step, t]: the first covers the window's first step
    first = w.first_ms if q.whole_run else w.t0_ms
    start_ms = first - 1000 + q.step_s * 1000 if q.step_s > 1 else first
    return srv.query_range(q.promql, start_ms / 1000.0, w.last_ms / 1000.0, q.step_s)


SLICE = "DuckDB, PostgreSQL's slice only"


def _slice_differs(q: Query, w: Window) -> bool:
    """Whether PostgreSQL's slice is narrower than what the query reads from the others."""
    return w.pg_first_ms > (w.first_ms if q.whole_run else w.t0_ms)


def _tsdbs(
    q: Query, vm: VictoriaMetrics | None, prom: Prometheus | None
) -> list[VictoriaMetrics | Prometheus]:
    """The TSDBs that hold this query's series (Prometheus is given GPU series only)."""
    out: list[VictoriaMetrics | Prometheus] = [] if vm is None else [vm]
    if prom is not None and q.gpu_only:
        out.append(prom)
    return out


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
    for srv in _tsdbs(q, vm, prom):
        if srv is not None:
            res = _promql(srv, q, w)
            vals = [float(v) for r in res for _, v in r.get("values", [r.get("value", [0, 0])])]
            out[srv.name] = f"{len(vals)}, {sum(vals):.6g}"
    if pg is not None and q.pg is not None:
        n, total = pg.psql(f"SELECT count(*), sum({q.check}) FROM ({q.pg}) x;").strip().split("|")
        out["PostgreSQL (slice)"] = f"{n}, {float(total or 0):.6g}"
        if _slice_differs(q, w) and q.duck_slice is not None:
            t = svc.query(q.duck_slice)
            col = t.column(q.check).to_pylist() if q.check in t.column_names else []
            out[SLICE] = f"{t.num_rows}, {sum(float(x) for x in col):.6g}"
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
    pg_min = (exp.last_ms - exp.pg_first_ms) / 60_000 + 1 / 60
    pts = ", ".join(f"{k} {v:,}" for k, v in exp.point_rows.items())
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
        f"instant); plant and power points every {PLANT_DT_S} s and the facility tracker's "
        f"residuals beside them (rows: {pts}). PostgreSQL holds the last {pg_seconds:,} s "
        f"({pg_min:.0f} min): {exp.pg_samples:,} GPU samples, and the plant, power and "
        f"residual rows of that slice. Generation took {gen_s:.0f} s wall ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in args.gen_parts.items())
        + f"); rollups {args.roll_s:.0f} s; sealing every partition (storage/compact.py, "
        f"as maintenance does once a day is over) {getattr(args, 'seal_s', 0.0):.0f} s: the "
        "queries read the sealed store.",
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
        "Load s: ours = storage.writer.write_file (encode, fsync, rename) of pre-sorted chunks",
        "of about 2.8 M GPU rows, one file each (the size compaction merges the sink's files",
        "into); VictoriaMetrics = time its import thread spent sending JSON lines to",
        "/api/v1/import (streamed while generating; it waits on the server) + force_flush +",
        "force_merge until the data dir is stable (data/ + indexdb/ measured); Prometheus =",
        "promtool create-blocks-from openmetrics (2 h blocks as backfilled); PostgreSQL =",
        "COPY of its slice (all tables) + indexes + VACUUM ANALYZE (pg_total_relation_size of",
        "gpu; wide table, one row per GPU and instant).",
    ]
    if getattr(args, "vm_load", None):
        busy, tail, merge, sent, reqs = args.vm_load
        lines += [
            "",
            f"VictoriaMetrics import: {sent / 1e9:.1f} GB of JSON lines in {reqs} requests, "
            f"sender busy {busy:.0f} s, {tail:.0f} s still to go when generation ended, "
            f"flush + merge {merge:.0f} s.",
        ]
    lines += [
        "",
        "Ours, compressed bytes per GPU row by column (9 samples per row): {per_col}.",
        "",
        "## Query times (median of "
        f"{args.repeats} after one warm-up; ms; ratio = time / the first DuckDB line)",
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
        base = _ms(next(iter(row.values())))
        lines += [f"**{q.title}** — PromQL `{q.promql}`", ""]
        if q.note:
            lines += [q.note, ""]
        lines += ["| system | ms (median) | ms (min) | ratio | answer: rows, sum |"]
        lines.append("|---|---:|---:|---:|---|")
        for k, v in row.items():
            chk = checks.get(q.key, {}).get(k, "")
            lines.append(
                f"| {k} | {_ms(v):.1f} | {min(v) * 1000:.1f} | {_ms(v) / base:.2f} | {chk} |"
            )
        lines.append("")
    lines += [
        "PostgreSQL answers over its slice only (where that is narrower than what a query",
        "reads, its answer differs from the others'); the line \"DuckDB, PostgreSQL's slice",
        "only\" runs our SQL over exactly PostgreSQL's rows: compare PostgreSQL with that line.",
        "",
    ]
    return "\n".join(lines)


def _cli(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("racks", "seconds", "pg_seconds", "repeats", "systems", "vm_metrics")
    return {k: getattr(args, k) for k in keys}


if __name__ == "__main__":
    main()
