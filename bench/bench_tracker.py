"""Time the FacilityTracker of the full campus: feeding a frame, advancing 5 s, expectations.

Prints figures; asserts nothing about speed (measured in bench/, never asserted in tests).
Usage: python bench/bench_tracker.py [--racks N] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from twin.sim import Simulator
from twin.site import load_site, scale_site
from twin.tracker import FacilityTracker

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, min) seconds of ``fn``."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--racks", type=int, default=1250, help="racks (1,250 = the campus)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    base = load_site()
    site = scale_site(base, args.racks, max_racks=max(args.racks, base.info.max_racks))
    frame = Simulator(site, seed=0, start_ms=T0).step(5.0)  # a realistic workload mix
    tr = FacilityTracker(site, start_ms=T0)
    gpus = np.arange(site.n_gpus)
    util, limit = frame.gpu["util_pct"], frame.gpu["power_limit_w"]
    reasons = frame.gpu["clock_event_reasons"]
    plant = frame.thermal | frame.power

    def observe_all() -> None:
        for i, rack in enumerate(site.rack_ids):
            tr.observe_rack_gpus(rack, gpus, util[i], limit[i], clock_event_reasons=reasons[i])
        for unit, points in plant.items():
            tr.observe_points(unit, points)

    t0 = time.perf_counter()
    observe_all()
    tr.advance(frame.ts_ms)
    warm_s = time.perf_counter() - t0
    clock = [frame.ts_ms]

    def advance_5s() -> None:
        clock[0] += 5_000
        tr.advance(clock[0])

    rows = [
        ("observe one frame (all racks + plant units)", timed(observe_all, args.repeat)),
        ("advance by 5 s (one step)", timed(advance_5s, args.repeat)),
        ("expected_points()", timed(tr.expected_points, args.repeat)),
        ("expected_gpu()", timed(tr.expected_gpu, args.repeat)),
        ("kpis() + rack_headroom()", timed(lambda: (tr.kpis(), tr.rack_headroom()), args.repeat)),
        ("snapshot()", timed(tr.snapshot, args.repeat)),
    ]
    n_gpus = site.n_racks * site.n_gpus
    print(f"FacilityTracker, {site.n_racks:,} racks x {site.n_gpus} GPUs = {n_gpus:,} GPUs")
    print(f"first observe + advance (incl. 30 x 60 s warm-up): {warm_s * 1e3:.1f} ms")
    print(f"{'operation':<46} {'median ms':>10} {'min ms':>8}")
    for name, (med, best) in rows:
        print(f"{name:<46} {med * 1e3:>10.2f} {best * 1e3:>8.2f}")


if __name__ == "__main__":
    main()
