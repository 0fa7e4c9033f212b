"""Physics benchmark: one model step for 64, 1,250 and 10,000 racks, a 24-hour campus run,
and one full simulator step (physics + workload + sensor frame) at 1 Hz.

Plain script: ``python bench/bench_physics.py [--repeat N]``. Prints figures; asserts nothing.
Reference (ExaDigiT/hpc-cooling-surrogate README, Summit plant, 257 CDUs): the Modelica FMU
needs 79.3 s of wall time per 60 s simulated; its neural surrogate 4.1 ms per 60 s window.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from twin.sim import Simulator
from twin.site import load_site, scale_site
from twin.step import initial_state, nominal_inputs, step
from twin.workload import make_plan, utilisation

FMU_S_PER_MIN = 79.3
SURROGATE_S_PER_MIN = 4.1e-3


def time_step(racks: int, dt_s: float, repeat: int) -> tuple[float, float, float]:
    """(best, median) wall time [s] of one physics step of dt_s for ``racks`` racks, and the
    minor page faults per step (fresh memory costs ~1 us a page on a VM; a load-independent
    figure on a shared machine)."""
    base = load_site()
    site = scale_site(base, racks, max_racks=max(racks, base.info.max_racks))
    rng = np.random.default_rng(0)
    # the default workload mix: training with checkpoints, 20 % of jobs power-capped (so the
    # DVFS solve runs), inference, idle racks
    plan = make_plan(site.n_racks, site.gpu.tdp_w, site.workload, rng)
    z = rng.standard_normal((site.n_racks, site.n_gpus))
    inputs = nominal_inputs(site, utilisation(plan, 0.0, 14.0, z, site.workload))
    inputs.power_limit_w[:] = plan.power_limit_w[:, None]
    state = initial_state(site)
    state = step(site, state, inputs, dt_s)
    times = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeat):
        t0 = time.perf_counter()
        state = step(site, state, inputs, dt_s)
        times.append(time.perf_counter() - t0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / repeat
    return float(np.min(times)), float(np.median(times)), faults


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    print("physics step (twin.step.step), wall time best / median, page faults per step")
    for racks in (64, 1250, 10_000):
        for dt in (1.0, 60.0):
            best, med, faults = time_step(
                racks, dt, args.repeat if racks <= 1250 else max(3, args.repeat // 4)
            )
            print(
                f"  {racks:>6} racks x 72 GPUs = {racks * 72:>7} GPUs, dt={dt:>4.0f} s: "
                f"{best * 1e3:8.2f} / {med * 1e3:8.2f} ms, {faults:6.0f} faults"
            )

    campus = load_site(racks=1250)
    start_ms = 1_767_225_600_000
    sim = Simulator(campus, start_ms=start_ms, sensor_noise=False)
    t0 = time.perf_counter()
    for _ in range(24 * 60):
        sim.step(60.0)
    wall = time.perf_counter() - t0
    per_min = wall / (24 * 60)
    print("24-hour campus simulation (1,250 racks, 90,000 GPUs, dt=60 s, Simulator with workload,")
    print("weather and sensor frames):")
    print(
        f"  wall {wall:.2f} s for 86,400 s simulated = {86_400 / wall:,.0f}x faster than real time"
    )
    print(f"  {per_min * 1e3:.2f} ms per simulated minute (Simulator.step incl. frame building)")
    phys_best, phys, _ = time_step(1250, 60.0, args.repeat)
    print(
        f"  physics only: {phys * 1e3:.2f} ms per simulated minute (best {phys_best * 1e3:.2f} ms)"
    )
    print(f"  vs ExaDigiT FMU 79.3 s/min: {FMU_S_PER_MIN / phys:,.0f}x faster")
    print(f"  vs ExaDigiT surrogate 4.1 ms/min: {SURROGATE_S_PER_MIN / phys:.1f}x faster")

    sim1 = Simulator(campus, start_ms=start_ms)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        sim1.step(1.0)
        times.append(time.perf_counter() - t0)
    print("live 1 Hz step (1,250 racks, noise and NVML quantisation, SimFrame):")
    print(f"  median {np.median(times) * 1e3:.1f} ms, max {np.max(times) * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
