"""Physics benchmark: one model step for 64, 1,250 and 10,000 racks, a 24-hour campus run
(the whole ``Simulator.step``: physics, workload, weather and the sensor frame, per simulated
minute), the publishable frames' encoding, and one full simulator step at 1 Hz.

Plain script: ``python bench/bench_physics.py [--repeat N] [--against TREE] [--rounds N]``.
Prints figures; asserts nothing. ``--against TREE`` (another checkout, e.g. ``git worktree
add /tmp/base HEAD~3``) times the campus ``Simulator.step(60.0)`` of that tree and of this
one alternately, in fresh processes, under the same load, and prints both.
Reference (ExaDigiT/hpc-cooling-surrogate README, Summit plant, 257 CDUs): the Modelica FMU
needs 79.3 s of wall time per 60 s simulated; its neural surrogate 4.1 ms per 60 s window.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from twin.sim import Simulator
from twin.site import load_site, scale_site
from twin.step import initial_state, nominal_inputs, step
from twin.workload import make_plan, utilisation

FMU_S_PER_MIN = 79.3
SURROGATE_S_PER_MIN = 4.1e-3
ROOT = Path(__file__).resolve().parents[1]
START_MS = 1_767_225_600_000

#: Run in a fresh process with the checkout to time as its working directory (its own
#: twin package first on the path): per-step wall and CPU time [s] of the campus
#: Simulator.step(60.0), as the 24-hour run steps it. Only the Simulator API, so it times
#: older checkouts too.
_STEP_TIMER = """
import json, sys, time
sys.path.insert(0, ".")
from twin.sim import Simulator
from twin.site import load_site
sim = Simulator(load_site(racks=1250), start_ms=%d, sensor_noise=False)
for _ in range(5):
    sim.step(60.0)
wall, cpu = [], []
for _ in range(%d):
    t0, c0 = time.perf_counter(), time.thread_time()
    sim.step(60.0)
    cpu.append(time.thread_time() - c0)
    wall.append(time.perf_counter() - t0)
print(json.dumps({"wall": wall, "cpu": cpu}))
"""


def _step_times(tree: Path, steps: int) -> dict[str, list[float]]:
    """Per-step wall and CPU times [s] of the campus Simulator.step(60.0) of ``tree``."""
    out = subprocess.run(
        [sys.executable, "-c", _STEP_TIMER % (START_MS, steps)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    times: dict[str, list[float]] = json.loads(out.splitlines()[-1])
    return times


def _best_median_ms(times: list[float]) -> str:
    return f"best {min(times) * 1e3:.2f} ms, median {float(np.median(times)) * 1e3:.2f} ms"


def compare(against: Path, rounds: int, steps: int) -> None:
    """Time this tree's and ``against``'s campus step alternately and print both."""
    got: dict[str, dict[str, list[float]]] = {"this": {}, "against": {}}
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for name, tree in (("against", against), ("this", ROOT)):
            for k, v in _step_times(tree, steps).items():
                got[name].setdefault(k, []).extend(v)
    load1 = os.getloadavg()[0]
    print(
        f"campus Simulator.step(60.0), {rounds} alternating rounds of {steps} steps, "
        f"load average {load0:.1f} -> {load1:.1f}:"
    )
    for name, tree in (("this", ROOT), ("against", against)):
        t = got[name]
        print(f"  {name:<7} ({tree}): wall {_best_median_ms(t['wall'])};")
        print(f"          CPU (thread time) {_best_median_ms(t['cpu'])}")


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


def time_encode(sim: Simulator, repeat: int) -> tuple[float, float, int, int]:
    """Best wall time [s] to encode one step's publishable frames (``twin sim``'s
    streams.sim_source.frames_of): the GPU frames alone, and the plant frames alone (a plant
    poll), with the number of frames of each."""
    from types import SimpleNamespace

    from streams.sim_source import frames_of

    gpu_t, plant_t = [], []
    n_gpu = n_plant = 0
    for _ in range(repeat):
        frame = sim.step(60.0)
        t0 = time.perf_counter()
        n_gpu = len(frames_of(frame, plant=False))
        gpu_t.append(time.perf_counter() - t0)
        plant_only = SimpleNamespace(ts_ms=frame.ts_ms, rack_ids=[], gpu={}, plant=frame.plant)
        t0 = time.perf_counter()
        n_plant = len(frames_of(plant_only, plant=True))
        plant_t.append(time.perf_counter() - t0)
    return min(gpu_t), min(plant_t), n_gpu, n_plant


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=_positive, default=20)
    ap.add_argument(
        "--against",
        type=Path,
        help="another checkout: time its campus Simulator.step alternately with this one's",
    )
    ap.add_argument("--rounds", type=_positive, default=4, help="alternating rounds (--against)")
    ap.add_argument("--steps", type=_positive, default=150, help="steps per round (--against)")
    args = ap.parse_args()
    if args.against is not None:
        if not (args.against / "twin" / "sim.py").is_file():
            ap.error(f"--against {args.against}: no twin/sim.py there")
        compare(args.against, args.rounds, args.steps)
        return

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
    start_ms = START_MS
    sim = Simulator(campus, start_ms=start_ms, sensor_noise=False)
    steps: list[float] = []
    cpu: list[float] = []  # thread time: the step's own work, less what the load takes
    t0 = time.perf_counter()
    for _ in range(24 * 60):
        t1, c1 = time.perf_counter(), time.thread_time()
        sim.step(60.0)
        cpu.append(time.thread_time() - c1)
        steps.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    per_min = wall / (24 * 60)
    full = float(np.median(steps))
    print("24-hour campus simulation (1,250 racks, 90,000 GPUs, dt=60 s, Simulator with workload,")
    print(f"weather and sensor frames; load average {os.getloadavg()[0]:.1f}):")
    print(
        f"  wall {wall:.2f} s for 86,400 s simulated = {86_400 / wall:,.0f}x faster than real time"
    )
    print(
        f"  whole Simulator.step incl. frame building, per simulated minute: mean "
        f"{per_min * 1e3:.2f} ms, {_best_median_ms(steps)}; CPU {_best_median_ms(cpu)}"
    )
    phys_best, phys, _ = time_step(1250, 60.0, args.repeat)
    print(
        f"  physics only: {phys * 1e3:.2f} ms per simulated minute (best {phys_best * 1e3:.2f} ms)"
    )
    print(f"  vs ExaDigiT FMU 79.3 s/min: physics {FMU_S_PER_MIN / phys:,.0f}x faster")
    print(
        f"  vs ExaDigiT surrogate 4.1 ms/min (its time / ours, medians): physics "
        f"{SURROGATE_S_PER_MIN / phys:.2f}, whole step {SURROGATE_S_PER_MIN / full:.2f}"
    )
    gpu_s, plant_s, n_gpu, n_plant = time_encode(sim, max(3, args.repeat // 4))
    print("publishable frames of one campus step (twin sim's frames_of, Arrow IPC), best:")
    print(
        f"  {n_gpu} GPU frames {gpu_s * 1e3:.1f} ms; {n_plant} plant frames {plant_s * 1e3:.1f} ms"
    )

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
