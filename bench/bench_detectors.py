"""CPU time of every detector over the full campus (90,000 GPU series at 1 Hz).

Feeds each detector synthetic 1 Hz telemetry of 1,250 racks x 72 GPUs (die-temperature
residuals, fitted R, NVML-like integer die temperatures with power as companion) for
``--steps`` steps and prints the CPU time (``time.process_time``: the machine is shared, so
wall time would count other processes) per 1 s step and the share of one core. The
"worker set" is what a worker would run on every GPU each second, plus the rack balance
(1,250 series). Asserts nothing (speed is measured in bench/, never asserted in tests).

Usage: python bench/bench_detectors.py [--steps 60] [--racks 1250]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

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
        k: [] for k in ("residual", "r", "temp", "power", "rack_heat", "rack_power")
    }
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--racks", type=int, default=1250)
    args = parser.parse_args()
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
