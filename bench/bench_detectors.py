"""CPU time of every detector over the full campus (90,000 GPU series at 1 Hz).

Feeds each detector synthetic 1 Hz telemetry of 1,250 racks x 72 GPUs (die-temperature
residuals, fitted R, NVML-like integer die temperatures with power as companion) for
``--steps`` steps and prints the CPU time (``time.process_time``: the machine is shared, so
wall time would count other processes) per 1 s step and the share of one core. The
"worker set" is what a worker would run on every GPU each second, plus the rack balance
(1,250 series). Asserts nothing (speed is measured in bench/, never asserted in tests).

With ``--worker`` it measures the worker's whole alert tick instead, on the simulator's
telemetry of the campus decoded into a TwinRuntime as the worker holds it: the alert sources
(thermal margin, power capping, estimator residual of every GPU), the detector runtime
(streams/detect_runtime.py: every GPU, rack and UPS detector, held scores), its feed of the
hot racks to the alert engine and the engine's housekeeping, every second; the unit
detectors over the facility model's view every 10 s; and the checkpoint sizes.

Usage: python bench/bench_detectors.py [--steps 60] [--racks 1250] [--worker]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.base import Detector
from models.registry import DETECTORS, make_detector

GPUS_PER_RACK = 72

#: What a worker runs every second: detector name, input series, companion.
WORKER_SET: tuple[tuple[str, str, str | None], ...] = (
    ("gpu_residual", "residual", None),
    ("drift", "residual", None),
    ("r_trend", "r", None),
    ("stuck", "temp", "power"),
    ("rate", "temp", None),
    ("balance", "rack_heat", "rack_power"),
)
#: The others when benched alone: label, name, input, companion, parameters.
OTHERS: tuple[tuple[str, str, str, str | None, dict[str, bool]], ...] = (
    ("ups_efficiency", "ups_efficiency", "ups_in", "ups_out", {}),
    ("zscore", "zscore", "temp", None, {}),
    ("zscore daily", "zscore", "temp", None, {"daily": True}),
    ("combined", "combined", "temp", "power", {}),
)


def make_inputs(racks: int, steps: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per step: GPU arrays (racks*72,) and rack arrays (racks,) in SI units."""
    rng = np.random.default_rng(seed)
    n = racks * GPUS_PER_RACK
    power = rng.uniform(300.0, 1800.0, n)
    out: dict[str, list[np.ndarray]] = {
        k: []
        for k in ("residual", "r", "temp", "power", "rack_heat", "rack_power", "ups_in", "ups_out")
    }
    n_ups = max(racks // 64 * 2, 2)  # two modules per 64-rack hall
    for _ in range(steps):
        step = rng.random(n) < 0.05  # 5 % of GPUs change load each second
        power = np.where(step, rng.uniform(300.0, 1800.0, n), power) * (
            1.0 + rng.normal(0.0, 0.005, n)
        )
        out["power"].append(power)
        out["temp"].append(np.round(45.0 + 0.02 * power + rng.normal(0.0, 0.3, n)))
        out["residual"].append(rng.normal(0.0, 0.5, n))
        out["r"].append(0.02 * (1.0 + rng.normal(0.0, 0.01, n)))
        rack_p = power.reshape(racks, GPUS_PER_RACK).sum(axis=1)
        out["rack_power"].append(rack_p)
        out["rack_heat"].append(rack_p * (0.97 + rng.normal(0.0, 0.003, racks)))
        ups_out = 1.5e6 * (1.0 + rng.normal(0.0, 0.002, n_ups))
        out["ups_out"].append(ups_out)
        out["ups_in"].append(ups_out * 1.04 * (1.0 + rng.normal(0.0, 0.002, n_ups)))
    return out


def time_detector(
    det: Detector,
    xs: list[np.ndarray],
    auxs: list[np.ndarray] | None,
    group: np.ndarray | None,
    warm: int = 5,
) -> float:
    """Median CPU seconds of one update (after ``warm`` steps that seed the state)."""
    times = []
    clock: Callable[[], float] = time.process_time
    for k, x in enumerate(xs):
        aux = auxs[k] if auxs is not None else None
        t0 = clock()
        det.update(1.7e9 + k, x, aux=aux, group=group)
        if k >= warm:
            times.append(clock() - t0)
    return float(np.median(times))


def worker_tick(racks: int, steps: int) -> None:
    """CPU time of the worker's alert tick at ``racks`` (see the module doc)."""
    from models.alerting import AlertEngine
    from models.rules import load_rules
    from streams.alert_sources import evaluate_sources, site_map
    from streams.codec import decode_points_frame
    from streams.codec_batch import GpuMessage, decode_gpu_frames
    from streams.detect_runtime import FACILITY_KEY, detect_runtime_for_site
    from streams.facility import FacilityModel
    from streams.runtime import TwinRuntime
    from streams.sim_source import frames_of, make_simulator
    from twin.site import load_site
    from twin.step import rack_design_flow_kg_s

    site = load_site(None, racks=racks)
    start_ms = 1_767_225_600_000
    sim = make_simulator(racks=racks, site_path=None, seed=0, faults=(), start_ms=start_ms)
    clock = {"ms": start_ms}
    rt = TwinRuntime(
        partitions=1,
        clock_ms=lambda: clock["ms"],
        rack_design_flow_kg_s=rack_design_flow_kg_s(site),
    )
    det = detect_runtime_for_site(site)
    engine = AlertEngine(load_rules(None), clock=lambda: clock["ms"] / 1000.0)
    smap = site_map(site)
    fm = FacilityModel(site, site_file="", start_ms=start_ms)
    parts = {"alert sources": 0.0, "detectors": 0.0, "feed + engine": 0.0}
    units_ms: list[float] = []
    n = 0
    for k in range(steps):
        frame = sim.step(1.0)
        clock["ms"] = frame.ts_ms
        frames = frames_of(frame, plant=k % 5 == 0)
        for kind, key, value in frames:
            if kind != "gpu":
                contract = "telemetry.thermal" if kind == "thermal" else "telemetry.power"
                pf = decode_points_frame(
                    value, key=key.encode(), now_ms=frame.ts_ms, contract=contract
                )
                rt.apply_points(pf, contract)
        msgs = [GpuMessage(v, key.encode()) for kind, key, v in frames if kind == "gpu"]
        good = decode_gpu_frames(msgs, now_ms=frame.ts_ms)
        rt.apply_gpus([f for f in good if not isinstance(f, Exception)], "telemetry.gpu")
        view = None
        if k % 10 == 0:
            fm.observe(rt)
            fm.advance(frame.ts_ms)
            rt.model_view = view = fm.view(rt)
        now_s = frame.ts_ms / 1000.0
        c0 = time.process_time()
        evaluate_sources(engine, rt, smap, lambda _k: True, now_s, facility_view=view)
        c1 = time.process_time()
        det.evaluate(rt, lambda _k: True)
        c2 = time.process_time()
        if view is not None:
            det._score_units(view)
        c3 = time.process_time()
        det.feed(engine, smap.gpu_names, smap.rack_where, now_s, facility_owner=True,
                 unit_where=smap.unit_where, blast=smap.blast)  # fmt: skip
        engine.tick(now_s)
        engine.take_changes()
        c4 = time.process_time()
        if k >= 5:  # state grown, models fitted
            parts["alert sources"] += c1 - c0
            parts["detectors"] += c2 - c1
            parts["feed + engine"] += c4 - c3
            n += 1
            if view is not None:
                units_ms.append((c3 - c2) * 1e3)
    print(f"worker alert tick at {racks} racks ({racks * site.n_gpus:,} GPUs), mean of {n} "
          f"1 s ticks (CPU time, shared machine):")  # fmt: skip
    total = 0.0
    for name, sec in parts.items():
        ms = sec / max(n, 1) * 1e3
        total += ms
        print(f"{name:>16} {ms:8.1f} ms/tick {ms / 10:6.2f} % core")
    unit = float(np.mean(units_ms)) if units_ms else 0.0
    print(
        f"{'unit detectors':>16} {unit:8.1f} ms per facility step (10 s) {unit / 100:6.2f} % core"
    )
    total_pct = total / 10 + unit / 100
    print(f"{'total':>16} {total:8.1f} ms/tick + units {total_pct:6.2f} % of one core")
    c0 = time.process_time()
    blobs = det.checkpoints(list(det.scored), facility=True)
    ck_ms = (time.process_time() - c0) * 1e3
    rack_sizes = [len(v) for key, v in blobs.items() if key in det.scored]
    fac = len(blobs.get(FACILITY_KEY, b""))
    print(
        f"checkpoints: {len(blobs)} keys in {ck_ms:.0f} ms CPU; rack "
        f"{np.median(rack_sizes):,.0f} B (median), {FACILITY_KEY} {fac:,} B "
        f"({len(det.unit_no):,} unit points), largest {max(map(len, blobs.values())):,} B"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--racks", type=int, default=1250)
    parser.add_argument("--worker", action="store_true", help="the worker's whole alert tick")
    args = parser.parse_args()
    if args.steps < 6 or args.racks < 1:
        parser.error("--steps must be >= 6 and --racks >= 1")
    if args.worker:
        worker_tick(args.racks, args.steps)
        return
    n = args.racks * GPUS_PER_RACK
    data = make_inputs(args.racks, args.steps)
    group = np.repeat(np.arange(args.racks), GPUS_PER_RACK)
    print(f"{args.racks} racks, {n:,} GPU series, {args.steps} steps at 1 Hz (CPU time)")
    print(f"{'detector':>14} {'input':>10} {'series':>8} {'ms/step':>8} {'% core':>7}")
    total = 0.0
    rows = [(name, name, inp, aux, {}, True) for name, inp, aux in WORKER_SET]
    rows += [(*other, False) for other in OTHERS]
    assert {r[1] for r in rows} == set(DETECTORS)
    for label, name, inp, aux, params, in_set in rows:
        xs = data[inp]
        det = make_detector(name, **params)
        # Group labels only for GPU-sized inputs (the rack balance has one series per rack).
        grp = group if xs[0].size == group.size else None
        sec = time_detector(det, xs, data[aux] if aux else None, grp)
        if in_set:
            total += sec
        mark = "" if in_set else "  (not in the worker set)"
        print(f"{label:>14} {inp:>10} {xs[0].size:>8,} {sec * 1e3:>8.2f} {sec * 100:>6.1f}%{mark}")
    print(f"{'worker set':>14} {'':>10} {'':>8} {total * 1e3:>8.2f} {total * 100:>6.1f}%")


if __name__ == "__main__":
    main()
