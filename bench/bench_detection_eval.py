"""Score the worker's detectors and alert rules against the simulator's injected faults.

In process, no Kafka: the simulator's frames go through the worker's decoders
(streams/codec.py), the same TwinRuntime, fitted models, facility model, alert sources
(streams/alert_sources.py), detector runtime (streams/detect_runtime.py) and alert engine
(models/alerting.py with the shipped rules) the worker runs, one alert tick per step.

Per fault kind (several seeds): detection rate, delay from fault onset to the first alert
raised in the fault's blast radius, and the same for the static-threshold baseline a
DCGM/DCIM set-up would raise (GPU die temperature at its slowdown limit, CDU supply outside
its band, UPS on battery, an XID in the critical class). Fault-free runs of simulated days
(jobs starting and stopping at their checkpoints, inference following the daily cycle)
give false alerts per 1,000 GPU-hours.

    python bench/bench_detection_eval.py                 # default sizes (docs/detection.md)
    python bench/bench_detection_eval.py --quick         # one seed, short runs
    python bench/bench_detection_eval.py --only none --free-days 0.25   # fault-free only
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.alerting import AlertEngine
from models.rules import load_rules
from streams.alert_sources import evaluate_sources, site_map
from streams.codec import decode_points_frame, encode_frame, gpu_batch, points_batch
from streams.codec_batch import GpuMessage, decode_gpu_frames
from streams.detect_runtime import detect_runtime_for_site
from streams.facility import FacilityModel
from streams.runtime import TwinRuntime
from twin.faults import FAULT_KINDS, parse_fault
from twin.sim import Simulator
from twin.site import load_site
from twin.step import rack_design_flow_kg_s

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z
#: XIDs a fleet treats as critical (issue 9; NVIDIA XID catalogue)
CRITICAL_XIDS = (48, 64, 74, 79, 94, 95)

#: fault kind -> (spec template with {at}, slow?); targets name rack R0002's GPUs, CDU01 etc.
CASES: dict[str, str] = {
    "fouling": "fouling:R0002/G07@{at}",
    "pump_degrade": "pump_degrade:CDU01@{at}",
    "pump_trip": "pump_trip:CDU01@{at}",
    "fan_fail": "fan_fail:DC01@{at}",
    "sensor_stuck": "sensor_stuck:R0002/G03/temp_gpu_c@{at}",
    "sensor_drift": "sensor_drift:R0002/inlet_temp_c@{at},rate_per_s=0.005",
    "sensor_drift_cdu": "sensor_drift:CDU01/supply_temp_c@{at}",
    "ups_on_battery": "ups_on_battery:UPS01@{at}",
    "gpu_throttle_stuck": "gpu_throttle_stuck:R0002/G05@{at}",
}
#: Kinds of faults added by the fleet-fault work, run when the simulator knows them.
NEW_CASES: dict[str, str] = {
    "xid": "xid:R0002/G09@{at}",
    "hbm_decay": "hbm_decay:R0002/G10@{at}",
    "fail_slow": "fail_slow:R0002/G11@{at}",
    "leak": "leak:CDU01@{at}",
    "cascade": "cascade:UPS01@{at}",
    "ups_degrade": "ups_degrade:UPS01@{at}",
}
#: Faults whose detectors compare with hours of history (fitted R, power): these runs learn
#: for --long-warm-s first (at 5 s steps, 1 s from 2 min before the onset).
LONG_WARM = {"fouling", "fail_slow"}
SLOW = {
    "fouling",
    "pump_degrade",
    "sensor_drift",
    "sensor_drift_cdu",
    "hbm_decay",
    "fail_slow",
    "ups_degrade",
}


class JobChurn:
    """Training jobs end and new ones start, as a cluster scheduler runs them: each job (the
    racks of the plan sharing a job number) runs for a random 2-8 h, its racks then idle
    for 10-40 min (drain, the next job's launch), and the next job starts with a new
    checkpoint phase. Inference racks follow the plan's daily cycle (twin/workload.py);
    within a job, checkpoint dips every ~30 min. Drawn from ``seed``, so runs repeat."""

    def __init__(self, sim: Any, seed: int) -> None:
        from twin.workload import IDLE, TRAINING

        self.sim = sim
        self.rng = np.random.default_rng([seed, 77])
        plan = sim._plan  # the simulator's workload plan (arrays edited in place)
        self.idle, self.training = IDLE, TRAINING
        self.jobs = {int(j): np.flatnonzero(plan.job == j) for j in np.unique(plan.job) if j >= 0}
        # each job is somewhere in its run at the start
        self.next_s = {j: float(self.rng.uniform(0.0, 8 * 3600.0)) for j in self.jobs}
        self.running = dict.fromkeys(self.jobs, True)
        self.changes = 0

    def step(self, t_s: float) -> None:
        plan = self.sim._plan
        for j, racks in self.jobs.items():
            if t_s < self.next_s[j]:
                continue
            if self.running[j]:
                plan.kind[racks] = self.idle
                self.next_s[j] = t_s + float(self.rng.uniform(600.0, 2400.0))
            else:
                plan.kind[racks] = self.training
                period = float(plan.period_s[racks[0]])
                plan.phase_s[racks] = float(self.rng.uniform(0.0, period))
                self.next_s[j] = t_s + float(self.rng.uniform(2 * 3600.0, 8 * 3600.0))
            self.running[j] = not self.running[j]
            self.changes += 1


@dataclass
class Run:
    """What one simulated run raised: (time [s after start], rule, entity, owner) of each
    alert raised (operator-visible), and of each baseline threshold alarm."""

    alerts: list[tuple[float, str, str, str]] = field(default_factory=list)
    baseline: list[tuple[float, str, str]] = field(default_factory=list)
    gpu_hours: float = 0.0
    steps: int = 0
    wall_s: float = 0.0
    job_changes: int = 0
    #: alerts still raised and visible when the learning hour ended: raised before the
    #: scored time, they are on an operator's list in it (an alert that never clears
    #: would otherwise hide every later raise of itself)
    carried: list[tuple[float, str, str, str]] = field(default_factory=list)


def _frames(sim_frame: Any, plant: bool) -> tuple[list[GpuMessage], list[tuple[str, bytes]]]:
    gpu = sim_frame.gpu
    msgs = []
    for i, rack in enumerate(sim_frame.rack_ids):
        cols = {name: arr[i] for name, arr in gpu.items()}
        data = encode_frame(gpu_batch(sim_frame.ts_ms, rack, cols))
        msgs.append(GpuMessage(data, rack.encode(), False))
    pts: list[tuple[str, bytes]] = []
    if plant:
        for units in (sim_frame.thermal, sim_frame.power):
            for unit, points in units.items():
                pts.append((unit, encode_frame(points_batch(sim_frame.ts_ms, unit, points))))
    return msgs, pts


def simulate(
    racks: int,
    seed: int,
    faults: list[str],
    duration_s: float,
    dt_s: float,
    *,
    fine_from_s: float = math.inf,
    plant_dt_s: float = 5.0,
    model_dt_s: float = 10.0,
    churn: bool = False,
    learn_s: float = math.inf,
) -> Run:
    """One run; ``dt_s`` per step, 1 s from ``fine_from_s`` on (around a fault)."""
    site = load_site(None, racks=racks)
    sim = Simulator(site, seed=seed, start_ms=START_MS, faults=[parse_fault(f) for f in faults])
    clock = {"ms": START_MS}
    rt = TwinRuntime(
        partitions=1,
        clock_ms=lambda: clock["ms"],
        rack_design_flow_kg_s=rack_design_flow_kg_s(site),
    )
    engine = AlertEngine(load_rules(None), clock=lambda: clock["ms"] / 1000.0)
    smap = site_map(site)
    det = detect_runtime_for_site(site)
    fm = FacilityModel(site, site_file="", start_ms=START_MS)
    run = Run()
    slowdown = float(site.gpu.slowdown_c)
    ups_units = set(site.ups_ids)
    cdu_units = set(site.cdu_ids)
    jobs = JobChurn(sim, seed) if churn else None
    fired: set[tuple[str, str]] = set()
    learnt = False
    t, next_plant, next_model = 0.0, 0.0, 0.0
    seen = 0
    t0 = time.perf_counter()
    n_gpu = site.n_racks * site.n_gpus
    while t < duration_s:
        step = 1.0 if t >= fine_from_s else dt_s
        if jobs is not None:
            jobs.step(t)
        frame = sim.step(step)
        t += step
        clock["ms"] = frame.ts_ms
        plant = t >= next_plant
        if plant:
            next_plant = t + plant_dt_s
        msgs, pts = _frames(frame, plant)
        decoded = decode_gpu_frames(msgs, now_ms=frame.ts_ms)
        rt.apply_gpus([f for f in decoded if not isinstance(f, Exception)], "gpu")
        for unit, data in pts:
            rt.apply_points(decode_points_frame(data, key=unit.encode(), now_ms=frame.ts_ms), "p")
        view = None
        if t >= next_model:
            next_model = t + model_dt_s
            fm.observe(rt)
            fm.advance(frame.ts_ms)
            rt.model_view = view = fm.view(rt)
        now_s = frame.ts_ms / 1000.0
        evaluate_sources(engine, rt, smap, lambda _k: True, now_s, facility_view=view)
        det.evaluate(rt, lambda _k: True, facility_view=view)
        det.feed(
            engine,
            smap.gpu_names,
            smap.rack_where,
            now_s,
            facility_owner=True,
            unit_where=smap.unit_where,
            blast=smap.blast,
        )
        engine.tick(now_s)
        if t >= learn_s and not learnt:
            learnt = True
            run.carried = [
                (t, a.rule, a.entity, a.owner)
                for a in engine.listing()
                if a.active and a.visible(now_s)
            ]
        changed, _ = engine.take_changes()
        new_total = engine.raised_total
        if new_total > seen:
            # every raise an operator sees (a re-raise of the same alert counts again)
            for a in changed:
                key = (a.id, str(a.raised_s))
                if a.active and a.raised_s == now_s and key not in fired and a.visible(now_s):
                    fired.add(key)
                    run.alerts.append((t, a.rule, a.entity, a.owner))
            seen = new_total
        # static-threshold baseline (DCGM/DCIM): first crossing per (alarm, entity)
        temp = frame.gpu["temp_gpu_c"]
        hot = np.argwhere(temp >= slowdown)
        for r, g in hot[:50].tolist():
            ent = f"{frame.rack_ids[r]}/G{g:02d}"
            if ("temp", ent) not in fired:
                fired.add(("temp", ent))
                run.baseline.append((t, "gpu_temp_slowdown", ent))
        xid = frame.gpu.get("xid")
        if xid is not None:
            for r, g in np.argwhere(np.isin(xid, CRITICAL_XIDS))[:50].tolist():
                ent = f"{frame.rack_ids[r]}/G{g:02d}"
                if ("xid", ent) not in fired:
                    fired.add(("xid", ent))
                    run.baseline.append((t, "xid_critical", ent))
        for unit, points in frame.thermal.items():
            if unit in cdu_units and "supply_temp_c" in points:
                v = points["supply_temp_c"]
                if (v > 48.0 or v < 30.0) and ("cdu", unit) not in fired:
                    fired.add(("cdu", unit))
                    run.baseline.append((t, "cdu_supply_band", unit))
        for unit, points in frame.power.items():
            on = unit in ups_units and points.get("on_battery_bool", 0.0) > 0.5
            if on and ("ups", unit) not in fired:
                fired.add(("ups", unit))
                run.baseline.append((t, "ups_on_battery", unit))
        run.gpu_hours += n_gpu * step / 3600.0
        run.steps += 1
    run.wall_s = time.perf_counter() - t0
    run.job_changes = jobs.changes if jobs is not None else 0
    return run


def related(site: Any, target: str) -> set[str]:
    """Entities whose alerts count as detecting a fault on ``target``: the target, its rack
    (and that rack's GPUs) or the racks and GPUs a plant unit feeds."""
    from streams.alert_sources import blast_radius

    blast = blast_radius(site)
    head = target.split("/")[0]
    out = {head}
    racks: tuple[str, ...] = ()
    if head in blast:
        racks = blast[head]
    elif head.startswith("R"):
        racks = (head,)
    parts = target.split("/")
    if len(parts) >= 2 and parts[1].startswith("G"):
        gpu = int(parts[1][1:])
        return {head, f"{head}/g{gpu}", f"{head}/G{gpu:02d}"}
    for r in racks:
        out.add(r)
        out.update(f"{r}/g{i}" for i in range(site.n_gpus))
        out.update(f"{r}/G{i:02d}" for i in range(site.n_gpus))
    if head.startswith("DC") or head in ("FWS", "CHILLER", "HEATPUMP"):
        out.update({"FWS", *site.cdu_ids, *site.dc_ids})
        for r in site.rack_ids:
            out.add(r)
            out.update(f"{r}/g{i}" for i in range(site.n_gpus))
    if head.startswith("UPS"):
        out.update(site.cdu_ids)
    return out


def first_after(events: list[tuple[Any, ...]], ents: set[str], onset: float) -> float | None:
    ts = [e[0] for e in events if e[0] >= onset and (e[-2] in ents or e[-1] in ents)]
    return min(ts) - onset if ts else None


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _fault_job(job: tuple[str, str, int, float, float, int]) -> dict[str, Any]:
    """One fault run (a worker process): first alert and baseline alarm after the onset."""
    name, spec, seed, at, after, racks = job
    site = load_site(None, racks=racks)
    target = spec.split(":", 1)[1].split("@")[0]
    ents = related(site, target)
    run = simulate(
        racks, seed, [spec], at + after, 5.0 if name in LONG_WARM else 1.0, fine_from_s=at - 120.0
    )
    d = first_after(run.alerts, ents, at)
    rule = None
    if d is not None:
        rule = next(r for t, r, e, o in run.alerts if t - at == d and (e in ents or o in ents))
    b = first_after([(t, e, e) for t, _r, e in run.baseline], ents, at)
    pre = [x for x in run.alerts if x[0] < at]
    return {"name": name, "seed": seed, "delay": d, "rule": rule, "base": b, "pre": pre,
            "wall": run.wall_s}  # fmt: skip


def _free_job(job: tuple[int, int, float, float]) -> dict[str, Any]:
    """One fault-free run (a worker process) with job churn and the daily cycle."""
    racks, seed, days, dt = job
    run = simulate(racks, seed, [], days * 86_400.0, dt, churn=True, learn_s=3600.0)
    # the first hour is learning (min_samples of every detector): its raises are not
    # scored, but what is still raised at its end is (an operator sees it)
    scored = run.carried + [x for x in run.alerts if x[0] >= 3600.0]
    hours = run.gpu_hours * max(0.0, 1.0 - 3600.0 / max(days * 86_400.0, 1.0))
    return {"seed": seed, "alerts": scored, "baseline": run.baseline, "gpu_hours": hours,
            "wall": run.wall_s, "job_changes": run.job_changes}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--racks", type=int, default=4, help="racks of the fault runs")
    ap.add_argument("--free-racks", type=int, default=4, help="racks of the fault-free runs")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per fault kind")
    ap.add_argument("--warm-s", type=float, default=600.0, help="learning time before a fault")
    ap.add_argument("--after-s", type=float, default=900.0, help="time after a fault onset")
    ap.add_argument(
        "--slow-after-s", type=float, default=1500.0, help="time after a slow fault's onset"
    )
    ap.add_argument("--long-warm-s", type=float, default=3600.0, help="warm-up of LONG_WARM")
    ap.add_argument("--free-days", type=float, default=2.0, help="days of each fault-free run")
    ap.add_argument("--free-seeds", type=int, default=2)
    ap.add_argument("--free-dt-s", type=float, default=1.0)
    ap.add_argument("--procs", type=int, default=2, help="worker processes")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated fault cases ('none': no faults)")
    a = ap.parse_args(argv)
    for flag in ("racks", "free_racks", "seeds", "free_seeds", "procs"):
        if getattr(a, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1")
    if a.quick:
        a.seeds, a.after_s, a.slow_after_s, a.free_days = 1, 600.0, 900.0, 0.25
    site = load_site(None, racks=a.racks)
    cases = dict(CASES)
    cases.update({k: v for k, v in NEW_CASES.items() if k in FAULT_KINDS})
    only = [c for c in a.only.split(",") if c]
    unknown = sorted(set(only) - set(cases) - {"none"})
    if unknown:
        ap.error(f"--only: unknown cases {unknown}; expected some of {sorted(cases)} or none")
    if only:
        cases = {k: v for k, v in cases.items() if k in only}
    free = not only or "none" in only
    print(
        f"# bench_detection_eval: faults on {a.racks} racks x {site.n_gpus} GPUs, "
        f"{a.seeds} seeds each, warm {a.warm_s:.0f} s, after onset {a.after_s:.0f} s (slow "
        f"faults {a.slow_after_s:.0f} s), dt 1 s; fault-free {a.free_seeds} x "
        f"{a.free_days:g} days of {a.free_racks} racks at dt {a.free_dt_s:g} s with job churn; "
        f"{a.procs} processes on {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}",
        flush=True,
    )
    jobs = []
    for name, tmpl in cases.items():
        at = a.long_warm_s if name in LONG_WARM else a.warm_s
        after = a.slow_after_s if name in SLOW else a.after_s
        for seed in range(a.seeds):
            jobs.append((name, tmpl.format(at=int(at)), seed, at, after, a.racks))
    free_jobs = [(a.free_racks, 100 + i, a.free_days, a.free_dt_s) for i in range(a.free_seeds)]
    t0 = time.perf_counter()
    ctx = mp.get_context("fork")
    with ctx.Pool(a.procs) as pool:
        # the long fault-free runs first, so they overlap the many short fault runs
        free_res = pool.map_async(_free_job, free_jobs if free else [])
        fault_res = pool.map(_fault_job, jobs, chunksize=1)
        free_out = free_res.get()
    wall = time.perf_counter() - t0
    print(
        "\n| fault | detected | delay median [s] | delay max [s] | first rule | "
        "baseline detected | baseline delay median [s] |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in cases:
        rows = [r for r in fault_res if r["name"] == name]
        delays = [r["delay"] for r in rows if r["delay"] is not None]
        base = [r["base"] for r in rows if r["base"] is not None]
        rules = sorted({r["rule"] for r in rows if r["rule"]})
        print(
            f"| {name} | {len(delays)}/{len(rows)} | "
            f"{fmt(float(np.median(delays)) if delays else None)} | "
            f"{fmt(max(delays) if delays else None)} | {', '.join(rules) or '-'} | "
            f"{len(base)}/{len(rows)} | {fmt(float(np.median(base)) if base else None)} |"
        )
    for r in fault_res:
        if r["pre"]:
            print(f"#   {r['name']} seed {r['seed']}: {len(r['pre'])} alerts before onset: "
                  f"{r['pre'][:3]}")  # fmt: skip
    if free_out:
        hours = sum(r["gpu_hours"] for r in free_out)
        alerts = [x for r in free_out for x in r["alerts"]]
        base = [x for r in free_out for x in r["baseline"]]
        by_rule: dict[str, int] = {}
        for x in alerts:
            by_rule[x[1]] = by_rule.get(x[1], 0) + 1
        print(
            f"\nfault-free: {len(free_out)} x {a.free_days:g} days of {a.free_racks} racks at dt "
            f"{a.free_dt_s:g} s, {sum(r['job_changes'] for r in free_out)} job starts/stops, "
            f"{hours:,.0f} GPU-hours scored (first hour of each run not scored): "
            f"{len(alerts)} alerts = {1000.0 * len(alerts) / hours:.2f} per 1,000 GPU-hours "
            f"(by rule: {by_rule or 'none'}); baseline alarms {len(base)} = "
            f"{1000.0 * len(base) / hours:.2f} per 1,000 GPU-hours"
        )
        for x in alerts[:20]:
            print(f"#   false alert {x}")
    print(f"\nwall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
